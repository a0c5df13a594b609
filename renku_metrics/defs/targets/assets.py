"""``target_status``: every target evaluated as of each ISO week.

One weekly partition per evaluation week (the same weekly partitions as the
aggregates). A run evaluates every target of the targets file at every period
since its start that has ended by the end of the partition's week, reading the
stored ``core_actions_*`` / ``active_users_*`` tables and, for group targets,
``group_metrics_*`` (``renku_metrics.core.value.targets``; rules in
docs/targets.md). The rows go to ``metrics/target_status/period=<week>/``,
replaced whole on a rerun. Each target is also a warning check on the asset.
"""

import datetime as dt

import pandas as pd
from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
)

from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.value.targets import (
    GROUP_METRICS,
    STATUSES,
    TABLE,
    SeriesLoader,
    Target,
    status_key,
    target_status,
    targets_markdown,
    write_status,
)
from renku_metrics.defs.keys import OWNERS, active_users_name, core_actions_name
from renku_metrics.defs.metadata import markdown_table, own_metadata, period_backfill_policy
from renku_metrics.defs.partitions import weekly_partitions
from renku_metrics.defs.resources import MetricsStorageResource
from renku_metrics.defs.targets.checks import target_check_result, target_check_specs

KEY = AssetKey(TABLE)
GROUP = "targets"


def upstream_keys(targets: tuple[Target, ...]) -> list[AssetKey]:
    """The stored tables the targets read (group metrics only when a target names a group)."""
    keys = []
    for period in ("week", "month"):
        keys += [AssetKey(core_actions_name(period)), AssetKey(active_users_name(period))]
    if any(t.group for t in targets):
        keys += [AssetKey(GROUP_METRICS[p]) for p in ("week", "month")]
    return keys


def _partition_metadata(storage, week: dt.date, frame: pd.DataFrame) -> dict:
    latest = frame.sort_values("period_start").groupby("target", sort=False).tail(1)
    counts = latest["status"].value_counts()
    return {
        "dagster/row_count": len(frame),
        "dagster/uri": MetadataValue.path(storage.uri(status_key(week))),
        "evaluated_week": week.isoformat(),
        "targets": markdown_table(targets_markdown(frame)),
        **{f"targets_{status}": int(counts.get(status, 0)) for status in STATUSES},
    }


def build_target_status_asset(
    config: MetricsConfig, targets: tuple[Target, ...], upstream: list[AssetKey]
) -> AssetsDefinition:
    """``upstream``: the stored tables it reads that are assets of this code location."""
    mapping = TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True)

    @asset(
        key=KEY,
        deps=[AssetDep(key, partition_mapping=mapping) for key in upstream],
        partitions_def=weekly_partitions(config.earliest_start),
        backfill_policy=period_backfill_policy("week"),
        group_name=GROUP,
        owners=OWNERS,
        kinds={"python", "parquet"},
        check_specs=target_check_specs(KEY, targets),
        description=(
            "Every target of the targets file (core/targets.yaml or $RENKU_METRICS_TARGETS) evaluated as of an "
            "ISO week: one row per target and period since its start that has ended by the end of the week, "
            "with value, baseline (the value at start), goal, expected (straight path from the baseline to the "
            "goal at the deadline), projected (least-squares trend of the last 6 periods carried to the deadline) "
            "and status: met, on_track, off_track, missed (final once the deadline's period is over) or no_data "
            "(with the reason). Only complete periods have a value. Each target is also a warning check here, "
            "showing its trajectory. Refreshed by target_status_sensor after the weekly, monthly or group "
            "aggregates change. Read it with renku_metrics.read_target_status(); rules in docs/targets.md. "
            "Cannot see: anything the aggregates cannot (see core_actions_weekly); periods not yet aggregated "
            "or incomplete (no value); group targets without stored group metrics (no_data)."
        ),
    )
    def target_status_asset(context: AssetExecutionContext, metrics_storage: MetricsStorageResource):
        storage = metrics_storage.get_storage()
        per_partition, frames = {}, {}
        # One read of the stored tables for all the run's weeks (a backfill runs a quarter of weeks).
        loader = SeriesLoader(storage, [d.name for d in config.deployments])
        for partition in context.partition_keys:
            week = dt.date.fromisoformat(partition)
            frame = target_status(storage, targets, week, loader=loader)
            write_status(storage, week, frame)
            frames[week] = frame
            per_partition[partition] = _partition_metadata(storage, week, frame)
        own_metadata(context, KEY, per_partition)
        last = frames[max(frames)]
        checks = [target_check_result(KEY, t, last[last["target"] == t.id]) for t in targets]
        summary = last.sort_values("period_start").groupby("target").tail(1)["status"].value_counts().to_dict()
        context.log.info("target status as of %s: %s", max(frames), summary)
        return MaterializeResult(check_results=checks)

    return target_status_asset
