"""Speed figures (not a test): `make benchmark`.

Prints how long it takes to generate and store a year of the demo deployment,
and how long a weekly aggregation takes with 4 weeks of history versus 52 weeks
(the ratio should stay near 1: a week's cost must not grow with history), plus
the naive baseline of loading all history into pandas, measured in the same run.
"""

from __future__ import annotations

import datetime as dt
import resource
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from renku_metrics.core.aggregate import aggregate_period
from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.config import parse_config
from renku_metrics.core.extract import RecentEventIds, build_sources, extract_day
from renku_metrics.core.readers import read_events
from renku_metrics.core.storage import LocalStorage

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def timed(fn, repeat=5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    config = parse_config(
        {"deployments": [{"name": "demo", "start_date": "2025-01-06", "sources": {"demo": {"users": 6000}}}]},
        "benchmark",
        env={},
    )
    deployment = config.deployments[0]
    catalog = load_catalog()
    with tempfile.TemporaryDirectory() as tmp:
        storage = LocalStorage(Path(tmp))
        t0 = time.perf_counter()
        day, events = deployment.start_date, 0
        # As the raw events asset does in a range run: sources and recent ids kept across days.
        sources, recent = build_sources(deployment, {}), RecentEventIds(storage, deployment.name)
        for _ in range(364):
            events += extract_day(
                storage, deployment, day, env={}, now=NOW, sources_by_type=sources, recent_ids=recent
            ).row_count
            day += dt.timedelta(days=1)
        extract_s = time.perf_counter() - t0
        print(f"extract + store 364 days: {extract_s:.2f} s, {events} events, {events / extract_s:,.0f} events/s")
        rss_after_extract = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        early = dt.date(2025, 1, 27)  # 4th week of history
        late = dt.date(2025, 12, 29)  # 52nd week of history
        early_s = timed(lambda: aggregate_period(storage, config.deployments, catalog, "week", early, NOW))
        late_s = timed(lambda: aggregate_period(storage, config.deployments, catalog, "week", late, NOW))
        print(f"weekly aggregation, week 4 of history:  {early_s * 1000:.1f} ms")
        print(
            f"weekly aggregation, week 52 of history: {late_s * 1000:.1f} ms  (ratio {late_s / early_s:.2f}; ~1 = independent of history)"
        )

        def naive():
            frame = read_events("demo", storage=storage)
            week = frame[
                (frame["occurred_at"] >= pd.Timestamp(late, tz="UTC"))
                & (frame["occurred_at"] < pd.Timestamp(late + dt.timedelta(days=7), tz="UTC"))
            ]
            week.groupby("action")["user_id"].nunique()

        rss_after_aggregate = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        naive_s = timed(naive, repeat=3)
        rss_after_naive = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"baseline, load all history into pandas then aggregate week 52: {naive_s * 1000:.1f} ms "
            f"(DuckDB per-period is {naive_s / late_s:.1f}x faster)"
        )
        print(
            f"peak RSS: {rss_after_extract:.0f} MiB after extraction, {rss_after_aggregate:.0f} MiB after the "
            f"DuckDB aggregations, {rss_after_naive:.0f} MiB after the pandas baseline"
        )


if __name__ == "__main__":
    main()
