"""Per-deployment raw event extracts: one daily-partitioned asset per deployment.

Key ``["raw_events", <deployment>]`` (shown as ``raw_events/<deployment>``). Each
UTC day is its own Parquet object; rerunning a day replaces it. A single-run
backfill policy makes a year's backfill one run that loops over the days; each
day's partition still gets its own figures (``own_metadata``), which are also in
the day's manifest.
"""

import datetime as dt
import os

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from renku_metrics.core.config import Deployment
from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import ACTIONS
from renku_metrics.core.extract import DayExtract, RecentEventIds, build_sources, extract_day
from renku_metrics.core.storage import Storage
from renku_metrics.defs.keys import OWNERS, raw_events_asset_key
from renku_metrics.defs.metadata import own_metadata
from renku_metrics.defs.partitions import daily_partitions
from renku_metrics.defs.raw_events.checks import BLOCKING_CHECKS, RAW_EVENT_CHECKS
from renku_metrics.defs.resources import MetricsStorageResource

GROUP = "raw_events"


def _description(deployment: Deployment) -> str:
    sources = ", ".join(deployment.sources)
    return (
        f"Canonical events of deployment {deployment.name}, one Parquet object per UTC day "
        f"(`raw_events/deployment={deployment.name}/date=YYYY-MM-DD/events.parquet`), extracted from: {sources}. "
        "Columns: event_id, deployment, occurred_at, user_id (md5 of the Keycloak id), action "
        f"({', '.join(ACTIONS)}), project_id, project_visibility, source. Records failing validation are "
        "kept aside under `rejected/` and counted in the metadata. A day whose rows fail a blocking check is "
        "withheld: not published, left out of every aggregate (its periods say so), its rows kept under `rejected/`. "
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
        # What the day cost the upstream (requests, retries included; seconds).
        for key in ("requests", "seconds"):
            if key in info:
                meta[f"{source}/{key}"] = info[key]
        for key, value in info.get("stats", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                meta[f"{source}/{key}"] = value
    if extract.rejected_uri:
        meta["rejected_uri"] = MetadataValue.path(extract.rejected_uri)
    if extract.dedup_unchecked_days:
        meta["dedup_unchecked_days"] = MetadataValue.md(
            "Damaged neighbouring days, not checked for repeated records (re-extract them):\n"
            + "\n".join(f"- {day}: {problem}" for day, problem in extract.dedup_unchecked_days.items())
        )
    if extract.incomplete:
        meta["coverage_gaps"] = MetadataValue.md("\n".join(f"- {g}" for g in extract.incomplete))
    return meta


def build_raw_events_asset(deployment: Deployment) -> AssetsDefinition:
    key = raw_events_asset_key(deployment.name)
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
        storage.check()  # bucket, credentials, endpoint: fail before any upstream is read
        window = context.partition_time_window
        day = window.start.date()
        extracts = []
        try:
            sources = build_sources(deployment, os.environ)  # one per run: caches span the days
        except ConfigError as exc:  # would fail the same way on every retry (see the daily job's retry policy)
            raise Failure(description=str(exc), allow_retries=False) from exc
        recent_ids = RecentEventIds(storage, deployment.name)
        while day < window.end.date():
            extract = extract_day(
                storage, deployment, day, env=os.environ, sources_by_type=sources, recent_ids=recent_ids
            )
            context.log.info(
                "%s %s: %d events, %d rejected%s",
                deployment.name,
                day,
                extract.row_count,
                extract.rejected_count,
                "" if extract.complete else f", INCOMPLETE ({'; '.join(extract.incomplete)})",
            )
            extracts.append(extract)
            day += dt.timedelta(days=1)
        # Counted on each day's rows before it was published; a failing day was withheld.
        violations = {name: sum(e.checks.get(name, 0) for e in extracts) for name in BLOCKING_CHECKS}
        results = [
            AssetCheckResult(
                check_name=name,
                passed=violations[name] == 0,
                metadata={"violating_rows": violations[name]},
            )
            for name in BLOCKING_CHECKS
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
        own_metadata(context, key, {e.day.isoformat(): _day_metadata(storage, e) for e in extracts})
        return MaterializeResult(check_results=results)

    return raw_events
