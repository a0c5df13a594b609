"""`make demo`: materialize the last 12 complete ISO weeks and their months.

Runs against the Dagster instance of $DAGSTER_HOME (the Makefile points it at a
local SQLite instance in .dagster_home, so `make dev` shows these runs) and the
storage root $RENKU_METRICS_STORAGE (default ./data), for the deployments of
deployments.yaml. Each deployment's extract is one run covering its days, as a
single-run backfill from the UI would be; the weekly and monthly aggregates run
once per period, as their UI backfills do, so every partition carries its own
numbers. Then the group metrics of those periods, target_status evaluates every target
as of the last complete week, and the digest of the last complete week is written (sent
only to channels the digest configuration names). Prints the weekly table, the group
metrics, the targets with their status and where the digest is at the end.
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


def digest_summary(storage, week: dt.date, success: bool) -> str:
    """Where the week's digest is, and what its delivery records say (no channel: nothing sent)."""
    from renku_metrics.core.layout import DIGEST_REPORT, delivery_record_key, digest_key

    lines = [f"  weekly_digest {week}: {storage.uri(digest_key(week, 'digest.md'))} (also .html, .png)"]
    prefix = delivery_record_key(week, "x").rsplit("/", 1)[0] + "/"
    records = [storage.read_json(k) for k in storage.list_keys(prefix) if k.endswith(".json")]
    if records:
        lines += [f"    delivery to {r['channel']} ({r['type']}): {r['status']}" for r in records]
    else:
        lines.append(f"    sent nowhere (no channel configured for the {DIGEST_REPORT}; see docs/digest.md)")
    if not success:
        lines.append("    the digest run FAILED (a channel refused it, or see the run of weekly_digest_job in the UI)")
    return "\n".join(lines)


def print_targets(storage) -> None:
    """The targets with their latest status, as stored by target_status."""
    from renku_metrics.core.readers import read_target_status
    from renku_metrics.core.value.targets import latest_status

    latest = latest_status(read_target_status(storage=storage))
    if latest.empty:
        print("\nNo targets evaluated.")
        return
    rows = []
    for r in latest.to_dict("records"):
        number = lambda v: "-" if pd.isna(v) else f"{v:.4g}"  # noqa: E731
        scope = f"{r['group']} ({r['deployment']})" if isinstance(r["group"], str) else r["deployment"]
        rows.append(
            {
                "target": r["target"],
                "scope": scope,
                "period": f"{r['period']} {r['period_start']}",
                "status": r["status"],
                "value": number(r["value"]),
                "expected": number(r["expected"]),
                "goal": f"{r['comparison']} {r['goal']:g}",
                "by": str(r["by"]),
                "why this status": r["reason"],
            }
        )
    with pd.option_context("display.width", 250, "display.max_colwidth", 90):
        print("\nTargets (latest complete period; rules in docs/targets.md):\n")
        print(pd.DataFrame(rows).to_string(index=False))


def run_releases(defs, instance: DagsterInstance) -> None:
    """Materialize releases and release_impact (before the report, whose charts mark releases)."""
    if "releases_daily" not in {job.name for job in defs.resolve_all_job_defs()}:
        return
    t0 = time.time()
    defs.resolve_job_def("releases_daily").execute_in_process(
        instance=instance,
        raise_on_error=True,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    print(f"  releases_daily: releases and release_impact ok in {time.time() - t0:.1f}s")


def print_verdicts(storage) -> None:
    """The release verdicts of the core actions' shares and of active users, one line each."""
    from renku_metrics.core.readers import read_release_impact

    impact = read_release_impact(storage=storage)
    if impact.empty:
        return
    shown = impact[impact["group"].isna() & ((impact["measure"] == "pct") | (impact["metric"] == "active_users"))]
    print("\nRelease verdicts (share of active users in points, active users a week; docs/releases.md):\n")
    for r in shown.sort_values(["release_date", "deployment", "metric"]).itertuples():
        expected = "" if pd.isna(r.as_expected) else (" as expected" if r.as_expected else " NOT as expected")
        print(f"  {r.release:<12} {r.deployment:<11} {r.metric:<15} {r.verdict:<16}{expected}  {r.explanation}")


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
        last_week = steps["weeks"][1].isoformat()
        defs.resolve_job_def("target_status_job").execute_in_process(
            instance=instance,
            partition_key=last_week,
            raise_on_error=True,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        print(f"  target_status {last_week}: every target evaluated as of that week")
        run_releases(defs, instance)
        defs.resolve_job_def("metrics_report_job").execute_in_process(
            instance=instance,
            raise_on_error=True,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        print("  metrics_report: charts in the asset's metadata and under reports/metrics_report/")
        digest_week = steps["weeks"][1]
        digest_run = defs.resolve_job_def("weekly_digest_job").execute_in_process(
            instance=instance,
            partition_key=digest_week.isoformat(),
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        print(digest_summary(storage, digest_week, digest_run.success))
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
    from renku_metrics.core.readers import read_group_metrics
    from renku_metrics.core.value.groups import summary

    for period, last in (("week", last_week), ("month", steps["months"][1] if steps["months"] else None)):
        frame = read_group_metrics(period, storage=storage)
        if last is not None and not frame.empty:
            print(f"\nGroup metrics, {period} of {last} (users as a share of members):\n")
            print(summary(frame[frame["period_start"] == last]))

    print_targets(storage)
    print_verdicts(storage)
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
