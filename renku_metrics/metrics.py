"""Weekly and monthly aggregates: the active-users denominator and the core actions.

Assets (each partitioned by period, every deployment in one partition, plus the
``all`` rollup):

* ``active_users_weekly`` / ``active_users_monthly``: distinct active users.
* ``core_actions_weekly`` / ``core_actions_monthly``: per deployment and
  catalog metric, distinct users, the period's active users (read from the
  denominator asset of the same period) and ``pct``.

Each period is one Parquet object under ``metrics/<asset>/period=YYYY-MM-DD/``,
replaced whole on a rerun.
"""


import datetime as dt

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetsDefinition,
    BackfillPolicy,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    ScheduleEvaluationContext,
    asset,
    build_time_partition_freshness_checks,
    define_asset_job,
    schedule,
)

from renku_metrics.aggregate import ALL_DEPLOYMENTS, PeriodAggregate, aggregate_period, coverage_for, period_bounds, week_start
from renku_metrics.catalog import Catalog, Metric, Target, metric_description
from renku_metrics.config import MetricsConfig
from renku_metrics.partitions import period_partitions, period_starts
from renku_metrics.raw_events import OWNERS, raw_events_deps
from renku_metrics.resources import MetricsStorageResource
from renku_metrics.run_metadata import partition_metadata
from renku_metrics.storage import Storage, metrics_key

GROUP = "metrics"
PERIODS = {"week": "weekly", "month": "monthly"}

AGGREGATE_CHECKS = {
    "users_within_active_users": ("Every metric's users are at most the period's active users.", True),
    "pct_within_0_100": ("pct lies within 0..100, and is null only when nobody was active.", True),
    "one_row_per_key": ("Exactly one row per deployment, period and metric.", True),
    "deployments_present": (
        "Every configured deployment measured in the period has a row; deployments with missing "
        "days are explicitly marked incomplete.",
        True,
    ),
}


def active_users_name(period: str) -> str:
    return f"active_users_{PERIODS[period]}"


def core_actions_name(period: str) -> str:
    return f"core_actions_{PERIODS[period]}"


def check_aggregate(frame: pd.DataFrame, config: MetricsConfig, key_columns: list[str]) -> dict[str, tuple[bool, dict]]:
    """Evaluate the blocking aggregate checks on one or more periods' rows (plain pandas)."""
    out: dict[str, tuple[bool, dict]] = {}
    if "users" in frame:
        over = frame[frame["users"] > frame["active_users"]]
        out["users_within_active_users"] = (over.empty, {"violating_rows": len(over)})
        bad_pct = frame[
            (frame["pct"].notna() & ((frame["pct"] < 0) | (frame["pct"] > 100)))
            | (frame["pct"].isna() & (frame["active_users"] > 0))
            | (frame["pct"].notna() & (frame["active_users"] == 0))
        ]
        out["pct_within_0_100"] = (bad_pct.empty, {"violating_rows": len(bad_pct)})
    else:
        negative = frame[frame["active_users"] < 0]
        out["users_within_active_users"] = (negative.empty, {"violating_rows": len(negative)})
        out["pct_within_0_100"] = (True, {"violating_rows": 0, "note": "denominator table has no pct"})
    dupes = frame[frame.duplicated(subset=key_columns, keep=False)]
    out["one_row_per_key"] = (dupes.empty, {"duplicate_rows": len(dupes)})
    missing = []
    for period_start, rows in frame.groupby("period_start"):
        present = set(rows["deployment"])
        period_end = rows["period_end"].iloc[0]
        expected = {d.name for d in config.deployments if d.start_date < period_end} | {ALL_DEPLOYMENTS}
        missing += [f"{period_start}: {name}" for name in sorted(expected - present)]
    incomplete = frame.loc[~frame["complete"], ["period_start", "deployment", "coverage_note"]].drop_duplicates()
    out["deployments_present"] = (
        not missing,
        {
            "missing": MetadataValue.md("\n".join(f"- {m}" for m in missing) or "none"),
            "incomplete_rows": MetadataValue.md(
                "\n".join(f"- {r.period_start} {r.deployment}: {r.coverage_note}" for r in incomplete.itertuples())
                or "none"
            ),
        },
    )
    return out


def target_checks(catalog: Catalog, period: str) -> list[tuple[str, Metric, Target]]:
    """(check name, metric, target) of every catalog target on this period."""
    out = []
    for metric in catalog.computed():
        for target in metric.targets:
            if target.period == period:
                out.append((f"target_{metric.id}_{target.deployment}_{target.check_name[len('target_'):]}", metric, target))
    return out


