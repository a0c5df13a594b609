"""Weekly and monthly aggregates: the active-users denominator and the core actions.

Assets (each partitioned by period, every deployment in one partition, plus the
``all`` rollup), computed together by one multi-asset step per period:

* ``active_users_weekly`` / ``active_users_monthly``: distinct active users.
* ``core_actions_weekly`` / ``core_actions_monthly``: per deployment and
  catalog metric, distinct users, the period's active users and ``pct``.

Both tables of a period come from the same scan of the raw events
(``aggregate_period``) and are published as a pair under one publication id
(``core.publication``): a crash between the two writes leaves a pair that the
readers mark incomplete and the schedule aggregates again. Selecting either asset materializes both.

Each period is one Parquet object under ``metrics/<asset>/period=YYYY-MM-DD/``,
replaced whole on a rerun. A backfill launches a quarter of periods per run (13
weeks or 3 months), aggregated from one scan of their daily files
(``aggregate_periods``); every partition's materialization still carries its own
period's numbers (``own_metadata``).
"""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from renku_metrics.core.aggregate import PeriodAggregate, aggregate_periods
from renku_metrics.core.catalog import Catalog, metric_description
from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.layout import metrics_key
from renku_metrics.core.periods import period_bounds
from renku_metrics.core.publication import publish_period
from renku_metrics.core.storage import Storage
from renku_metrics.defs.aggregates.checks import (
    ACTIVE_CHECKS,
    CORE_CHECKS,
    check_active,
    check_core,
    check_coverage,
)
from renku_metrics.defs.clock import run_now
from renku_metrics.defs.keys import OWNERS, active_users_name, core_actions_name, raw_events_deps
from renku_metrics.defs.metadata import markdown_table, own_metadata, period_backfill_policy
from renku_metrics.defs.partitions import period_partitions, period_starts
from renku_metrics.defs.resources import MetricsStorageResource

GROUP = "metrics"


def _fmt_pct(value) -> str:
    return "-" if pd.isna(value) else f"{value:.1f}%"


def markdown_core(frame: pd.DataFrame) -> str:
    metrics = list(dict.fromkeys(frame["metric"]))
    lines = [
        "| period | deployment | active users | " + " | ".join(f"{m} users (pct)" for m in metrics) + " | complete |",
        "|" + " --- |" * (len(metrics) + 4),
    ]
    for (period_start, deployment), rows in frame.groupby(["period_start", "deployment"], sort=False):
        by_metric = rows.set_index("metric")
        cells = " | ".join(f"{int(by_metric.loc[m, 'users'])} ({_fmt_pct(by_metric.loc[m, 'pct'])})" for m in metrics)
        complete = "yes" if rows["complete"].all() else "no: " + rows["coverage_note"].iloc[0]
        lines.append(f"| {period_start} | {deployment} | {int(rows['active_users'].iloc[0])} | {cells} | {complete} |")
    return "\n".join(lines)


def _markdown_active(frame: pd.DataFrame) -> str:
    lines = [
        "| period | deployment | active users | excluded users | days extracted | complete |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in frame.itertuples():
        complete = "yes" if r.complete else f"no: {r.coverage_note}"
        lines.append(
            f"| {r.period_start} | {r.deployment} | {r.active_users} | {r.excluded_users} | {r.days_extracted}/{r.days_expected} | {complete} |"
        )
    return "\n".join(lines)


def _active_metadata(storage: Storage, table: str, frame: pd.DataFrame) -> dict:
    """Exact figures of one period (one partition) of the denominator."""
    meta = {
        "period": str(frame["period_start"].iloc[0]),
        "dagster/row_count": len(frame),
        "dagster/uri": MetadataValue.path(storage.uri(metrics_key(table, frame["period_start"].iloc[0]))),
        "table": markdown_table(_markdown_active(frame)),
        "complete": bool(frame["complete"].all()),
    }
    for r in frame.itertuples():
        meta[f"{r.deployment}/active_users"] = int(r.active_users)
    return meta


def _core_metadata(storage: Storage, table: str, frame: pd.DataFrame) -> dict:
    """Exact figures of one period (one partition) of the core actions: the numbers the UI plots."""
    meta = {
        "period": str(frame["period_start"].iloc[0]),
        "dagster/row_count": len(frame),
        "dagster/uri": MetadataValue.path(storage.uri(metrics_key(table, frame["period_start"].iloc[0]))),
        "table": markdown_table(markdown_core(frame)),
        "complete": bool(frame["complete"].all()),
    }
    for r in frame.drop_duplicates("deployment").itertuples():
        meta[f"{r.deployment}/active_users"] = int(r.active_users)
    for r in frame.itertuples():
        meta[f"{r.deployment}/{r.metric}/users"] = int(r.users)
        if not pd.isna(r.pct):
            meta[f"{r.deployment}/{r.metric}/pct"] = float(r.pct)
    return meta


def _check_results(key: AssetKey, results: dict[str, tuple[bool, dict]]) -> list[AssetCheckResult]:
    return [
        AssetCheckResult(asset_key=key, check_name=name, passed=bool(passed), metadata=meta)
        for name, (passed, meta) in results.items()
    ]


def _specs(key: AssetKey, checks: dict[str, tuple[str, bool]]) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(n, asset=key, description=t, blocking=b) for n, (t, b) in checks.items()]


