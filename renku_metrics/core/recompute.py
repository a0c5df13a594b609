"""Full-history recompute of the weekly and monthly aggregates in one scan per period kind.

What to run after changing a deployment's ``excluded_users`` or adding a metric
to the catalog, when every period of history must be recomputed::

    python -m renku_metrics.core.recompute                      # every week and month of history
    python -m renku_metrics.core.recompute --period week --from 2025-01-06 --to 2025-12-29
    python -m renku_metrics.core.recompute --memory-limit 1GB --temp-directory /scratch

It writes exactly the objects the ``active_users_*`` and ``core_actions_*`` assets
write (``metrics/<table>/period=YYYY-MM-DD/<table>.parquet``), computed by
``aggregate_periods``: all the periods' daily files are read once, the
denominator once per period. DuckDB stays within ``--memory-limit`` (default
$RENKU_METRICS_DUCKDB_MEMORY_LIMIT, else 1.2GB) and spills to ``--temp-directory``.
Dagster's materialization history is not written: the asset pages keep showing
the earlier runs' metadata until the next scheduled run. Deployments come from
$RENKU_METRICS_DEPLOYMENTS (or ./deployments.yaml), storage from
$RENKU_METRICS_STORAGE (or ./data). Plain Python, no Dagster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from renku_metrics.core.aggregate import aggregate_periods
from renku_metrics.core.catalog import Catalog, load_catalog
from renku_metrics.core.config import MetricsConfig, load_config
from renku_metrics.core.periods import PERIODS, Period, period_start_of, period_starts_between
from renku_metrics.core.publication import publish_period
from renku_metrics.core.storage import Storage, open_storage


def recompute(
    storage: Storage,
    config: MetricsConfig,
    catalog: Catalog,
    period: Period,
    first: dt.date | None = None,
    last: dt.date | None = None,
    now: dt.datetime | None = None,
    memory_limit: str | None = None,
    temp_directory: str | None = None,
) -> list[dt.date]:
    """Recompute and store the periods starting in [first, last] (default: all of history up to now)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    today = now.astimezone(dt.timezone.utc).date()
    first = period_start_of(period, first or config.earliest_start)
    last = last or today
    starts = period_starts_between(period, first, last + dt.timedelta(days=1))
    results = aggregate_periods(
        storage,
        config.deployments,
        catalog,
        period,
        starts,
        now,
        memory_limit=memory_limit,
        temp_directory=temp_directory,
    )
    for start, result in results.items():
        # Both tables as one pair, as the assets publish them (core.publication).
        publish_period(storage, period, start, result.active_users, result.core_actions)
    return starts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m renku_metrics.core.recompute", description=__doc__.split("\n")[0])
    parser.add_argument("--period", choices=[*PERIODS, "both"], default="both")
    parser.add_argument("--from", dest="first", type=dt.date.fromisoformat, help="first day (default: earliest start)")
    parser.add_argument("--to", dest="last", type=dt.date.fromisoformat, help="last day (default: today)")
    parser.add_argument("--deployments", help="deployments file (default: $RENKU_METRICS_DEPLOYMENTS)")
    parser.add_argument("--storage", help="storage root (default: $RENKU_METRICS_STORAGE or ./data)")
    parser.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 1.5GB")
    parser.add_argument("--temp-directory", help="where DuckDB spills beyond the memory limit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.deployments)
        storage = open_storage(args.storage)
        catalog = load_catalog()
        for period in PERIODS if args.period == "both" else (args.period,):
            t0 = time.perf_counter()
            starts = recompute(
                storage,
                config,
                catalog,
                period,
                args.first,
                args.last,
                memory_limit=args.memory_limit,
                temp_directory=args.temp_directory,
            )
            print(
                f"{period}: {len(starts)} period(s) {starts[0] if starts else '-'}..{starts[-1] if starts else '-'} "
                f"recomputed in {time.perf_counter() - t0:.1f} s under {storage.root}"
            )
    except Exception as exc:  # one clear line, no traceback, for an operator's command
        print(f"recompute failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
