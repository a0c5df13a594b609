"""Materialization metadata for runs that cover one partition or a range of them.

Dagster attaches the metadata of an asset's ``MaterializeResult`` to every
partition a single-run backfill covers. Per-partition numbers (row counts,
headline metrics) therefore go on the result only when the run covers exactly
one partition, as scheduled runs do. In a range run each partition's own
numbers are recorded as an ``AssetObservation`` of that partition (visible in
the asset's events), and the result carries what is true of the whole run.
"""

from dagster import AssetExecutionContext, AssetKey, AssetObservation


def partition_metadata(
    context: AssetExecutionContext, key: AssetKey, per_partition: dict[str, dict], run_summary: dict
) -> dict:
    """The metadata for the run's MaterializeResult (logging observations in range runs)."""
    if len(per_partition) == 1:
        return {**run_summary, **next(iter(per_partition.values()))}
    for partition, metadata in per_partition.items():
        context.log_event(AssetObservation(asset_key=key, partition=partition, metadata=metadata))
    return run_summary