def evaluate_target(
    check_name: str, frame: pd.DataFrame, metric: Metric, target: Target, today: dt.date
) -> AssetCheckResult:
    """Warning check: is the target met in the latest period of ``frame``?"""
    rows = frame[(frame["metric"] == metric.id) & (frame["deployment"] == target.deployment)]
    meta = {"target": target.describe(), "deadline": target.by.isoformat()}
    if rows.empty:
        return AssetCheckResult(
            check_name=check_name, passed=False, severity=AssetCheckSeverity.WARN,
            metadata={**meta, "status": f"no row for deployment {target.deployment!r}"},
        )
    row = rows.sort_values("period_start").iloc[-1]
    value = None if pd.isna(row[target.measure]) else float(row[target.measure])
    met = target.met_by(value)
    status = "met" if met else "not met"
    if not row["complete"]:
        status += " (period incomplete: provisional)"
    if not met and today > target.by:
        status += "; deadline passed"
    meta.update(
        {
            "value": value if value is not None else MetadataValue.null(),
            "threshold": target.value,
            "period_start": str(row["period_start"]),
            "status": status,
        }
    )
    return AssetCheckResult(check_name=check_name, passed=bool(met), severity=AssetCheckSeverity.WARN, metadata=meta)


def _fmt_pct(value) -> str:
    return "-" if pd.isna(value) else f"{value:.1f}%"


def _markdown_core(frame: pd.DataFrame) -> str:
    metrics = list(dict.fromkeys(frame["metric"]))
    lines = ["| deployment | active | " + " | ".join(metrics) + " | complete |", "|" + " --- |" * (len(metrics) + 3)]
    for deployment, rows in frame.groupby("deployment", sort=False):
        by_metric = rows.set_index("metric")
        cells = " | ".join(f"{int(by_metric.loc[m, 'users'])} ({_fmt_pct(by_metric.loc[m, 'pct'])})" for m in metrics)
        complete = "yes" if rows["complete"].all() else "no: " + rows["coverage_note"].iloc[0]
        lines.append(f"| {deployment} | {int(rows['active_users'].iloc[0])} | {cells} | {complete} |")
    return "\n".join(lines)


def _markdown_active(frame: pd.DataFrame) -> str:
    lines = ["| deployment | active users | excluded users | days extracted | complete |", "| --- | --- | --- | --- | --- |"]
    for r in frame.itertuples():
        complete = "yes" if r.complete else f"no: {r.coverage_note}"
        lines.append(f"| {r.deployment} | {r.active_users} | {r.excluded_users} | {r.days_extracted}/{r.days_expected} | {complete} |")
    return "\n".join(lines)


def _active_metadata(storage: Storage, table: str, frame: pd.DataFrame) -> dict:
    """Exact figures of one period (one partition) of the denominator."""
    meta = {
        "dagster/row_count": len(frame),
        "dagster/uri": MetadataValue.path(storage.uri(metrics_key(table, frame["period_start"].iloc[0]))),
        "table": MetadataValue.md(_markdown_active(frame)),
        "complete": bool(frame["complete"].all()),
    }
    for r in frame.itertuples():
        meta[f"{r.deployment}/active_users"] = int(r.active_users)
    return meta


def _core_metadata(storage: Storage, table: str, frame: pd.DataFrame) -> dict:
    """Exact figures of one period (one partition) of the core actions: the numbers the UI plots."""
    meta = {
        "dagster/row_count": len(frame),
        "dagster/uri": MetadataValue.path(storage.uri(metrics_key(table, frame["period_start"].iloc[0]))),
        "table": MetadataValue.md(_markdown_core(frame)),
        "complete": bool(frame["complete"].all()),
    }
    for r in frame.itertuples():
        meta[f"{r.deployment}/{r.metric}/users"] = int(r.users)
        if not pd.isna(r.pct):
            meta[f"{r.deployment}/{r.metric}/pct"] = float(r.pct)
    return meta


def _run_summary(frames: list[pd.DataFrame], markdown) -> dict:
    """What is true of a whole range run: periods covered and the latest period's table."""
    last = frames[-1]
    return {
        "run_periods": len(frames),
        "run_first_period": str(frames[0]["period_start"].iloc[0]),
        "run_last_period": str(last["period_start"].iloc[0]),
        "run_rows": sum(len(f) for f in frames),
        "run_latest_table": MetadataValue.md(markdown(last)),
    }


