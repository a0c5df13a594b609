"""The store scan on a schedule: ``python -m renku_metrics verify`` as a Dagster job.

Every Sunday at 06:00 UTC the ``verify_store`` job checks the raw days of the last
``days`` days (default 35; 0 for the whole store) against their manifests' sizes and
checksums (``core.integrity.verify_store``). A damaged or missing file fails the run,
with one line per file and the command that repairs it, so that it shows among the
failed runs and their alerts instead of waiting for the next aggregate to trip on it.
"""

import datetime as dt

from dagster import (
    Config,
    DefaultScheduleStatus,
    Failure,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    ScheduleEvaluationContext,
    job,
    op,
    schedule,
)

from renku_metrics.core.integrity import verify_store
from renku_metrics.defs.resources import MetricsStorageResource
from renku_metrics.defs.run_limits import job_tags, scheduled_run_tags

NAME = "verify_store"


class VerifyConfig(Config):
    days: int = 35  # the days before today to check; 0: every stored day


@op(name=f"{NAME}_op", description="Check stored raw files against their manifests' sizes and checksums.")
def verify_store_op(context: OpExecutionContext, config: VerifyConfig, metrics_storage: MetricsStorageResource):
    storage = metrics_storage.get_storage()
    since = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=config.days) if config.days > 0 else None
    checked, findings = verify_store(storage, since=since)
    context.add_output_metadata({"days_checked": checked, "problems": len(findings)})
    if findings:
        lines = [finding.line().replace("\n  ", " ") for finding in findings]
        raise Failure(
            description=f"{len(findings)} damaged or missing stored file(s): " + "; ".join(lines[:3]),
            metadata={"problems": MetadataValue.md("\n".join(f"- {line}" for line in lines[:200]))},
            allow_retries=False,
        )
    context.log.info("%d day(s) checked%s: no problem", checked, f" since {since}" if since else "")


@job(name=NAME, description="Check the stored raw files (python -m renku_metrics verify).", tags=job_tags(NAME))
def verify_store_job():
    verify_store_op()


@schedule(
    name=f"{NAME}_schedule",
    job=verify_store_job,
    cron_schedule="0 6 * * 0",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Sundays 06:00 UTC: checks the raw days of the last 35 days against their manifests.",
)
def verify_store_schedule(context: ScheduleEvaluationContext):
    when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
    return RunRequest(run_key=f"{NAME}@{when.date().isoformat()}", tags=scheduled_run_tags())
