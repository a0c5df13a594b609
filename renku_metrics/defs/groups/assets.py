"""Group assets (group ``groups``): membership snapshots and the metrics of each group.

* ``group_membership/<deployment>``: weekly partitions (the weeks of the weekly
  aggregates). A partition holds the snapshot of who belongs to which configured group
  (``groups:`` in deployments.yaml), taken when it runs: by the weekly schedule on the
  Monday after the week, so each week gets the membership seen at its end. Weekly, not
  daily: the metrics are weekly and monthly, and membership of teams and institutions
  changes slowly, so a daily snapshot would add objects and Keycloak requests without
  changing a number. Keycloak keeps no history: a partition whose week ended 7 or more
  days ago keeps the snapshot it has (see ``core/value/groups.py``).
* ``group_metrics_weekly`` / ``group_metrics_monthly``: per period, deployment (and
  ``all``), group and metric (each catalog metric, plus ``active_users``): members,
  active_members, users, pct_of_members, pct_of_active_members, membership_as_of,
  complete, withheld_reason. Read from the week's user sets that the weekly aggregate
  stores, so they run after it.

Each partition's materialization shows its own group table (``own_metadata``).
"""

import os

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
)

from renku_metrics.core.catalog import Catalog
from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.layout import metrics_key
from renku_metrics.core.value import groups
from renku_metrics.defs.clock import run_now
from renku_metrics.defs.groups.checks import GROUP_CHECKS, check_group_metrics
from renku_metrics.defs.keys import OWNERS, active_users_name
from renku_metrics.defs.metadata import own_metadata, period_backfill_policy, table
from renku_metrics.defs.partitions import period_partitions, period_starts, weekly_partitions
from renku_metrics.defs.resources import MetricsStorageResource

GROUP = "groups"
_KINDS = "keycloak_group | organization | email_domain | user_list"


def membership_key(deployment: str) -> AssetKey:
    return AssetKey(["group_membership", deployment])


def metrics_asset_key(period: str) -> AssetKey:
    return AssetKey(groups.TABLES[period])


def group_rows(frame: pd.DataFrame) -> list[dict]:
    """One row per deployment and group: its size and each metric's share of members."""
    rows = []
    for (deployment, group, kind), part in frame.groupby(["deployment", "group", "group_kind"], sort=True):
        first = part.iloc[0]
        row = {
            "deployment": deployment,
            "group": group,
            "kind": kind,
            "members": None if pd.isna(first["members"]) else int(first["members"]),
            "active_members": None if pd.isna(first["active_members"]) else int(first["active_members"]),
        }
        for r in part.itertuples():
            if r.metric != groups.ACTIVE_USERS:
                row[r.metric] = None if pd.isna(r.pct_of_members) else f"{int(r.users)} ({r.pct_of_members:.1f}%)"
        row["membership_as_of"] = str(first["membership_as_of"])
        row["complete"] = bool(first["complete"])
        row["withheld"] = first["withheld_reason"] if isinstance(first["withheld_reason"], str) else ""
        rows.append(row)
    return rows


def headline(frame: pd.DataFrame) -> dict:
    """Plain numbers the UI plots over partitions: each shown group's members and share of members."""
    meta = {}
    for r in frame[frame["withheld_reason"].isna()].itertuples():
        if r.metric == groups.ACTIVE_USERS:
            meta[f"{r.deployment}/{r.group}/members"] = int(r.members)
        if not pd.isna(r.pct_of_members):
            meta[f"{r.deployment}/{r.group}/{r.metric}/pct_of_members"] = float(r.pct_of_members)
    return meta


def build_membership_assets(config: MetricsConfig) -> list[AssetsDefinition]:
    """One ``group_membership/<deployment>`` asset per deployment with ``groups`` configured."""
    partitions = weekly_partitions(config.earliest_start)
    return [_membership_asset(d, partitions) for d in config.deployments if d.groups is not None]