def build_metric_assets(config: MetricsConfig, catalog: Catalog, period: str) -> list[AssetsDefinition]:
    """The period's multi-asset (denominator and core actions from one scan)."""
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
    together = (
        "Computed in the same step and from the same scan as `{other}`, so the two never disagree; "
        "materializing one materializes both. A backfill runs a quarter of periods per run (13 weeks or 3 "
        "months) from one scan; each partition's metadata (its table and the numbers plotted in the overview's Metadata → Plots view) "
        "is still its own period's."
    )

    @multi_asset(
        name=f"aggregate_{active_key.path[-1].split('_')[-1]}",
        specs=[
            AssetSpec(
                active_key,
                deps=raw_deps,
                group_name=GROUP,
                owners=OWNERS,
                kinds={"duckdb", "parquet"},
                description=(
                    f"The denominator: distinct active users per deployment and {unit}, plus the all rollup. "
                    "Active = at least one event of any kind (login, commit, dataset creation, workflow run, "
                    "session start), after each deployment's excluded_users. Columns: deployment, period, "
                    "period_start, period_end, active_users, excluded_users, days_expected, days_extracted, "
                    "complete, coverage_note, computed_at. Cannot see: users whose only activity is invisible "
                    "to every source (local CLI work never pushed, local sessions); logins lost to Keycloak's "
                    "event expiration (marked incomplete). " + together.format(other=core_key.path[-1])
                ),
            ),
            AssetSpec(
                core_key,
                deps=raw_deps,
                group_name=GROUP,
                owners=OWNERS,
                kinds={"duckdb", "parquet"},
                description=(
                    f"Core-action metrics per deployment, catalog metric and {unit}, plus the all rollup: "
                    "distinct users who did the action at least once (`users`), the period's active users and "
                    "`pct` = 100 * users / active users (null when nobody was active). `complete` is false "
                    "until the period has ended and all its days were extracted in full; never present "
                    "incomplete rows as final. "
                    + together.format(other=active_key.path[-1])
                    + "\n\nMetrics and what they cannot see:\n\n"
                    + gaps
                ),
            ),
        ],
        partitions_def=partitions,
        backfill_policy=period_backfill_policy(period),
        can_subset=False,
        check_specs=[
            *_specs(active_key, ACTIVE_CHECKS),
            *_specs(core_key, CORE_CHECKS),
        ],
    )
    def aggregate(context: AssetExecutionContext, metrics_storage: MetricsStorageResource):
        storage = metrics_storage.get_storage()
        now = run_now(context)  # the wall clock, or the run tag renku_metrics/now
        today = now.date()
        active_frames, core_frames, coverage = [], [], []
        # The run's periods (one, or a backfill's quarter) from one scan of their daily files.
        results = aggregate_periods(storage, config.deployments, catalog, period, period_starts(context, period), now)
        for start, result in sorted(results.items()):
            core = with_denominator(result)
            # Both tables under one publication id: a crash between the two writes leaves a
            # pair that readers refuse (core.publication) and the schedule aggregates again.
            publish_period(storage, period, start, result.active_users, core)
            active_frames.append(result.active_users)
            core_frames.append(core)
            coverage.append((start, today >= period_bounds(period, start)[1], result.coverage))
        active = pd.concat(active_frames, ignore_index=True)
        core = pd.concat(core_frames, ignore_index=True)
        covered = check_coverage(coverage)
        active_checks = _check_results(active_key, check_active(active, config))
        core_checks = _check_results(core_key, check_core(core, config))
        for key, checks in ((active_key, active_checks), (core_key, core_checks)):
            for res in covered.values():
                checks.append(
                    AssetCheckResult(
                        asset_key=key,
                        check_name=res.check_name,
                        passed=res.passed,
                        severity=res.severity,
                        metadata=res.metadata,
                    )
                )
        own_metadata(
            context,
            active_key,
            {str(f["period_start"].iloc[0]): _active_metadata(storage, active_key.path[-1], f) for f in active_frames},
        )
        own_metadata(
            context,
            core_key,
            {str(f["period_start"].iloc[0]): _core_metadata(storage, core_key.path[-1], f) for f in core_frames},
        )
        yield MaterializeResult(asset_key=active_key, check_results=active_checks)
        yield MaterializeResult(asset_key=core_key, check_results=core_checks)

    return [aggregate]


_CORE_COLUMNS = [
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


def with_denominator(result: PeriodAggregate) -> pd.DataFrame:
    """Core-action rows whose active users, pct and completeness are the denominator's of the same scan."""
    denominator = result.active_users[["deployment", "active_users", "complete", "coverage_note"]]
    core = result.core_actions.drop(columns=["active_users", "complete", "coverage_note"]).merge(
        denominator, on="deployment", how="left", validate="many_to_one"
    )
    core["active_users"] = core["active_users"].astype("int64")
    core["pct"] = (100.0 * core["users"] / core["active_users"]).where(core["active_users"] > 0).round(2)
    return core[_CORE_COLUMNS]
