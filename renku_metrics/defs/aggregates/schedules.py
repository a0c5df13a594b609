"""The weekly and monthly aggregation jobs and their schedules."""

import datetime as dt

from dagster import (
    AssetsDefinition,
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.coverage import coverage_for
from renku_metrics.core.periods import PERIOD_SUFFIX, period_bounds, period_start_of, previous_period_start
from renku_metrics.core.publication import stored_pair_complete
from renku_metrics.core.storage import Storage
from renku_metrics.defs.resources import MetricsStorageResource
from renku_metrics.defs.run_limits import job_tags, scheduled_run_tags
from renku_metrics.defs.runs import partitions_in_flight

RECHECK_PERIODS = {"week": 4, "month": 2}


def periods_to_aggregate(
    storage: Storage, config: MetricsConfig, period: str, today: dt.date, recheck: int | None = None
) -> list[dt.date]:
    """The period that just ended, plus earlier ones (up to ``recheck``) whose stored
    denominator is missing or incomplete although all their days are now extracted in
    full (e.g. a day re-extracted by the daily schedule after an upstream caught up)."""
    recheck = RECHECK_PERIODS[period] if recheck is None else recheck
    current = period_start_of(period, today)
    first = period_start_of(period, config.earliest_start)
    starts = []
    start = current
    for _ in range(recheck + 1):
        start = previous_period_start(period, start)
        if start < first:
            break
        starts.append(start)
    wanted = starts[:1]
    for start in starts[1:]:
        # Complete only when both tables are stored as one pair (core.publication).
        if stored_pair_complete(storage, period, start):
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
    while some of their days were incomplete and have since been completed. A period
    that already has a queued or running run is not requested again.
    """
    name = f"{PERIOD_SUFFIX[period]}_metrics"
    job = define_asset_job(
        name=name,
        # The assets with their own checks; the freshness checks are evaluated by their sensor.
        selection=AssetSelection.assets(*assets).without_checks() | AssetSelection.checks(*assets),
        description=f"Aggregate the {PERIOD_SUFFIX[period]} metrics of a period.",
        tags=job_tags("period_metrics"),
    )

    @schedule(
        name=f"{name}_schedule",
        job=job,
        cron_schedule="0 4 * * 1" if period == "week" else "0 5 1 * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            f"Aggregates the {period} just ended, and reruns earlier {period}s that were aggregated "
            "incomplete but whose days have all been extracted in full since. A period already "
            "queued or running is not requested again."
        ),
    )
    def period_schedule(context: ScheduleEvaluationContext, metrics_storage: MetricsStorageResource):
        when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        today = when.astimezone(dt.timezone.utc).date()
        storage = metrics_storage.get_storage()
        keys = [start.isoformat() for start in periods_to_aggregate(storage, config, period, today)]
        busy = partitions_in_flight(context.instance, job.name, [k for a in assets for k in a.keys], keys)
        if busy:
            context.log.info("Not requested again, already queued or running: %s", ", ".join(sorted(busy)))
        for key in keys:
            if key not in busy:
                yield RunRequest(run_key=f"{key}@{today.isoformat()}", partition_key=key, tags=scheduled_run_tags())

    return job, period_schedule
