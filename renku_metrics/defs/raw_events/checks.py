"""Checks on each deployment's raw events: blocking data checks and freshness."""

import datetime as dt

from dagster import AssetKey, build_last_update_freshness_checks

from renku_metrics.core.raw_checks import BLOCKING_CHECKS, count_violations

__all__ = ["BLOCKING_CHECKS", "FRESHNESS", "RAW_EVENT_CHECKS", "build_raw_events_freshness_checks", "count_violations"]

FRESHNESS = dt.timedelta(hours=36)

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


def build_raw_events_freshness_checks(keys: list[AssetKey]):
    """Warn when a deployment's latest extract is older than 36 hours."""
    return build_last_update_freshness_checks(assets=keys, lower_bound_delta=FRESHNESS)
