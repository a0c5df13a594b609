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
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from renku_metrics.core.aggregate import PeriodAggregate, aggregate_period
from renku_metrics.core.catalog import Catalog, metric_description
from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.layout import metrics_key
from renku_metrics.core.storage import Storage
from renku_metrics.defs.aggregates.checks import AGGREGATE_CHECKS, check_aggregate, evaluate_target, target_checks
from renku_metrics.defs.keys import OWNERS, active_users_name, core_actions_name, raw_events_deps
from renku_metrics.defs.metadata import partition_metadata
from renku_metrics.defs.partitions import period_partitions, period_starts
from renku_metrics.defs.resources import MetricsStorageResource

GROUP = "metrics"


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
    lines = [
        "| deployment | active users | excluded users | days extracted | complete |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in frame.itertuples():
        complete = "yes" if r.complete else f"no: {r.coverage_note}"
        lines.append(
            f"| {r.deployment} | {r.active_users} | {r.excluded_users} | {r.days_extracted}/{r.days_expected} | {complete} |"
        )
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
    unit = (
        "ISO week (Monday 00:00 UTC to Monday 00:00 UTC, key = the Monday)"
        if period == "week"
        else "calendar month in UTC (key = the 1st)"
    )
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
        check_specs=[
            AssetCheckSpec(n, asset=active_key, description=t, blocking=b) for n, (t, b) in AGGREGATE_CHECKS.items()
        ],
    )
    def active_users(context: AssetExecutionContext, metrics_storage: MetricsStorageResource) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        frames = []
        for start in period_starts(context, period):
            result = aggregate_period(
                storage, config.deployments, catalog, period, start, dt.datetime.now(dt.timezone.utc)
            )
            storage.write_frame(metrics_key(active_key.path[-1], start), result.active_users)
            frames.append(result.active_users)
        frame = pd.concat(frames, ignore_index=True)
        meta = partition_metadata(
            context,
            active_key,
            {str(f["period_start"].iloc[0]): _active_metadata(storage, active_key.path[-1], f) for f in frames},
            _run_summary(frames, _markdown_active),
        )
        return MaterializeResult(
            metadata=meta, check_results=_check_results(frame, config, ["deployment", "period_start"])
        )

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
        check_specs=[
            AssetCheckSpec(n, asset=core_key, description=t, blocking=b) for n, (t, b) in AGGREGATE_CHECKS.items()
        ]
        + [
            AssetCheckSpec(
                name, asset=core_key, description=f"Target of {metric.id}: {target.describe()} (warning only)."
            )
            for name, metric, target in targets
        ],
    )
    def core_actions(context: AssetExecutionContext, metrics_storage: MetricsStorageResource) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        frames = []
        for start in period_starts(context, period):
            result = aggregate_period(
                storage, config.deployments, catalog, period, start, dt.datetime.now(dt.timezone.utc)
            )
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
    columns = [
        "deployment",
        "period",
        "period_start",
        "period_end",
        "metric",
        "title",
        "status",
        "users",
        "active_users",
        "pct",
        "complete",
        "coverage_note",
        "computed_at",
    ]
    return core[columns]
