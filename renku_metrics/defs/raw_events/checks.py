"""Checks on each deployment's raw events: blocking data checks and freshness."""

import datetime as dt

import duckdb
from dagster import AssetKey, build_last_update_freshness_checks

from renku_metrics.core.events import USER_KEY_PATTERN
from renku_metrics.core.layout import day_of_key
from renku_metrics.core.storage import Storage

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
        "SELECT count(*) FROM read_parquet($path) WHERE user_id IS NULL OR NOT regexp_full_match(user_id, $user_key)"
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


BLOCKING_CHECKS = tuple(_CHECK_SQL)


def count_violations(storage: Storage, keys: list[str]) -> dict[str, int]:
    """Rows breaking each blocking raw-event check, summed over the given day objects."""
    totals = {name: 0 for name in _CHECK_SQL}
    if not keys:
        return totals
    con = duckdb.connect()
    try:
        with storage.local_paths(keys) as paths:
            for key, path in zip(keys, paths, strict=False):
                day = day_of_key(key).isoformat()
                for name, sql in _CHECK_SQL.items():
                    params = {"path": path}
                    if "$day" in sql:
                        params["day"] = day
                    if "$user_key" in sql:
                        params["user_key"] = f"({USER_KEY_PATTERN})"
                    if "$personal" in sql:
                        params["personal"] = _PERSONAL
                    totals[name] += int(con.execute(sql, params).fetchone()[0])
    finally:
        con.close()
    return totals


def build_raw_events_freshness_checks(keys: list[AssetKey]):
    """Warn when a deployment's latest extract is older than 36 hours."""
    return build_last_update_freshness_checks(assets=keys, lower_bound_delta=FRESHNESS)
