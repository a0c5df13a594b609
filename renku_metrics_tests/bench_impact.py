"""How often the release verdict calls a change that did not happen, and how often it sees one that did.

Simulates one metric at Renku's size: about 120 active users a week (Poisson), a
share of about 30% that varies from week to week beyond binomial noise (logit-normal,
sd 0 / 0.15 / 0.3), 4 complete weeks before and after the release week. For each
setting it prints the share of repetitions called ``up`` or ``down`` by the verdict's
model (quasi-binomial GLM, t interval; ``fit_effect``) and, for comparison, by the
pooled Newcombe interval alone, with no change (false alarms) and with planted
changes of +5, +8, +10 and +15 points (power).

    python -m renku_metrics_tests.bench_impact [repetitions, default 2000]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from renku_metrics.core.value.impact import fit_effect, newcombe


def one(rng, active_mean: int, share: float, sd: float, effect: float, weeks: int = 4) -> tuple[bool, bool]:
    n = 2 * weeks
    active = rng.poisson(active_mean, n)
    logit = np.log(share / (1 - share)) + rng.normal(0, sd, n)
    p = 1 / (1 + np.exp(-logit))
    p[weeks:] = np.clip(p[weeks:] + effect / 100, 0, 1)
    users = rng.binomial(active, p)
    after = np.arange(n) >= weeks
    data = pd.DataFrame({"users": users, "base": active, "after": after, "current": True, "term": "lecture"})
    fit = fit_effect(data, "pct")
    model_call = fit is not None and (fit.low > 0 or fit.high < 0)
    low, high = newcombe(users[~after].sum(), active[~after].sum(), users[after].sum(), active[after].sum())
    return model_call, bool(low > 0 or high < 0)


def main(argv: list[str]) -> None:
    reps = int(argv[0]) if argv else 2000
    rng = np.random.default_rng(2026)
    print(f"{reps} repetitions per row; ~120 active users a week, share ~30%, 4 weeks a side\n")
    print("week-to-week sd (logit) | planted change | model calls | pooled Newcombe calls")
    t0 = time.time()
    for sd in (0.0, 0.15, 0.3):
        for effect in (0.0, 5.0, 8.0, 10.0, 15.0):
            calls = np.array([one(rng, 120, 0.30, sd, effect) for _ in range(reps)])
            model, pooled = calls.mean(axis=0)
            print(f"{sd:>23} | {effect:>+11.0f} pt | {model:>11.1%} | {pooled:>21.1%}")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
