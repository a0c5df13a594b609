"""Which partitions already have a run waiting or running, so that a schedule does
not request them again (a blocked deployment would otherwise pile up one more run
per tick)."""

from __future__ import annotations

from collections.abc import Iterable

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# Waiting in the queue or holding a run worker.
IN_FLIGHT_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
_MAX_RUNS = 1000


def partitions_in_flight(
    instance: DagsterInstance, job_name: str, asset_keys: Iterable[AssetKey], partition_keys: Iterable[str]
) -> set[str]:
    """The given partition keys (ISO dates) that a queued or running run covers: a run
    of ``job_name``, or any run materializing one of ``asset_keys`` (so a backfill
    launched from the UI counts too), as its partition or inside its partition range
    (a single-run backfill)."""
    wanted = set(partition_keys)
    keys = set(asset_keys)
    if not wanted:
        return set()
    covered: set[str] = set()
    for run in instance.get_runs(RunsFilter(statuses=IN_FLIGHT_STATUSES), limit=_MAX_RUNS):
        if run.job_name != job_name and not (set(run.asset_selection or ()) & keys):
            continue
        tags = run.tags
        if tags.get(PARTITION_TAG) in wanted:
            covered.add(tags[PARTITION_TAG])
        start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
        if start and end:
            covered |= {k for k in wanted if start <= k <= end}
    return covered


def settled_upstream(instance: DagsterInstance, upstream: Iterable[AssetKey], cursor: str | None) -> tuple[int, str]:
    """For a sensor that follows ``upstream``: (the storage id of their newest
    materialization, or 0 when it is not newer than ``cursor``, the sensor's last one;
    the reason to skip, "" when none). It skips while a run materializing any of them is
    queued or in progress, so a backfill is followed once, at its end."""
    keys = list(upstream)
    latest = 0
    for key in keys:
        records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=1).records
        if records:
            latest = max(latest, records[0].storage_id)
    if latest <= int(cursor or 0):
        return 0, "no new materialization of " + ", ".join(k.to_user_string() for k in keys)
    busy = [
        run
        for run in instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT_STATUSES), limit=_MAX_RUNS)
        if run.asset_selection and set(run.asset_selection) & set(keys)
    ]
    if busy:
        return 0, f"{len(busy)} run(s) of " + ", ".join(k.to_user_string() for k in keys) + " still in progress"
    return latest, ""
