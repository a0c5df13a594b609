"""Asset keys, owners and cross-asset dependencies shared by the Dagster layer."""

from dagster import AssetDep, AssetKey, TimeWindowPartitionMapping

from renku_metrics.core.periods import PERIOD_SUFFIX

OWNERS = ["team:renku-product"]


def active_users_name(period: str) -> str:
    return f"active_users_{PERIOD_SUFFIX[period]}"


def core_actions_name(period: str) -> str:
    return f"core_actions_{PERIOD_SUFFIX[period]}"


def raw_events_asset_key(deployment: str) -> AssetKey:
    return AssetKey(["raw_events", deployment])


def raw_events_deps(deployments) -> list[AssetDep]:
    """Dependencies of a weekly or monthly asset on every deployment's daily raw events
    (days before a deployment's start_date simply do not exist)."""
    return [
        AssetDep(
            raw_events_asset_key(d.name),
            partition_mapping=TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True),
        )
        for d in deployments
    ]
