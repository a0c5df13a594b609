"""Daily extract job and schedule of each deployment."""

import datetime as dt
import logging

from dagster import (
    AssetsDefinition,
    AssetSelection,
    Backoff,
    DefaultScheduleStatus,
    Jitter,
    RetryPolicy,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from renku_metrics.core.config import Deployment
from renku_metrics.core.integrity import DamagedFileError
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.storage import Storage
from renku_metrics.defs.resources import MetricsStorageResource
from renku_metrics.defs.run_limits import job_tags, scheduled_run_tags
from renku_metrics.defs.runs import partitions_in_flight

log = logging.getLogger(__name__)

REEXTRACT_DAYS = 7

# A failed extract step of the daily job (an upstream outage) is retried after about
# 1, 2, 4 and 8 minutes, on top of each source's own HTTP retries. A configuration
# error (e.g. a secret's variable not set) raises Failure(allow_retries=False) and
# is not retried.
EXTRACT_RETRY_POLICY = RetryPolicy(max_retries=4, delay=60, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def days_to_extract(
    storage: Storage, deployment: Deployment, today: dt.date, lookback: int = REEXTRACT_DAYS
) -> list[dt.date]:
    """Yesterday, plus any of the ``lookback`` days before it that is missing or was
    extracted incomplete (e.g. an audit-log object not yet uploaded at the first try).
    Re-extracting never loses events: an incomplete source keeps what was stored."""
    wanted = []
    for back in range(lookback, 0, -1):
        day = today - dt.timedelta(days=back)
        if day < deployment.start_date:
            continue
        if back == 1:
            wanted.append(day)
            continue
        try:
            manifest = Manifest.read(storage, deployment.name, day)
        except DamagedFileError as exc:  # re-extracting the day replaces its damaged manifest
            log.warning("%s", exc)
            wanted.append(day)
            continue
        if manifest is None or not manifest.complete:
            wanted.append(day)
    return wanted


def build_daily_extract_schedule(deployment: Deployment, asset_def: AssetsDefinition):
    """Every day at 01:30 UTC: extract the previous UTC day of one deployment, and retry
    the days of the past week that are missing or were incomplete; days that already
    have a queued or running run are left to it."""
    job = define_asset_job(
        name=f"{deployment.name}_daily_extract",
        # The asset with its own checks; freshness checks are left to their sensor.
        selection=AssetSelection.assets(asset_def).without_checks() | AssetSelection.checks(asset_def),
        description=f"Extract UTC days of deployment {deployment.name}.",
        op_retry_policy=EXTRACT_RETRY_POLICY,
        tags=job_tags("daily_extract"),
    )

    @schedule(
        name=f"{deployment.name}_daily_extract_schedule",
        job=job,
        cron_schedule="30 1 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            "Extracts yesterday (UTC), and re-extracts any of the previous 7 days that is missing "
            "or whose sources could not read their whole window. A day already queued or running "
            "is not requested again."
        ),
    )
    def daily_extract(context: ScheduleEvaluationContext, metrics_storage: MetricsStorageResource):
        when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        today = when.astimezone(dt.timezone.utc).date()
        storage = metrics_storage.get_storage()
        keys = [day.isoformat() for day in days_to_extract(storage, deployment, today)]
        busy = partitions_in_flight(context.instance, job.name, [asset_def.key], keys)
        if busy:
            context.log.info("Not requested again, already queued or running: %s", ", ".join(sorted(busy)))
        for key in keys:
            if key not in busy:
                yield RunRequest(run_key=f"{key}@{today.isoformat()}", partition_key=key, tags=scheduled_run_tags())

    return job, daily_extract
