"""Per-deployment raw event extracts: assets, checks and daily schedules.

One daily-partitioned asset per deployment, key ``[<deployment>, "raw_events"]``.
Each UTC day is its own Parquet object; rerunning a day replaces it. A
single-run backfill policy makes a year's backfill one run that loops over the
days (Dagster cannot attach per-partition metadata in such a run: its metadata
summarises the range, and each day's exact figures are in its manifest).
"""


import datetime as dt
import os

import duckdb
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetsDefinition,
    BackfillPolicy,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    asset,
    build_last_update_freshness_checks,
    define_asset_job,
    RunRequest,
    ScheduleEvaluationContext,
    TimeWindowPartitionMapping,
    schedule,
)

from renku_metrics.config import Deployment
from renku_metrics.events import ACTIONS
from renku_metrics.extract import DayExtract, RecentEventIds, build_sources, extract_day
from renku_metrics.partitions import daily_partitions
from renku_metrics.resources import MetricsStorageResource
from renku_metrics.run_metadata import partition_metadata
from renku_metrics.storage import Storage, manifest_key, raw_events_key

GROUP = "raw_events"
OWNERS = ["team:renku-product"]
FRESHNESS = dt.timedelta(hours=36)

# Checks run over the stored Parquet of each day just written. Blocking ones
# stop the aggregates in the same run when the raw data would make them wrong.
RAW_EVENT_CHECKS = {
    "user_ids_present": ("Every event has a well-formed pseudonymous user id.", True),
    "timestamps_within_day": ("Every event's occurred_at lies inside its partition's UTC day.", True),
    "unique_event_ids": ("No event id appears twice within a day.", True),
    "no_personal_data": ("No column holds anything that looks like an email or IP address.", True),
    "source_coverage": (
        "Every source read its whole window (e.g. Keycloak events not yet expired). "
        "A gap here is missing data, not a drop in usage.",
        False,
    ),
}

_PERSONAL = r"[^@\s]+@[^@\s]+\.[^@\s]+|^\d{1,3}(\.\d{1,3}){3}$|^[0-9a-fA-F]*:[0-9a-fA-F:]*:[0-9a-fA-F:]*$"
_TEXT_COLUMNS = ("event_id", "deployment", "user_id", "action", "project_id", "project_visibility", "source")

# Each query counts the violating rows of one day's file ($path) for day $day.
_CHECK_SQL = {
    "user_ids_present": (
        "SELECT count(*) FROM read_parquet($path) "
        "WHERE user_id IS NULL OR NOT regexp_full_match(user_id, '([0-9a-f]{32}|gitlab:[0-9]+)')"
    ),
    "timestamps_within_day": (
        "SELECT count(*) FROM read_parquet($path) "
        "WHERE occurred_at < CAST($day AS DATE)::TIMESTAMP AT TIME ZONE 'UTC' "
        "OR occurred_at >= (CAST($day AS DATE) + 1)::TIMESTAMP AT TIME ZONE 'UTC'"
    ),
    "unique_event_ids": (
        "SELECT count(*) FROM (SELECT event_id FROM read_parquet($path) GROUP BY event_id HAVING count(*) > 1)"
    ),
    "no_personal_data": "SELECT count(*) FROM read_parquet($path) WHERE "
    + " OR ".join(f"regexp_matches(coalesce({col}, ''), $personal)" for col in _TEXT_COLUMNS),
}


def count_violations(storage: Storage, keys: list[str]) -> dict[str, int]:
    """Rows breaking each blocking raw-event check, summed over the given day objects."""
    totals = {name: 0 for name in _CHECK_SQL}
    if not keys:
        return totals
    con = duckdb.connect()
    try:
        with storage.local_paths(keys) as paths:
            for key, path in zip(keys, paths):
                day = key.split("date=")[1][:10]
                for name, sql in _CHECK_SQL.items():
                    params = {"path": path}
                    if "$day" in sql:
                        params["day"] = day
                    if "$personal" in sql:
                        params["personal"] = _PERSONAL
                    totals[name] += int(con.execute(sql, params).fetchone()[0])
    finally:
        con.close()
    return totals