def _membership_asset(deployment, partitions) -> AssetsDefinition:
    key = membership_key(deployment.name)

    @asset(
        key=key,
        partitions_def=partitions,
        backfill_policy=period_backfill_policy("week"),
        group_name=GROUP,
        owners=OWNERS,
        kinds={"keycloak", "parquet"},
        description=(
            f"Who belongs to which configured group of deployment {deployment.name!r}, one snapshot per ISO "
            "week (key = the Monday), taken when the partition runs (the weekly schedule: the Monday after "
            "the week): columns snapshot_date, group, group_kind "
            f"({_KINDS}), user_key (the pseudonymous key the events carry). "
            "Cannot see: membership before the first snapshot (Keycloak keeps no history; such periods use "
            "the earliest snapshot), changes between two snapshots, users without an e-mail for the domain "
            "map. A partition whose week ended 7 or more days ago keeps its snapshot. No e-mail, name or "
            "username is stored."
        ),
    )
    def _membership(context: AssetExecutionContext, metrics_storage: MetricsStorageResource):
        _d = deployment
        storage = metrics_storage.get_storage()
        now = run_now(context)
        per_partition = {}
        cache: dict = {}  # a range run over weeks whose snapshots are all of today reads Keycloak once
        for week in period_starts(context, "week"):
            snap = groups.take_snapshot(storage, _d, week, now, os.environ, cache=cache)
            frame = groups.read_snapshot(storage, snap.key)
            sizes = frame.groupby(["group", "group_kind"]).size()
            per_partition[week.isoformat()] = {
                "week": week.isoformat(),
                "snapshot_date": snap.snapshot_date.isoformat(),
                "taken": snap.taken,
                "note": snap.note or "taken now",
                "dagster/row_count": snap.rows,
                "dagster/uri": MetadataValue.path(storage.uri(snap.key)),
                "groups": table([{"group": g, "kind": k, "members": int(n)} for (g, k), n in sizes.items()]),
                **{f"{g}/members": int(n) for (g, _), n in sizes.items()},
            }
            context.log.info(
                "%s week %s: snapshot of %s, %d memberships in %d groups (%s)",
                _d.name,
                week,
                snap.snapshot_date,
                snap.rows,
                snap.groups,
                "taken" if snap.taken else "kept",
            )
        own_metadata(context, key, per_partition)
        return MaterializeResult()

    return _membership


def build_group_metrics_asset(config: MetricsConfig, catalog: Catalog, period: str) -> AssetsDefinition:
    """``group_metrics_weekly`` or ``group_metrics_monthly``."""
    name = groups.TABLES[period]
    key = metrics_asset_key(period)
    deps = [
        AssetDep(
            membership_key(d.name),
            partition_mapping=TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True),
        )
        for d in config.deployments
        if d.groups is not None
    ]
    # After the period's aggregate: it stores the weeks' user sets read here, and the denominator's `complete`.
    deps.append(AssetDep(active_users_name(period)))

    @asset(
        key=key,
        partitions_def=period_partitions(period, config.earliest_start),
        deps=deps,
        backfill_policy=period_backfill_policy(period),
        group_name=GROUP,
        owners=OWNERS,
        kinds={"parquet"},
        description=(
            f"Core-action metrics of each configured group per {period} (key = its first day), per deployment and "
            "`all` (a group's members and their activity across deployments). One row per period, deployment, "
            "group and metric (each catalog metric plus active_users): members, active_members (members with any "
            "event), users (members who did the metric's actions), pct_of_members, pct_of_active_members, "
            "membership_as_of (the snapshot used: the latest taken by the period's end, else the earliest), "
            "complete (the period's denominator is complete), withheld_reason (a group below groups.min_size, "
            "default 5, gets no counts). Columns: period_start, period_end, deployment, group, group_kind, metric, "
            "members, active_members, users, pct_of_members, pct_of_active_members, membership_as_of, complete, "
            "withheld_reason. Cannot see: who was a member before the first snapshot or between snapshots; "
            "members' activity that no source sees. Reads the weekly user sets (state/user_weeks), not raw events: "
            "a run costs the same at any length of history."
        ),
        check_specs=[AssetCheckSpec(n, asset=key, description=t, blocking=b) for n, (t, b) in GROUP_CHECKS.items()],
    )
    def _group_metrics(context: AssetExecutionContext, metrics_storage: MetricsStorageResource) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        starts = period_starts(context, period)
        frame = groups.group_metrics(storage, config.deployments, catalog, period, starts)
        per_partition = {}
        for start in starts:
            rows = frame[frame["period_start"] == start].reset_index(drop=True)
            storage.write_frame(metrics_key(name, start), rows)
            per_partition[start.isoformat()] = {
                "period": start.isoformat(),
                "dagster/row_count": len(rows),
                "dagster/uri": MetadataValue.path(storage.uri(metrics_key(name, start))),
                "groups": table(group_rows(rows)),
                "complete": bool(rows["complete"].all()) if len(rows) else False,
                **headline(rows),
            }
        own_metadata(context, key, per_partition)
        return MaterializeResult(
            check_results=[
                AssetCheckResult(check_name=n, passed=bool(passed), metadata=m)
                for n, (passed, m) in check_group_metrics(frame).items()
            ]
        )

    return _group_metrics


def build_group_assets(config: MetricsConfig, catalog: Catalog) -> dict[str, list[AssetsDefinition]]:
    """The group assets keyed by the period whose job runs them (none without any ``groups`` configured)."""
    if not any(d.groups is not None for d in config.deployments):
        return {"week": [], "month": []}
    return {
        "week": [*build_membership_assets(config), build_group_metrics_asset(config, catalog, "week")],
        "month": [build_group_metrics_asset(config, catalog, "month")],
    }
