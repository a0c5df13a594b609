"""The blocking checks on a day's raw events, run before the day is published.

Each check counts the rows of one day that break it. ``extract_day`` runs them
on the validated rows in memory, before anything is written: a day with any
violation is withheld (not published under ``raw_events/``, its manifest says
so, and the aggregates leave it out as an incomplete day). The same SQL can
count violations in stored day files (``count_violations``). DuckDB's regular
expressions (RE2) run in linear time. Plain Python, no Dagster.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from renku_metrics.core.events import USER_KEY_PATTERN
from renku_metrics.core.layout import day_of_key
from renku_metrics.core.storage import Storage

_PERSONAL = r"[^@\s]+@[^@\s]+\.[^@\s]+|^\d{1,3}(\.\d{1,3}){3}$|^[0-9a-fA-F]*:[0-9a-fA-F:]*:[0-9a-fA-F:]*$"
_TEXT_COLUMNS = ("event_id", "deployment", "user_id", "action", "project_id", "project_visibility", "source")

# Each query counts the violating rows of one day's rows (relation {rows}) for day $day.
_CHECK_SQL = {
    "user_ids_present": "SELECT count(*) FROM {rows} WHERE user_id IS NULL OR NOT regexp_full_match(user_id, $user_key)",
    "timestamps_within_day": (
        "SELECT count(*) FROM {rows} "
        "WHERE occurred_at < CAST($day AS DATE)::TIMESTAMP AT TIME ZONE 'UTC' "
        "OR occurred_at >= (CAST($day AS DATE) + 1)::TIMESTAMP AT TIME ZONE 'UTC'"
    ),
    "unique_event_ids": "SELECT count(*) FROM (SELECT event_id FROM {rows} GROUP BY event_id HAVING count(*) > 1)",
    "no_personal_data": "SELECT count(*) FROM {rows} WHERE "
    + " OR ".join(f"regexp_matches(coalesce({col}, ''), $personal)" for col in _TEXT_COLUMNS),
}

BLOCKING_CHECKS = tuple(_CHECK_SQL)


def _count(con: duckdb.DuckDBPyConnection, rows: str, day: str, path: str | None = None) -> dict[str, int]:
    out = {}
    for name, sql in _CHECK_SQL.items():
        params: dict[str, str] = {}
        if path is not None:
            params["path"] = path
        if "$day" in sql:
            params["day"] = day
        if "$user_key" in sql:
            params["user_key"] = f"({USER_KEY_PATTERN})"
        if "$personal" in sql:
            params["personal"] = _PERSONAL
        out[name] = int(con.execute(sql.format(rows=rows), params).fetchone()[0])
    return out


def table_violations(table: pa.Table, day: str) -> dict[str, int]:
    """Rows of one day's events (an Arrow table with EVENT_SCHEMA) breaking each blocking check."""
    con = duckdb.connect()
    try:
        con.register("day_rows", table)
        return _count(con, "day_rows", day)
    finally:
        con.close()


def count_violations(storage: Storage, keys: list[str]) -> dict[str, int]:
    """Rows breaking each blocking check, summed over stored day objects."""
    totals = dict.fromkeys(_CHECK_SQL, 0)
    if not keys:
        return totals
    con = duckdb.connect()
    try:
        with storage.local_paths(keys) as paths:
            for key, path in zip(keys, paths, strict=False):
                counts = _count(con, "read_parquet($path)", day_of_key(key).isoformat(), path)
                for name, n in counts.items():
                    totals[name] += n
    finally:
        con.close()
    return totals
