"""Weekly and monthly aggregation in DuckDB, straight over the Parquet files.

A period (ISO week from Monday 00:00 UTC, or calendar month in UTC) is computed
from exactly the daily raw-event objects it covers, so a run's cost depends on
the period, not on the length of history. No per-row Python, no Dagster.

Definitions (also in docs/design.md):

* active users of a deployment in a period: distinct user ids with at least one
  event of any action (login, commit, dataset creation, workflow run, session
  start) in the period, after the deployment's ``excluded_users``;
* a metric's users: distinct user ids with at least one event of any of the
  metric's catalog actions in the period;
* ``pct`` = 100 * users / active users, null when nobody was active;
* the ``all`` rollup counts distinct user ids across deployments: the same
  Keycloak-derived id on two deployments is one person; GitLab-only ids
  (``gitlab:<n>``) are per GitLab instance and so never merged across deployments;
* a row is ``complete`` when the period has ended, the deployment's history
  covers the whole period, every day's partition is extracted and every source
  read its whole window. Incomplete rows must not be presented as final.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb
import pandas as pd

from renku_metrics.core.activity import (
    DEFAULT_DUCKDB_MEMORY_LIMIT,
    DUCKDB_MEMORY_ENV,
    USER_ACTION_DAYS_SQL,
    USER_CORE_DAYS_SQL,
    USER_DAYS_SQL,
    USER_FIRST_DAY_SQL,
    day_versions,
    list_day_versions,
    store_user_week,
    week_signature,
)
from renku_metrics.core.catalog import Catalog
from renku_metrics.core.config import Deployment
from renku_metrics.core.coverage import DeploymentCoverage, coverage_for, coverage_from_days, day_status
from renku_metrics.core.events import ACTIONS, ALL_DEPLOYMENTS, ROLLUP_USER_SQL
from renku_metrics.core.integrity import DamagedFileError, damaged_local_files
from renku_metrics.core.layout import day_of_key, is_manifest_key, raw_events_key, raw_events_prefix
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.periods import Period, days_between, period_bounds
from renku_metrics.core.storage import Storage

# One scan over the periods' files reduces the events to one row per (deployment,
# user, period) with a bitmask of the actions done: every count below is then a
# count of rows, and the ``all`` rollup and each metric reuse the reduced rows.
_REDUCE_SQL = """
CREATE TEMP TABLE reduced AS
SELECT e.deployment, e.user_id, CAST(date_trunc($unit, e.occurred_at) AS DATE) AS p, bit_or({action_bit}) AS mask
       {user_week}
FROM events e
WHERE e.occurred_at >= $lo AND e.occurred_at < $hi
GROUP BY ALL
"""

_COUNT_SQL = """
WITH kept AS (
    SELECT r.deployment, r.user_id, r.p, r.mask
    FROM reduced r
    WHERE r.p IN (SELECT period_start FROM targets)
      AND NOT EXISTS (
          SELECT 1 FROM excluded x WHERE x.deployment = r.deployment AND x.user_id = r.user_id)
),
with_all AS (
    SELECT deployment, user_id, p, mask FROM kept
    UNION ALL
    -- GitLab-only ids are per GitLab instance: keep them apart across deployments.
    SELECT $all_name AS deployment, {rollup_user} AS user_id, p, bit_or(mask) AS mask
    FROM kept GROUP BY ALL
)
SELECT p, deployment, count(*) AS active_users{metric_counts}
FROM with_all GROUP BY p, deployment
""".replace("{rollup_user}", ROLLUP_USER_SQL)

_EXCLUDED_SQL = """
SELECT r.p, r.deployment, count(*) AS excluded_users
FROM reduced r
WHERE r.p IN (SELECT period_start FROM targets)
  AND EXISTS (SELECT 1 FROM excluded x WHERE x.deployment = r.deployment AND x.user_id = r.user_id)
