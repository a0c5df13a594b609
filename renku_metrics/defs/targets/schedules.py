"""The target_status job and the sensor that runs it after the aggregates change.

A sensor rather than a schedule: target_status must follow the weekly and the
monthly aggregates (and the group metrics), which run at different times, and
must not read a period while its aggregate is still being written.
"""

from dagster import (
    AssetKey,
    AssetsDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    define_asset_job,
    sensor,
)

from renku_metrics.core.value.targets import TABLE
from renku_metrics.defs.run_limits import job_tags
from renku_metrics.defs.runs import settled_upstream


def build_target_status_job_and_sensor(asset_def: AssetsDefinition, upstream: list[AssetKey]):
    job = define_asset_job(
        f"{TABLE}_job",
        selection=[asset_def.key],
        description="Evaluate every target as of a week.",
        tags=job_tags("target_status"),
    )

    @sensor(
        name=f"{TABLE}_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Requests target_status for the last ended week after any of "
            + ", ".join(k.to_user_string() for k in upstream)
            + " got a new materialization, once none of their runs is queued or in progress (so the weekly "
            "run on Monday and the monthly run on the 1st are both followed, and a backfill once at its end)."
        ),
    )
    def target_status_sensor(context: SensorEvaluationContext):
        latest, skip = settled_upstream(context.instance, upstream, context.cursor)
        if skip:
            return SkipReason(skip)
        week = asset_def.partitions_def.get_last_partition_key()  # the last week that has ended
        if week is None:
            return SkipReason("no week has ended yet")
        context.update_cursor(str(latest))
        return RunRequest(run_key=f"{TABLE}@{week}@{latest}", partition_key=week)

    return job, target_status_sensor
