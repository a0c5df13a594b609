"""Materialization metadata for runs that cover one partition or a range of them.

Dagster attaches the metadata of an asset's ``MaterializeResult`` to every
partition the run covers (it cannot attach per-partition metadata in a
single-run range: dagster-io/dagster issues 18123 and 21072). The aggregate and
engagement assets therefore backfill one period per run (``PER_PERIOD_BACKFILL``):
each run covers one partition and its result carries that period's own table and
numbers, which the asset's Plots tab draws across partitions.

A run that still covers a range (a CLI ``--partition-range``, or the raw-events
single-run backfills) records each partition's own numbers as an
``AssetObservation`` of that partition, and its result carries what is true of
the whole run (``run_*`` entries and a table with one row per partition).
"""

from dagster import AssetExecutionContext, AssetKey, AssetObservation, BackfillPolicy

# One run per period: a period aggregates in well under a second, and the jobs use
# the in-process executor, so a run costs little more than its process start.
PER_PERIOD_BACKFILL = BackfillPolicy.multi_run(max_partitions_per_run=1)


def partition_metadata(
    context: AssetExecutionContext, key: AssetKey, per_partition: dict[str, dict], run_summary: dict
) -> dict:
    """The metadata for the run's MaterializeResult (logging observations in range runs)."""
    if len(per_partition) == 1:
        return next(iter(per_partition.values()))
    for partition, metadata in per_partition.items():
        context.log_event(AssetObservation(asset_key=key, partition=partition, metadata=metadata))
    return run_summary
