"""Speed and memory of the raw events asset (not a test): `make benchmark-extract BENCH_DATA=<dir>`.

Reads a synthetic history in the stored layout (``bench_data.generate``: 5
deployments x 1,092 days, e.g. the one ``make benchmark`` keeps under
BENCH_DATA) and never writes under it: each figure runs on a scratch copy made of
hard links beside it (every storage write is a new file renamed into place, so
it replaces a link and never writes through it), removed afterwards. Each figure
is measured in a fresh child process, with its own CPU time and peak RSS; the
work is what the asset does for a run, ``extract_day`` over the run's days with
one ``RecentEventIds``, for deployment bench0:

* one day's extraction, the day after the end of 3 years of stored history (what
  the daily schedule runs);
* the same with 1 year of history (a copy holding only the first 364 days,
  extracting day 365); the ratio 3 years / 1 year shows whether a daily run
  grows with history (~1 = flat);
* a range run re-extracting the last 30 days of the 3 years (a backfill).

The upstream is a bench source with the history's shape: ``--events-per-day``
events a day (default 18,315, the 100-million-event history's figure; the demo
source makes about 100 to 3,000 and more as its population grows, so its days
are not comparable over time), ids as the history stores them (so a re-extracted
day holds the same records) and ``REPEATED_PER_DAY`` records that an earlier
stored day already holds (commits fast-forwarded later), which dedup drops.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAYS = 1092
YEAR = 364
RANGE_DAYS = 30
DEPLOYMENT = "bench0"
EVENTS_PER_DAY = 18_315  # 100,000,000 events / (5 deployments x 1,092 days)
USERS = 20_000  # per deployment, as in the 100-million-event history
REPEATED_PER_DAY = 20
REPEAT_FROM = 300  # repeated records are among the first ids of a day: stored at any scale


class BenchSource:
    """A source of ``events_per_day`` valid events a day, shaped like the stored history."""

    name = "demo"

    def __init__(self, deployment: str, start: dt.date, events_per_day: int, users: int = USERS) -> None:
        self.deployment = deployment
        self.start = start
        self.events_per_day = events_per_day
        self.users = users

    def extract(self, window):
        import pandas as pd

        from renku_metrics.core.events import SourceResult

        frame = pd.concat([self.generate_day(day) for day in window.days()], ignore_index=True)
        return SourceResult(source=self.name, frame=frame, stats={"generated_days": len(window.days())})

    def generate_day(self, day: dt.date):
        import numpy as np
        import pandas as pd

        from renku_metrics.core.events import ACTIONS, EVENT_COLUMNS
        from renku_metrics_tests.bench_data import ACTION_WEIGHTS

        k = (day - self.start).days
        n = self.events_per_day
        rng = np.random.default_rng([7, k])
        md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
        # The history's own ids (bench_data: md5 of "<deployment>/<day index>/<row>").
        ids = [md5(f"{self.deployment}/{k}/{i}") for i in range(n)]
        back = rng.integers(1, 60, REPEATED_PER_DAY)
        rows = rng.integers(0, min(REPEAT_FROM, n), REPEATED_PER_DAY)
        ids += [md5(f"{self.deployment}/{k - b}/{i}") for b, i in zip(back.tolist(), rows.tolist(), strict=True)]
        total = len(ids)
        users = np.floor(rng.random(total) ** 1.6 * self.users).astype(np.int64)
        user_ids = [f"gitlab:{g}" if g % 50 == 0 else md5(f"bench-user-{g}") for g in users.tolist()]
        actions = np.array(ACTIONS, dtype=object)[
            np.searchsorted(np.cumsum(ACTION_WEIGHTS), rng.random(total) * sum(ACTION_WEIGHTS))
        ]
        midnight = pd.Timestamp(day.isoformat(), tz="UTC")
        frame = pd.DataFrame(
            {
                "event_id": ids,
                "deployment": self.deployment,
                "occurred_at": midnight + pd.to_timedelta(rng.integers(0, 86_400_000_000, total), unit="us"),
                "user_id": user_ids,
                "action": actions,
                "project_id": (np.arange(total) % 997).astype(str),
                "project_visibility": np.array(["public", "private", "internal"], dtype=object)[np.arange(total) % 3],
                "source": self.name,
            }
        )
        return frame.loc[:, list(EVENT_COLUMNS)]


def _dates(days: int) -> dict:
    from renku_metrics_tests.bench_data import START

    end = START + dt.timedelta(days=days)  # the first day after the history
    return {"start": START, "end": end, "year1": START + dt.timedelta(days=YEAR)}


# --------------------------------------------------------------------------- one figure, in a child process


def _figure(name: str, root: str, days: int, events_per_day: int) -> dict:
    """Run one measured run of the raw events asset in this (fresh) process."""
    from renku_metrics.core.extract import RecentEventIds, extract_day
    from renku_metrics.core.storage import LocalStorage
    from renku_metrics_tests.bench_data import bench_deployments

    d = _dates(days)
    (deployment,) = (dep for dep in bench_deployments(5) if dep.name == DEPLOYMENT)
    if name == "day_3y":
        run_days = [d["end"]]
    elif name == "day_1y":
        run_days = [d["year1"]]
    elif name == "range_30":
        run_days = [d["end"] - dt.timedelta(days=RANGE_DAYS - i) for i in range(RANGE_DAYS)]
    else:
        raise ValueError(f"unknown figure {name!r}")
    storage = LocalStorage(root)
    sources = {"demo": BenchSource(DEPLOYMENT, d["start"], events_per_day)}
    now = dt.datetime.combine(run_days[-1] + dt.timedelta(days=1), dt.time(1), dt.timezone.utc)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_before = usage.ru_maxrss / 1024
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    # What the asset runs (defs/raw_events/assets.py), without Dagster: one RecentEventIds per run.
    recent_ids = RecentEventIds(storage, deployment.name)
    extracts = [
        extract_day(storage, deployment, day, env={}, now=now, sources_by_type=sources, recent_ids=recent_ids)
        for day in run_days
    ]
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    assert all(e.complete and not e.rejected_count for e in extracts), [e.incomplete for e in extracts]
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu0,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "rss_before_mib": rss_before,
        "info": (
            f"{len(extracts)} day(s), {sum(e.row_count for e in extracts):,} events stored, "
            f"{sum(e.repeated_from_earlier_days for e in extracts)} repeated from earlier days dropped"
        ),
    }


def _code_location_rss() -> float:
    """Peak RSS of a process that has only loaded the code location (what a run process pays first)."""
    out = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            "import resource; from renku_metrics.definitions import defs; defs.get_repository_def(); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(name: str, root: Path, days: int, events_per_day: int) -> dict:
    """One figure in a child process: its time and the child's own peak RSS."""
    out = subprocess.run(
        [sys.executable, "-m", "renku_metrics_tests.bench_extract", "--figure", name, "--root", str(root)]
        + ["--days", str(days), "--events-per-day", str(events_per_day)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line(label: str, fig: dict) -> str:
    extra = f"  ({fig['info']})" if fig.get("info") else ""
    return (
        f"{label:<52} {fig['seconds']:7.2f} s (CPU {fig['cpu_seconds']:6.2f} s)  "
        f"peak RSS {fig['peak_rss_mib']:5.0f} MiB (before the run {fig['rss_before_mib']:4.0f}){extra}"
    )


# --------------------------------------------------------------------------- scratch copies of the history


def link_copy(root: Path, target: Path, before: dt.date | None = None) -> None:
    """Hard-link the stored days of ``root`` (raw events and rejected records) into ``target``;
    with ``before``, only the days before it."""
    from renku_metrics.core.layout import day_of_key

    for top in ("raw_events", "rejected"):
        if not (root / top).is_dir():
            continue
        for directory, _, files in os.walk(root / top):
            relative = Path(directory).relative_to(root)
            if before is not None and "/date=" in f"/{relative.as_posix()}/":
                if day_of_key(f"/{relative.as_posix()}/") >= before:
                    continue
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                (target / relative).mkdir(parents=True, exist_ok=True)
                os.link(Path(directory) / name, target / relative / name)


def extract_figures(root: Path, days: int, events_per_day: int, repeat: int, scratch_parent: Path) -> None:
    figs: dict[str, list[dict]] = {"day_1y": [], "day_3y": [], "range_30": []}
    d = _dates(days)
    plan = [("day_1y", d["year1"]), ("day_3y", None)] * repeat + [("range_30", None)]
    for name, before in plan:
        with tempfile.TemporaryDirectory(prefix="renku-metrics-extract-bench-", dir=scratch_parent) as tmp:
            copy = Path(tmp) / "data"
            link_copy(root, copy, before)
            figs[name].append(measure(name, copy, days, events_per_day))
    best = {name: min(runs, key=lambda f: f["cpu_seconds"]) for name, runs in figs.items()}
    for name, label in (
        ("day_3y", f"one day, 3 years of history ({d['end']})"),
        ("day_1y", f"one day, 1 year of history ({d['year1']})"),
        ("range_30", f"range run of the last {RANGE_DAYS} days, 3 years"),
    ):
        print(_line(label, best[name]), flush=True)
    ratio = {key: best["day_3y"][key] / best["day_1y"][key] for key in ("seconds", "cpu_seconds", "peak_rss_mib")}
    print(
        f"one day, 3 years / 1 year of history: time {ratio['seconds']:.2f}, CPU {ratio['cpu_seconds']:.2f}, "
        f"peak RSS {ratio['peak_rss_mib']:.2f} (~1 = flat; best of {repeat} runs each)"
    )
    print(f"{'a process that has only loaded the code location':<52} peak RSS {_code_location_rss():5.0f} MiB")
    print("(wall times depend on what else the machine runs; CPU times less so)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="the stored history (a local storage root), only read")
    parser.add_argument("--days", type=int, default=DAYS, help="days of stored history")
    parser.add_argument("--events-per-day", type=int, default=EVENTS_PER_DAY, help="events of an extracted day")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each one-day figure (the best is shown)")
    parser.add_argument("--scratch", help="where the scratch copies go (same file system; default beside --root)")
    parser.add_argument("--figure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.root:
        parser.error("--root is required")
    if args.figure:
        print(json.dumps(_figure(args.figure, args.root, args.days, args.events_per_day)))
        return
    root = Path(args.root).resolve()
    if not (root / "raw_events" / f"deployment={DEPLOYMENT}").is_dir():
        parser.error(f"{root} holds no history of deployment {DEPLOYMENT} (see renku_metrics_tests/bench_data.py)")
    from renku_metrics.core.layout import raw_events_key

    end = _dates(args.days)["end"]
    if (
        not (root / raw_events_key(DEPLOYMENT, end - dt.timedelta(days=1))).exists()
        or (root / raw_events_key(DEPLOYMENT, end)).exists()
    ):
        parser.error(f"{root} does not hold {args.days} days of history (see --days)")
    scratch = Path(args.scratch).resolve() if args.scratch else root.parent
    extract_figures(root, args.days, args.events_per_day, args.repeat, scratch)


if __name__ == "__main__":
    main()
