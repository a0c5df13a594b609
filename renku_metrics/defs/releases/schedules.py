"""The daily refresh of the releases and their verdicts."""

from __future__ import annotations

from dagster import AssetsDefinition, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from renku_metrics.defs.run_limits import job_tags

JOB = "releases_daily"


def build_releases_job_and_schedule(assets: list[AssetsDefinition]):
    job = define_asset_job(
        JOB,
        selection=[a.key for a in assets],
        description="Refresh the releases table and judge every release again (verdicts appear by themselves "
        "once a release's after-window is complete).",
        tags=job_tags("releases"),
    )
    schedule = ScheduleDefinition(
        name=f"{JOB}_schedule",
        job=job,
        # After the daily extract (01:30) and the Monday weekly aggregates (04:00).
        cron_schedule="0 6 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
    )
    return job, schedule
