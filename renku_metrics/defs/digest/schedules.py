"""The weekly digest's job and schedule: delivered automatically on Monday mornings."""

import datetime as dt

from dagster import (
    AssetsDefinition,
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from renku_metrics.core.layout import metrics_key
from renku_metrics.core.value.digest_delivery import latest_complete_week
from renku_metrics.defs.keys import core_actions_name
from renku_metrics.defs.resources import MetricsStorageResource
from renku_metrics.defs.run_limits import job_tags

CRON = "30 6-23 * * 1"  # Mondays, hourly from 06:30 UTC (the weekly aggregates start at 04:00)


def build_digest_job_and_schedule(digest: AssetsDefinition):
    job = define_asset_job(
        "weekly_digest_job",
        selection=AssetSelection.assets(digest),
        description="Build, store and deliver the weekly digest of a week.",
        tags=job_tags("weekly_digest"),
    )

    @schedule(
        name="weekly_digest_schedule",
        job=job,
        cron_schedule=CRON,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            "Mondays, hourly from 06:30 UTC: requests the digest of the week just ended once its weekly "
            "aggregates are stored, once per week (run key = the week). Deliveries are recorded per week and "
            "channel, so a rerun never sends twice."
        ),
    )
    def weekly_digest_schedule(context: ScheduleEvaluationContext, metrics_storage: MetricsStorageResource):
        when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        week = latest_complete_week(when)
        storage = metrics_storage.get_storage()
        if not storage.exists(metrics_key(core_actions_name("week"), week)):
            return SkipReason(f"the weekly aggregates of {week} are not stored yet")
        return RunRequest(run_key=f"weekly_digest:{week.isoformat()}", partition_key=week.isoformat())

    return job, weekly_digest_schedule