def _check_results(frame: pd.DataFrame, config: MetricsConfig, keys: list[str]) -> list[AssetCheckResult]:
    return [
        AssetCheckResult(check_name=name, passed=bool(passed), metadata=meta)
        for name, (passed, meta) in check_aggregate(frame, config, keys).items()
    ]


def build_metric_assets(config: MetricsConfig, catalog: Catalog, period: str) -> list[AssetsDefinition]:
    partitions = period_partitions(period, config.earliest_start)
    raw_deps = raw_events_deps(config.deployments)
    unit = "ISO week (Monday 00:00 UTC to Monday 00:00 UTC, key = the Monday)" if period == "week" else "calendar month in UTC (key = the 1st)"
    active_key = AssetKey(active_users_name(period))
    core_key = AssetKey(core_actions_name(period))
    gaps = "\n".join(metric_description(m) for m in catalog.computed())
    targets = target_checks(catalog, period)

    @asset(
        key=active_key,
        partitions_def=partitions,
        deps=raw_deps,
        backfill_policy=BackfillPolicy.single_run(),
        group_name=GROUP,
        owners=OWNERS,
        kinds={"duckdb", "parquet"},
        description=(
            f"The denominator: distinct active users per deployment and {unit}, plus the `all` rollup. "
            "Active = at least one event of any kind (login, commit, dataset creation, workflow run, session start), "
            "after each deployment's excluded_users. Columns: deployment, period, period_start, period_end, "
            "active_users, excluded_users, days_expected, days_extracted, complete, coverage_note, computed_at. "
            "Cannot see: users whose only activity is invisible to every source (local CLI work never pushed, "
            "local sessions); logins lost to Keycloak's event expiration (marked incomplete)."
        ),
        check_specs=[AssetCheckSpec(n, asset=active_key, description=t, blocking=b) for n, (t, b) in AGGREGATE_CHECKS.items()],
    )
    def active_users(context: AssetExecutionContext, metrics_storage: MetricsStorageResource) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        frames = []
        for start in period_starts(context, period):
            result = aggregate_period(storage, config.deployments, catalog, period, start, dt.datetime.now(dt.timezone.utc))
            storage.write_frame(metrics_key(active_key.path[-1], start), result.active_users)
            frames.append(result.active_users)
        frame = pd.concat(frames, ignore_index=True)
        meta = partition_metadata(
            context,
            active_key,
            {str(f["period_start"].iloc[0]): _active_metadata(storage, active_key.path[-1], f) for f in frames},
            _run_summary(frames, _markdown_active),
        )
        return MaterializeResult(metadata=meta, check_results=_check_results(frame, config, ["deployment", "period_start"]))

    @asset(
        key=core_key,
        partitions_def=partitions,
        deps=[*raw_deps, AssetDep(active_key)],
        backfill_policy=BackfillPolicy.single_run(),
        group_name=GROUP,
        owners=OWNERS,
        kinds={"duckdb", "parquet"},
        description=(
            f"Core-action metrics per deployment, catalog metric and {unit}, plus the `all` rollup: distinct users "
            "who did the action at least once (`users`), the period's active users (from "
            f"`{active_key.path[-1]}`) and `pct` = 100 * users / active users (null when nobody was active). "
            "`complete` is false until the period has ended and all its days were extracted in full; never "
            "present incomplete rows as final.\n\nMetrics and what they cannot see:\n" + gaps
        ),
        check_specs=[AssetCheckSpec(n, asset=core_key, description=t, blocking=b) for n, (t, b) in AGGREGATE_CHECKS.items()]
        + [
            AssetCheckSpec(name, asset=core_key, description=f"Target of {metric.id}: {target.describe()} (warning only).")
            for name, metric, target in targets
        ],
    )
    def core_actions(context: AssetExecutionContext, metrics_storage: MetricsStorageResource) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        frames = []
        for start in period_starts(context, period):
            result = aggregate_period(storage, config.deployments, catalog, period, start, dt.datetime.now(dt.timezone.utc))
            frame = join_denominator(storage, result, active_key.path[-1], start)
            storage.write_frame(metrics_key(core_key.path[-1], start), frame)
            frames.append(frame)
        frame = pd.concat(frames, ignore_index=True)
        meta = partition_metadata(
            context,
            core_key,
            {str(f["period_start"].iloc[0]): _core_metadata(storage, core_key.path[-1], f) for f in frames},
            _run_summary(frames, _markdown_core),
        )
        checks = _check_results(frame, config, ["deployment", "period_start", "metric"])
        today = dt.datetime.now(dt.timezone.utc).date()
        for name, metric, target in targets:
            checks.append(evaluate_target(name, frame, metric, target, today))
        return MaterializeResult(metadata=meta, check_results=checks)

    return [active_users, core_actions]


