"""`make demo`: materialize the last 12 complete ISO weeks and their months.

Runs against the Dagster instance of $DAGSTER_HOME (the Makefile points it at a
local SQLite instance in .dagster_home, so `make dev` shows these runs) and the
storage root $RENKU_METRICS_STORAGE (default ./data), for the deployments of
deployments.yaml. Each deployment's extract is one run covering its days, as a
single-run backfill from the UI would be; the weekly and monthly aggregates run
once per period, as their UI backfills do, so every partition carries its own
numbers. Prints the weekly table at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import warnings

import pandas as pd
from dagster import DagsterInstance

# Dagster's documented run tags for one run over a range of partitions (what the
# UI sets for a single-run backfill); the assets read the range from their context.
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_range_tags(start: str, end: str) -> dict[str, str]:
    """Run tags that make one run cover the partitions ``start``..``end`` (both included)."""
    return {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}


def plan(today: dt.date, weeks: int) -> dict:
    """Day, week and month ranges for the last ``weeks`` complete ISO weeks before ``today``."""
    this_monday = today - dt.timedelta(days=today.weekday())
    first_monday = this_monday - dt.timedelta(weeks=weeks)
    last_monday = this_monday - dt.timedelta(weeks=1)
    first_month = first_monday.replace(day=1)
    last_complete_month = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    return {
        "days": (first_month, today - dt.timedelta(days=1)),
        "weeks": (first_monday, last_monday),
        "months": (first_month, last_complete_month) if first_month <= last_complete_month else None,
    }


def run_range(defs, job_name: str, start: str, end: str, instance: DagsterInstance) -> None:
    job = defs.resolve_job_def(job_name)
    t0 = time.time()
    result = job.execute_in_process(
        instance=instance,
        tags=partition_range_tags(start, end),
        raise_on_error=True,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    print(
        f"  {job_name} {start}..{end}: run {result.run_id[:8]} {'ok' if result.success else 'FAILED'} in {time.time() - t0:.1f}s"
    )


def run_periods(defs, job_name: str, start: dt.date, end: dt.date, instance: DagsterInstance) -> None:
    """One run per period partition from ``start`` to ``end`` (inclusive)."""
    job = defs.resolve_job_def(job_name)
    keys = [k for k in job.partitions_def.get_partition_keys() if start.isoformat() <= k <= end.isoformat()]
    t0 = time.time()
    for key in keys:
        job.execute_in_process(
            instance=instance,
            partition_key=key,
            raise_on_error=True,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
    print(f"  {job_name} {keys[0]}..{keys[-1]}: {len(keys)} runs, one per period, ok in {time.time() - t0:.1f}s")


def die_with_parent() -> None:
    """Linux: end this process (SIGTERM) when its parent dies, e.g. ``make demo``'s make is killed.

    The runs execute in this process (in-process executor), so nothing is left
    writing behind; every object write is atomic, so a kill loses nothing stored.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument("--today", type=dt.date.fromisoformat, default=dt.datetime.now(dt.timezone.utc).date())
    args = parser.parse_args(argv)
    die_with_parent()
    # Dagster flags some parameters as beta and the freshness-check builders as
    # superseded; both work as documented, and the warnings would bury the table.
    import dagster

    for category in (dagster.BetaWarning, dagster.PreviewWarning, dagster.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)

    from renku_metrics.core.catalog import CatalogError
    from renku_metrics.core.errors import ConfigError
    from renku_metrics.core.readers import read_metrics
    from renku_metrics.core.sources.base import SourceError
    from renku_metrics.core.storage import StorageError, open_storage

    try:
        # Building the definitions loads deployments.yaml and the catalog.
        from renku_metrics.defs.build import build_defs

        defs = build_defs()
    except (ConfigError, CatalogError) as exc:  # one clear line, not a traceback
        print(f"renku-metrics: {exc}", file=sys.stderr)
        return 2
    config_names = [k.path[-1] for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == "raw_events"]
    steps = plan(args.today, args.weeks)
    instance = DagsterInstance.get()
    try:
        storage = open_storage()
        storage.check()
    except StorageError as exc:
        print(f"renku-metrics: {exc}", file=sys.stderr)
        return 2
    print(f"Dagster instance: {instance.root_directory}\nStorage: {storage.root}")
    try:
        for name in sorted(config_names):
            job = defs.resolve_job_def(f"{name}_daily_extract")
            keys = job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
            first, last = steps["days"]
            wanted = [k for k in keys if first.isoformat() <= k <= last.isoformat()]
            if wanted:
                run_range(defs, f"{name}_daily_extract", wanted[0], wanted[-1], instance)
        run_periods(defs, "weekly_metrics", *steps["weeks"], instance)
        if steps["months"]:
            run_periods(defs, "monthly_metrics", *steps["months"], instance)
        defs.resolve_job_def("metrics_report_job").execute_in_process(
            instance=instance,
            raise_on_error=True,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        print("  metrics_report: charts in the asset's metadata and under reports/metrics_report/")
    except Exception as exc:
        # A storage or upstream failure inside a run: its one-line message, not Dagster's traceback.
        cause = getattr(exc, "user_exception", None) or exc
        if isinstance(cause, (StorageError, SourceError, ConfigError)):
            print(f"renku-metrics: {cause}", file=sys.stderr)
            return 2
        raise

    weekly = read_metrics("week", storage=storage)
    first_week, last_week = steps["weeks"]
    weekly = weekly[(weekly["period_start"] >= first_week) & (weekly["period_start"] <= last_week)]
    weekly = weekly.assign(
        cell=weekly["users"].astype(str) + " (" + weekly["pct"].map(lambda p: "-" if pd.isna(p) else f"{p:.0f}%") + ")"
    )
    table = weekly.pivot_table(
        index=["period_start", "deployment", "active_users"], columns="metric", values="cell", aggfunc="first"
    )
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.max_columns", 20):
        print("\nWeekly core-action users (share of active users), last complete weeks:\n")
        print(table.reset_index().to_string(index=False))
    print_activation(storage, args.today)
    print(f"\nData under {storage.root}; `make dev` opens the UI with these runs.")
    return 0


def print_activation(storage, today: dt.date) -> None:
    """The latest complete activation cohort; without one, the latest cohort whose 28-day
    windows had ended by ``today`` (all their days extracted), marked provisional with the reason."""
    from renku_metrics.core.readers import read_activation

    frame = read_activation(storage=storage)
    observed = frame[frame["activated_28d"].notna() & (frame["observed_until"] <= today)] if not frame.empty else frame
    if observed.empty:
        print("\nActivation: no cohort week has reached the end of its 28-day windows yet.")
        return
    complete = observed[observed["complete"]]
    start = (complete if not complete.empty else observed)["period_start"].max()
    rows = observed[observed["period_start"] == start]
    state = "complete" if rows["complete"].all() else "PROVISIONAL (not final)"
    print(f"\nActivation of new users, cohort week {start} ({state}): share with a core action within 7 / 28 days")

    def pct(value) -> str:
        return "    -" if pd.isna(value) else f"{value:5.1f}%"

    for r in rows.itertuples():
        note = "" if r.complete else f"  [{r.coverage_note[:100]}]"
        print(
            f"  {r.deployment:<12} {r.cohort_users:>6} new users: {pct(r.activation_7d)} within 7 days, "
            f"{pct(r.activation_28d)} within 28 days{note}"
        )


if __name__ == "__main__":
    sys.exit(main())