def raw_events_key_of(deployment: str) -> AssetKey:
    return AssetKey([deployment, "raw_events"])


def raw_events_deps(deployments) -> list[AssetDep]:
    """Dependencies of a weekly or monthly asset on every deployment's daily raw events
    (days before a deployment's start_date simply do not exist)."""
    return [
        AssetDep(
            raw_events_key_of(d.name),
            partition_mapping=TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True),
        )
        for d in deployments
    ]


def _description(deployment: Deployment) -> str:
    sources = ", ".join(deployment.sources)
    return (
        f"Canonical events of deployment **{deployment.name}**, one Parquet object per UTC day "
        f"(`raw_events/deployment={deployment.name}/date=YYYY-MM-DD/events.parquet`), extracted from: {sources}. "
        "Columns: event_id, deployment, occurred_at, user_id (md5 of the Keycloak id), action "
        f"({', '.join(ACTIONS)}), project_id, project_visibility, source. Records failing validation are "
        "kept aside under `rejected/` and counted in the metadata. "
        "Cannot see: anything a source cannot see (see the metric catalog), e.g. local `renku session start`; "
        "days whose upstream events had already expired are marked incomplete by the source_coverage check."
    )


def _day_metadata(storage: Storage, extract: DayExtract) -> dict:
    """Exact figures of one day (one partition)."""
    meta = {
        "dagster/row_count": extract.row_count,
        "dagster/uri": MetadataValue.path(extract.events_uri),
        "users": extract.users,
        "rejected_records": extract.rejected_count,
        "repeated_from_earlier_days": extract.repeated_from_earlier_days,
        "complete": extract.complete,
    }
    for action in ACTIONS:
        meta[f"events_{action}"] = extract.by_action.get(action, 0)
    for source, info in extract.sources.items():
        for key, value in info.get("stats", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                meta[f"{source}/{key}"] = value
    if extract.rejected_uri:
        meta["rejected_uri"] = MetadataValue.path(extract.rejected_uri)
    if extract.incomplete:
        meta["coverage_gaps"] = MetadataValue.md("\n".join(f"- {g}" for g in extract.incomplete))
    return meta


def _run_summary(storage: Storage, deployment: Deployment, extracts: list[DayExtract]) -> dict:
    """What is true of the whole run: days covered, totals and a per-day table."""
    table = ["| day | events | users | " + " | ".join(ACTIONS) + " | rejected | complete |", "|" + " --- |" * (len(ACTIONS) + 5)]
    for e in extracts[-31:]:
        counts = " | ".join(str(e.by_action.get(a, 0)) for a in ACTIONS)
        table.append(f"| {e.day} | {e.row_count} | {e.users} | {counts} | {e.rejected_count} | {'yes' if e.complete else 'NO'} |")
    if len(extracts) > 31:
        table.append(f"| ... {len(extracts) - 31} earlier days in this run |")
    summary = {
        "run_days": len(extracts),
        "run_first_day": extracts[0].day.isoformat(),
        "run_last_day": extracts[-1].day.isoformat(),
        "run_events": sum(e.row_count for e in extracts),
        "run_rejected_records": sum(e.rejected_count for e in extracts),
        "run_incomplete_days": sum(1 for e in extracts if not e.complete),
        "summary": MetadataValue.md("\n".join(table)),
    }
    gaps = [f"{e.day}: {note}" for e in extracts for note in e.incomplete]
    if gaps:
        summary["run_coverage_gaps"] = MetadataValue.md("\n".join(f"- {g}" for g in gaps[:50]))
    if summary["run_rejected_records"]:
        summary["run_rejected_prefix"] = MetadataValue.path(storage.uri(f"rejected/deployment={deployment.name}/"))
    return summary


def build_raw_events_asset(deployment: Deployment) -> AssetsDefinition:
    key = raw_events_key_of(deployment.name)
    specs = [
        AssetCheckSpec(name, asset=key, description=text, blocking=blocking)
        for name, (text, blocking) in RAW_EVENT_CHECKS.items()
    ]

    @asset(
        key=key,
        partitions_def=daily_partitions(deployment.start_date),
        backfill_policy=BackfillPolicy.single_run(),
        group_name=GROUP,
        owners=OWNERS,
        kinds={"python", "parquet"},
        description=_description(deployment),
        metadata={"deployment": deployment.name, "sources": ", ".join(deployment.sources)},
        check_specs=specs,
        tags={"deployment": deployment.name},
        pool=f"extract_{deployment.name}",  # one extract per deployment at a time (dagster.yaml)
    )
    def raw_events(context: AssetExecutionContext, metrics_storage: MetricsStorageResource) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        window = context.partition_time_window
        day = window.start.date()
        extracts = []
        sources = build_sources(deployment, os.environ)  # one per run: caches span the days
        recent_ids = RecentEventIds(storage, deployment.name)
        while day < window.end.date():
            extract = extract_day(
                storage, deployment, day, env=os.environ, sources_by_type=sources, recent_ids=recent_ids
            )
            context.log.info(
                "%s %s: %d events, %d rejected%s", deployment.name, day, extract.row_count, extract.rejected_count,
                "" if extract.complete else f", INCOMPLETE ({'; '.join(extract.incomplete)})",
            )
            extracts.append(extract)
            day += dt.timedelta(days=1)
        keys = [raw_events_key(deployment.name, e.day) for e in extracts]
        violations = count_violations(storage, keys)
        results = [
            AssetCheckResult(
                check_name=name,
                passed=violations[name] == 0,
                metadata={"violating_rows": violations[name]},
            )
            for name in _CHECK_SQL
        ]
        gaps = [f"{e.day}: {note}" for e in extracts for note in e.incomplete]
        results.append(
            AssetCheckResult(
                check_name="source_coverage",
                passed=not gaps,
                severity=AssetCheckSeverity.WARN,
                metadata={
                    "incomplete_days": len({e.day for e in extracts if not e.complete}),
                    "gaps": MetadataValue.md("\n".join(f"- {g}" for g in gaps[:50]) or "none"),
                },
            )
        )
        metadata = partition_metadata(
            context,
            key,
            {e.day.isoformat(): _day_metadata(storage, e) for e in extracts},
            _run_summary(storage, deployment, extracts),
        )
        return MaterializeResult(metadata=metadata, check_results=results)

    return raw_events


def build_raw_events_freshness_checks(keys: list[AssetKey]):
    """Warn when a deployment's latest extract is older than 36 hours."""
    return build_last_update_freshness_checks(assets=keys, lower_bound_delta=FRESHNESS)


REEXTRACT_DAYS = 7


def days_to_extract(storage: Storage, deployment: Deployment, today: dt.date, lookback: int = REEXTRACT_DAYS) -> list[dt.date]:
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
        key = manifest_key(deployment.name, day)
        if not storage.exists(key):
            wanted.append(day)
            continue
        sources = storage.read_json(key).get("sources", {})
        if any(not info.get("complete", True) for info in sources.values()):
            wanted.append(day)
    return wanted


def build_daily_extract_schedule(deployment: Deployment, asset_def: AssetsDefinition):
    """Every day at 01:30 UTC: extract the previous UTC day of one deployment, and retry
    the days of the past week that are missing or were incomplete."""
    partitions = daily_partitions(deployment.start_date)
    job = define_asset_job(
        name=f"{deployment.name}_daily_extract",
        # The asset with its own checks; freshness checks are left to their sensor.
        selection=AssetSelection.assets(asset_def).without_checks() | AssetSelection.checks(asset_def),
        partitions_def=partitions,
        description=f"Extract UTC days of deployment {deployment.name}.",
    )

    @schedule(
        name=f"{deployment.name}_daily_extract_schedule",
        job=job,
        cron_schedule="30 1 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            "Extracts yesterday (UTC), and re-extracts any of the previous 7 days that is missing "
            "or whose sources could not read their whole window."
        ),
    )
    def daily_extract(context: ScheduleEvaluationContext, metrics_storage: MetricsStorageResource):
        when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        today = when.astimezone(dt.timezone.utc).date()
        storage = metrics_storage.get_storage()
        for day in days_to_extract(storage, deployment, today):
            key = day.isoformat()
            yield RunRequest(run_key=f"{key}@{today.isoformat()}", partition_key=key)

    return job, daily_extract