GROUP BY ALL
"""


@dataclass
class PeriodAggregate:
    core_actions: pd.DataFrame
    active_users: pd.DataFrame
    excluded_users: dict[str, int]
    coverage: dict[str, DeploymentCoverage]


def aggregate_period(
    storage: Storage,
    deployments: list[Deployment] | tuple[Deployment, ...],
    catalog: Catalog,
    period: Period,
    start: dt.date,
    now: dt.datetime,
) -> PeriodAggregate:
    """Core-action users and active users of every deployment (and ``all``) in one period."""
    return aggregate_periods(storage, deployments, catalog, period, [start], now)[start]


def aggregate_periods(
    storage: Storage,
    deployments: list[Deployment] | tuple[Deployment, ...],
    catalog: Catalog,
    period: Period,
    starts: Iterable[dt.date],
    now: dt.datetime,
    memory_limit: str | None = None,
    temp_directory: str | None = None,
    periods_per_scan: int = 13,
) -> dict[dt.date, PeriodAggregate]:
    """``aggregate_period`` of many periods, from one scan of their daily files.

    Returns {period start: the same PeriodAggregate ``aggregate_period`` gives for it}.
    The files of all periods are read once and reduced to one row per
    (deployment, user, period) with a bitmask of the user's actions; each
    period's denominator (active users) is computed once, next to its metrics.
    DuckDB works within ``memory_limit`` (default $RENKU_METRICS_DUCKDB_MEMORY_LIMIT,
    else DEFAULT_DUCKDB_MEMORY_LIMIT) and spills to ``temp_directory`` (default: a
    fresh temporary directory) beyond it. Periods are scanned ``periods_per_scan``
    consecutive periods at a time (each file still once), so memory follows the
    users of a quarter, not of all history. This is the full-history recompute
    (after an ``excluded_users`` change or a new catalog metric): see
    ``python -m renku_metrics.core.recompute``.
    """
    starts = sorted(set(starts))
    if not starts:
        return {}
    bounds = {s: period_bounds(period, s) for s in starts}
    today = now.astimezone(dt.timezone.utc).date()
    measured = {s: [d for d in deployments if d.start_date < bounds[s][1]] for s in starts}
    versions = _listed_versions(storage, deployments, bounds, measured) if period == "week" else None
    coverage = _coverages(storage, deployments, bounds, measured, today)
    metrics = catalog.computed()
    actions = list(dict.fromkeys([*ACTIONS, *(a for _, a in catalog.metric_actions())]))
    if len(actions) > 63:
        raise ValueError(f"catalog {catalog.path}: more than 63 distinct actions")
    bit = {a: 1 << i for i, a in enumerate(actions)}
    metric_masks = [sum(bit[a] for a in m.actions) for m in metrics]

    action_bit = (
        "CASE e.action "
        + " ".join(f"WHEN '{a}' THEN CAST({b} AS UBIGINT)" for a, b in bit.items())
        + " ELSE CAST(0 AS UBIGINT) END"
    )
    metric_counts = "".join(
        f", count(*) FILTER (WHERE mask & CAST({m} AS UBIGINT) != 0) AS m{i}" for i, m in enumerate(metric_masks)
    )
    excluded = [(d.name, key) for d in deployments for key in d.excluded_user_keys()]
    # Weeks: the scan also yields each user's active days, i.e. the week's user sets of the derived
    # engagement state (core/activity.py), stored as a by-product so that the engagement runs of the
    # week need not read its raw files again. Their signatures come from a listing made before any
    # manifest or file is read: data changed meanwhile makes them stale, never wrongly valid.
    user_week = (
        ", "
        + USER_DAYS_SQL.format(ts="e.occurred_at")
        + " AS days, "
        + USER_FIRST_DAY_SQL.format(ts="e.occurred_at")
        + " AS first_day, "
        + USER_ACTION_DAYS_SQL.format(ts="e.occurred_at", action="e.action")
        + " AS action_days"
        + ", "
        + USER_CORE_DAYS_SQL.format(ts="e.occurred_at", action="e.action")
        + " AS core_days"
        if versions is not None
        else ""
    )
    counts: list[tuple] = []
    excluded_counts: list[tuple] = []
    with contextlib.ExitStack() as stack:
        spill = temp_directory or stack.enter_context(tempfile.TemporaryDirectory(prefix="renku-metrics-duckdb-"))
        con = duckdb.connect(
            config={
                "memory_limit": memory_limit or os.environ.get(DUCKDB_MEMORY_ENV) or DEFAULT_DUCKDB_MEMORY_LIMIT,
                "temp_directory": spill,
                "preserve_insertion_order": False,
            }
        )
        stack.callback(con.close)
        # date_trunc of a TIMESTAMPTZ follows the session time zone: periods are UTC.
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        con.register("excluded", pd.DataFrame(excluded, columns=["deployment", "user_id"], dtype="object"))
        # Consecutive groups of periods, each with its own files: every file is still read once,
        # and the reduced rows of one group (not of all history) are in memory at a time.
        for chunk in (starts[i : i + periods_per_scan] for i in range(0, len(starts), periods_per_scan)):
            keys = sorted({k for s in chunk for c in coverage[s].values() for k in c.event_keys})
            with storage.local_paths(keys) as paths:
                con.execute("DROP TABLE IF EXISTS reduced")
                try:
                    if paths:
                        con.read_parquet(paths).create_view("events", replace=True)
                    else:
                        con.execute(
                            "CREATE OR REPLACE VIEW events AS SELECT CAST(NULL AS VARCHAR) AS deployment, "
                            "CAST(NULL AS VARCHAR) AS user_id, CAST(NULL AS VARCHAR) AS action, "
                            "CAST(NULL AS TIMESTAMPTZ) AS occurred_at WHERE false"
                        )
                    con.execute(
                        _REDUCE_SQL.replace("{action_bit}", action_bit).replace("{user_week}", user_week),
                        {
                            "unit": period,
                            "lo": dt.datetime.combine(chunk[0], dt.time(), dt.timezone.utc),
                            "hi": dt.datetime.combine(max(bounds[s][1] for s in chunk), dt.time(), dt.timezone.utc),
                        },
                    )
                except duckdb.Error:
                    # Name the damaged file(s) (deployment, day, URI, what is wrong) in one line.
                    damaged = damaged_local_files(storage, keys, paths)
                    if damaged:
                        more = f" (and {len(damaged) - 1} more damaged file(s))" if len(damaged) > 1 else ""
                        raise DamagedFileError(
                            damaged[0].deployment, damaged[0].day, damaged[0].uri, damaged[0].problem + more
                        ) from None
                    raise
            con.register("targets", pd.DataFrame({"period_start": chunk}))
            counts += con.execute(
                _COUNT_SQL.replace("{metric_counts}", metric_counts), {"all_name": ALL_DEPLOYMENTS}
            ).fetchall()
            excluded_counts += con.execute(_EXCLUDED_SQL).fetchall()
            if versions is not None:
                _store_user_weeks(con, storage, chunk, measured, coverage, versions)

    return _frames(
        period,
        bounds,
        now,
        today,
        {s: [d.name for d in measured[s]] for s in starts},
        metrics,
        counts,
        excluded_counts,
        coverage,
    )


def _listed_versions(
    storage: Storage,
    deployments: Sequence[Deployment],
    bounds: dict[dt.date, tuple[dt.date, dt.date]],
    measured: dict[dt.date, list[Deployment]],
) -> dict[str, dict[dt.date, str]]:
    """{deployment: {day: version}} of the periods' stored days (one listing per month, or per
    deployment when the periods span more than a quarter)."""
    out = {}
    for d in deployments:
        days = {day for s, (start, end) in bounds.items() if d in measured[s] for day in days_between(start, end)}
        if not days:
            continue
        if len({day.strftime("%Y-%m") for day in days}) > 3:
            out[d.name] = {
                day: v
                for day, v in day_versions(storage.list_versions(raw_events_prefix(d.name))).items()
                if day in days
            }
        else:
            out[d.name] = list_day_versions(storage, d.name, days)
    return out


def _store_user_weeks(
    con: duckdb.DuckDBPyConnection,
    storage: Storage,
    weeks: list[dt.date],
    measured: dict[dt.date, list[Deployment]],
    coverage: dict[dt.date, dict[str, DeploymentCoverage]],
    versions: dict[str, dict[dt.date, str]],
) -> None:
    """Store the user weeks of the scanned weeks (from the ``reduced`` rows) as the derived state."""
    rows = con.sql(
        "SELECT deployment, p, user_id, days, first_day, action_days, core_days FROM reduced ORDER BY deployment, p, user_id"
    ).to_arrow_table()
    groups: dict[tuple[str, dt.date], list[int]] = {}
    for i, key in enumerate(zip(rows.column("deployment").to_pylist(), rows.column("p").to_pylist(), strict=True)):
        groups.setdefault(key, [i, i])[1] = i + 1
    for week in weeks:
        for d in measured[week]:
            with_events = set(coverage[week][d.name].event_keys)
            days = {
                day: (v, raw_events_key(d.name, day) in with_events)
                for day, v in versions.get(d.name, {}).items()
                if week <= day < week + dt.timedelta(days=7)
            }
            signature = week_signature(d, week, days)
            if signature is None:
                continue
            lo, hi = groups.get((d.name, week), (0, 0))
            store_user_week(storage, d.name, week, rows.slice(lo, hi - lo), signature)


def _coverages(
    storage: Storage,
    deployments: Sequence[Deployment],
    bounds: dict[dt.date, tuple[dt.date, dt.date]],
    measured: dict[dt.date, list[Deployment]],
    today: dt.date,
) -> dict[dt.date, dict[str, DeploymentCoverage]]:
    """Coverage of every period and measured deployment; each manifest is read once."""
    if len(bounds) == 1:
        ((s, (start, end)),) = bounds.items()
        return {s: {d.name: coverage_for(storage, d, start, end, today) for d in measured[s]}}
    wanted = {day for start, end in bounds.values() for day in days_between(start, min(end, today))}
    out: dict[dt.date, dict[str, DeploymentCoverage]] = {s: {} for s in bounds}
    for d in deployments:
        if not any(d in measured[s] for s in bounds):
            continue
        days = {}
        for key in storage.list_keys(raw_events_prefix(d.name)):
            if is_manifest_key(key):
                day = day_of_key(key)
                if day in wanted and day >= d.start_date:
                    days[day] = day_status(Manifest.read_key(storage, key))
        for s, (start, end) in bounds.items():
            if d in measured[s]:
                out[s][d.name] = coverage_from_days(d, days, start, end, today)
    return out


def _frames(
    period: Period,
    bounds: dict[dt.date, tuple[dt.date, dt.date]],
    now: dt.datetime,
    today: dt.date,
    measured: dict[dt.date, list[str]],
    metrics: list,
    counts: list[tuple],
    excluded_counts: list[tuple],
    coverage: dict[dt.date, dict[str, DeploymentCoverage]],
) -> dict[dt.date, PeriodAggregate]:
    """The core_actions and active_users frames of every period, built in one pass, then split by period."""
    got = {(p, name): (active, users) for p, name, active, *users in counts}
    excluded_got = {(p, name): int(n) for p, name, n in excluded_counts}
    computed_at = pd.Timestamp(now).tz_convert("UTC")
    keys, excluded_totals, complete, note, expected, extracted = [], {}, {}, {}, {}, {}
    for s, (_, end) in bounds.items():
        ended = today >= end
        cov = coverage[s]
        totals = {n: excluded_got.get((s, n), 0) for n in cov}
        totals[ALL_DEPLOYMENTS] = sum(totals.values())
        excluded_totals[s] = totals
        for name in [*measured[s], ALL_DEPLOYMENTS]:
            keys.append((s, name))
            if name == ALL_DEPLOYMENTS:
                complete[s, name] = bool(cov) and all(c.is_complete(ended) for c in cov.values())
                note[s, name] = "; ".join(f"{n}: {c.note(ended)}" for n, c in cov.items() if c.note(ended))
                expected[s, name] = sum(c.days_expected for c in cov.values())
                extracted[s, name] = sum(c.days_extracted for c in cov.values())
            else:
                complete[s, name] = cov[name].is_complete(ended)
                note[s, name] = cov[name].note(ended)
                expected[s, name] = cov[name].days_expected
                extracted[s, name] = cov[name].days_extracted

    def meta(pairs: list[tuple]) -> dict:
        return {
            "period": period,
            "period_start": pd.Series(list(pd.to_datetime([s for s, _ in pairs]).date), dtype="object"),
            "period_end": pd.Series(list(pd.to_datetime([bounds[s][1] for s, _ in pairs]).date), dtype="object"),
        }

    core_pairs = [(s, name) for s, name in keys for _ in metrics]
    users = [int(got[k][1][i]) if k in got else 0 for k in keys for i in range(len(metrics))]
    core_active = [int(got[k][0]) if k in got else 0 for k in keys for _ in metrics]
    core = pd.DataFrame(
        {
            "deployment": pd.Series([name for _, name in core_pairs], dtype="object"),
            **meta(core_pairs),
            "metric": pd.Series([m.id for _ in keys for m in metrics], dtype="object"),
            "title": pd.Series([m.title for _ in keys for m in metrics], dtype="object"),
            "status": pd.Series([m.status for _ in keys for m in metrics], dtype="object"),
            "users": pd.Series(users, dtype="int64"),
            "active_users": pd.Series(core_active, dtype="int64"),
        }
    )
    core["pct"] = (100.0 * core["users"] / core["active_users"]).where(core["active_users"] > 0).round(2)
    core["pct"] = core["pct"].astype("float64")
    core["complete"] = pd.Series([complete[k] for k in core_pairs], dtype=bool)
    core["coverage_note"] = pd.Series([note[k] for k in core_pairs], dtype="object")
    core["computed_at"] = computed_at

    active_users = pd.DataFrame(
        {
            "deployment": pd.Series([name for _, name in keys], dtype="object"),
            **meta(keys),
            "active_users": pd.Series([int(got[k][0]) if k in got else 0 for k in keys], dtype="int64"),
            "excluded_users": pd.Series([excluded_totals[s][name] for s, name in keys], dtype="int64"),
            "days_expected": pd.Series([expected[k] for k in keys], dtype="int64"),
            "days_extracted": pd.Series([extracted[k] for k in keys], dtype="int64"),
            "complete": pd.Series([complete[k] for k in keys], dtype=bool),
            "coverage_note": pd.Series([note[k] for k in keys], dtype="object"),
        }
    )
    active_users["computed_at"] = computed_at

    def split(frame: pd.DataFrame, per_period: int) -> dict[dt.date, pd.DataFrame]:
        out, offset = {}, 0
        for s in bounds:
            n = per_period * (len(measured[s]) + 1)
            out[s] = frame.iloc[offset : offset + n].reset_index(drop=True)
            offset += n
        return out

    cores, actives = split(core, len(metrics)), split(active_users, 1)
    return {
        s: PeriodAggregate(
            core_actions=cores[s], active_users=actives[s], excluded_users=excluded_totals[s], coverage=coverage[s]
        )
        for s in bounds
    }