def join_denominator(storage: Storage, result: PeriodAggregate, active_table: str, start: dt.date) -> pd.DataFrame:
    """Core-action rows with active users and pct taken from the stored denominator of the period."""
    key = metrics_key(active_table, start)
    if not storage.exists(key):
        raise RuntimeError(f"{storage.uri(key)} is missing: materialize {active_table} for {start} first")
    denominator = storage.read_parquet(key).to_pandas()[["deployment", "active_users", "complete", "coverage_note"]]
    core = result.core_actions.drop(columns=["active_users", "complete", "coverage_note"]).merge(
        denominator, on="deployment", how="left", validate="many_to_one"
    )
    if core["active_users"].isna().any():
        missing = sorted(core.loc[core["active_users"].isna(), "deployment"].unique())
        raise RuntimeError(f"{storage.uri(key)} has no row for deployment(s) {missing}: rematerialize {active_table}")
    core["active_users"] = core["active_users"].astype("int64")
    core["pct"] = (100.0 * core["users"] / core["active_users"]).where(core["active_users"] > 0).round(2)
    columns = ["deployment", "period", "period_start", "period_end", "metric", "title", "status", "users",
               "active_users", "pct", "complete", "coverage_note", "computed_at"]
    return core[columns]


RECHECK_PERIODS = {"week": 4, "month": 2}


def periods_to_aggregate(
    storage: Storage, config: MetricsConfig, period: str, today: dt.date, recheck: int | None = None
) -> list[dt.date]:
    """The period that just ended, plus earlier ones (up to ``recheck``) whose stored
    denominator is missing or incomplete although all their days are now extracted in
    full (e.g. a day re-extracted by the daily schedule after an upstream caught up)."""
    recheck = RECHECK_PERIODS[period] if recheck is None else recheck
    current = week_start(today) if period == "week" else today.replace(day=1)
    first = week_start(config.earliest_start) if period == "week" else config.earliest_start.replace(day=1)
    starts = []
    start = current
    for _ in range(recheck + 1):
        start = start - dt.timedelta(weeks=1) if period == "week" else (start - dt.timedelta(days=1)).replace(day=1)
        if start < first:
            break
        starts.append(start)
    wanted = starts[:1]
    for start in starts[1:]:
        key = metrics_key(active_users_name(period), start)
        stored_complete = storage.exists(key) and bool(storage.read_parquet(key).to_pandas()["complete"].all())
        if stored_complete:
            continue
        end = period_bounds(period, start)[1]
        now_complete = all(
            coverage_for(storage, d, start, end, today).is_complete(True)
            for d in config.deployments
            if d.start_date < end
        )
        if now_complete:
            wanted.append(start)
    return sorted(wanted)


def build_period_job_and_schedule(config: MetricsConfig, period: str, assets: list[AssetsDefinition]):
    """Weekly: Mondays 04:00 UTC for the week just ended. Monthly: the 1st, 05:00 UTC.

    Each tick also reruns earlier periods (4 weeks, 2 months) that were aggregated
    while some of their days were incomplete and have since been completed.
    """
    partitions = period_partitions(period, config.earliest_start)
    name = f"{PERIODS[period]}_metrics"
    job = define_asset_job(
        name=name,
        # The assets with their own checks; freshness checks are left to their sensor.
        selection=AssetSelection.assets(*assets).without_checks() | AssetSelection.checks(*assets),
        partitions_def=partitions,
        description=f"Aggregate the {PERIODS[period]} metrics of a period.",
    )

    @schedule(
        name=f"{name}_schedule",
        job=job,
        cron_schedule="0 4 * * 1" if period == "week" else "0 5 1 * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            f"Aggregates the {period} just ended, and reruns earlier {period}s that were aggregated "
            "incomplete but whose days have all been extracted in full since."
        ),
    )
    def period_schedule(context: ScheduleEvaluationContext, metrics_storage: MetricsStorageResource):
        when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        today = when.astimezone(dt.timezone.utc).date()
        storage = metrics_storage.get_storage()
        for start in periods_to_aggregate(storage, config, period, today):
            yield RunRequest(run_key=f"{start.isoformat()}@{today.isoformat()}", partition_key=start.isoformat())

    return job, period_schedule


def build_weekly_freshness_checks(keys: list[AssetKey]):
    """The last complete week must be aggregated by Tuesday 00:00 UTC."""
    return build_time_partition_freshness_checks(assets=keys, deadline_cron="0 0 * * 2", timezone="UTC")
