"""Checks on each deployment's raw events: blocking data checks and freshness."""

from dagster import AssetKey

from renku_metrics.core.raw_checks import BLOCKING_CHECKS, count_violations
from renku_metrics.defs.freshness import DAILY_DEADLINE, FreshnessRule
from renku_metrics.defs.keys import raw_events_asset_key

__all__ = ["BLOCKING_CHECKS", "RAW_EVENT_CHECKS", "count_violations", "raw_events_freshness_rules"]

# The blocking checks (SQL in renku_metrics.core.raw_checks) run on each day's rows
# before the day is published: a failing day is withheld from storage, and so
# from the aggregates of any later run; in the same run they stop the aggregates.
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


def raw_events_freshness_rules(deployments) -> dict[AssetKey, FreshnessRule]:
    """Warn when a deployment's yesterday (UTC) is not extracted by 08:00 UTC, however
    recently an older day was backfilled."""
    return {raw_events_asset_key(d.name): FreshnessRule("day", d.start_date, DAILY_DEADLINE) for d in deployments}
