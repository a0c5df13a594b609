"""Engagement views beyond counts: lifecycle, stickiness and new-user retention.

Plain functions over the stored daily Parquet files, computed in DuckDB. No
Dagster in here. Precise definitions, edge semantics and what the views cannot
see are in docs/engagement.md; in short, per deployment (and the ``all`` rollup,
with the same identity rule as ``renku_metrics.core.aggregate``):

* **active** in a span: at least one event of any action in it, after the
  deployment's ``excluded_users`` (exactly as in ``aggregate.py``);
* **first seen**: the UTC day of a user's first event in the deployment's
  *extracted history*, i.e. the stored days from its ``start_date`` on. Activity
  before ``start_date``, and on days that were not extracted or whose sources
  could not read everything, is invisible;
* ``lifecycle``: each period's active users split into new (first seen in the
  period), returning (also active in the previous period) and resurrected
  (not active in the previous period, first seen before it), plus dormant
  (active in the previous period, not in this one);
* ``stickiness``: per calendar month, the mean weekly active users over the ISO
  weeks lying entirely inside the month, divided by the month's active users
  (``wau_mau``); also the mean daily active users over the month's days divided
  by the month's active users (``dau_mau``);
* ``retention``: of the users first seen in ISO week W (the cohort), how many
  were active in each of the weeks W+1 .. W+8.

Cost
----
No view reads the raw history. They read the derived activity state of
``renku_metrics.core.activity`` (kept current at every call, rebuilt from raw
events where missing or stale): per deployment a day index, each user's first
seen day, and the ISO-week user sets ("user weeks", with each user's active
days as a bitmask) of the weeks involved. A weekly run of ``lifecycle`` reads
the user weeks of the period and the previous one plus first seen; ``retention``
first seen plus the 8 later user weeks; ``stickiness`` the user weeks overlapping
the month. Only the raw files of days not yet folded into the state are read
(the days just extracted), and none when the weekly aggregate of the run
already stored their week. The day index learns of changed days from the
raw-change log the extract writes, not from a listing of every day. So a run's
cost and the bytes it downloads from S3 do not grow with the length of history,
apart from the day index (metadata, about 100 bytes per stored day) and first
seen (about 40 bytes per user ever seen). The first run after deleting
``state/`` lists and reads the whole history once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import duckdb
import pandas as pd
import pyarrow as pa

from renku_metrics.core.activity import DeploymentActivity, duckdb_memory_limit
from renku_metrics.core.config import Deployment
from renku_metrics.core.coverage import HISTORY_WARMUP_WEEKS, DeploymentDays, HistoryStatus
from renku_metrics.core.events import ALL_DEPLOYMENTS, ROLLUP_USER_SQL
from renku_metrics.core.periods import (
    Period,
    days_between,
    full_weeks_in_month,
    period_bounds,
    previous_period_start,
    week_start,
)
from renku_metrics.core.storage import Storage

# How much gap-free extracted history must precede a period (or cohort week) for
# its "new" users to be trusted as first-ever (see HistoryStatus).
# Retention is followed for this many weeks after the cohort week.
RETENTION_WEEKS = 8

LIFECYCLE_COUNTS = (
    "active_users",
    "new_users",
    "returning_users",
    "resurrected_users",
    "dormant_users",
    "previous_active_users",
)


def _as_list(starts: dt.date | Iterable[dt.date]) -> list[dt.date]:
    if isinstance(starts, dt.date):
        return [starts]
    out = sorted(set(starts))
    if not out:
        raise ValueError("no period start given")
    return out


def _today(now: dt.datetime) -> dt.date:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.timezone.utc).date()


# --------------------------------------------------------------------------- derived state


def _states(
    storage: Storage, deployments: Sequence[Deployment], con: duckdb.DuckDBPyConnection
) -> dict[str, DeploymentActivity]:
    return {d.name: DeploymentActivity.load(storage, d, con) for d in deployments}


def _day_index(states: dict[str, DeploymentActivity], until: dt.date) -> dict[str, DeploymentDays]:
    return {name: state.days(until) for name, state in states.items()}


def _combine(parts: dict[str, tuple[bool, str]]) -> tuple[bool, str]:
    """(complete, note) of the ``all`` rollup from its deployments' (complete, note)."""
    complete = bool(parts) and all(c for c, _ in parts.values())
    note = "; ".join(f"{name}: {n}" for name, (_, n) in parts.items() if n)
    return complete, note


def _spans(
    states: dict[str, DeploymentActivity], target: dt.date, role: str, start: dt.date, end: dt.date
) -> list[tuple]:
    """(target, role, deployment, week, day mask) rows selecting the days [start, end) from the user weeks."""
    rows = []
    week = week_start(start)
    while week < end:
        mask = sum(1 << i for i in range(7) if start <= week + dt.timedelta(days=i) < end)
        rows.extend((target, role, name, week, mask) for name in states)
        week += dt.timedelta(days=7)
    return rows


# --------------------------------------------------------------------------- DuckDB

# GitLab-only ids are per GitLab instance: kept apart across deployments (as in aggregate.py).
_LOAD_FIRST_SEEN = """
CREATE TEMP VIEW fs AS
WITH kept AS (
    SELECT f.deployment, f.user_id, f.first_day FROM fs_raw f
    WHERE NOT EXISTS (SELECT 1 FROM excluded x WHERE x.deployment = f.deployment AND x.user_id = f.user_id)
)
SELECT deployment, user_id, first_day FROM kept
UNION ALL
SELECT $all_name AS deployment, {rollup_user} AS user_id, min(first_day) AS first_day FROM kept GROUP BY ALL
""".replace("{rollup_user}", ROLLUP_USER_SQL)

_LOAD_USER_WEEKS = """
CREATE TEMP VIEW uw AS
SELECT u.deployment, u.week, u.user_id, u.days FROM uw_raw u
WHERE NOT EXISTS (SELECT 1 FROM excluded x WHERE x.deployment = u.deployment AND x.user_id = u.user_id)
  AND {keep}
"""

# The users (and ``all`` rollup users) active on the masked days of each span, with those days.
_SPAN_ACTIVITY = """
CREATE TEMP VIEW act AS
WITH m AS (
    SELECT s.target, s.role, u.deployment, u.week, u.user_id, u.days & s.mask AS bits
    FROM uw u JOIN spans s ON s.deployment = u.deployment AND s.week = u.week
    WHERE u.days & s.mask != 0
)
SELECT * FROM m
UNION ALL
SELECT target, role, $all_name AS deployment, week, {rollup_user} AS user_id, bit_or(bits) AS bits FROM m GROUP BY ALL
""".replace("{rollup_user}", ROLLUP_USER_SQL)


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"memory_limit": duckdb_memory_limit()})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def _load(
    con: duckdb.DuckDBPyConnection,
    states: dict[str, DeploymentActivity],
    spans: list[tuple],
    first_seen: bool,
    keep: str = "true",
    materialize: bool = False,
    core: bool = False,
) -> None:
    """Tables ``fs`` (first seen, with ``all``) and ``act`` (activity of the spans), excluded users left out.

    With ``core``, ``act`` holds the days with a core action instead of the active days."""
    excluded = [(name, key) for name, st in states.items() for key in st.deployment.excluded_user_keys()]
    con.register("excluded", pd.DataFrame(excluded, columns=["deployment", "user_id"], dtype="object"))
    if first_seen:
        parts = []
        for name, st in states.items():
            table = st.first_seen()
            parts.append(table.append_column("deployment", pa.array([name] * table.num_rows, pa.string())))
        fs_raw = (
            pa.concat_tables(parts)
            if parts
            else pa.table({"user_id": [], "first_day": [], "deployment": []}, schema=_FS_SCHEMA)
        )
        con.register("fs_raw", fs_raw)
        con.execute(_LOAD_FIRST_SEEN.replace("$all_name", f"'{ALL_DEPLOYMENTS}'"))
    weeks: dict[str, set[dt.date]] = {}
    for _, _, name, week, _ in spans:
        weeks.setdefault(name, set()).add(week)
    parts = []
    for name, st in states.items():
        table = st.user_weeks(weeks.get(name, ()), core_days=core)
        parts.append(table.append_column("deployment", pa.array([name] * table.num_rows, pa.string())))
    bits = "core_days" if core else "days"
    uw_raw = (
        pa.concat_tables(parts).select(["deployment", "week", "user_id", bits]).rename_columns(_EMPTY_UW.schema.names)
        if parts
        else _EMPTY_UW
    )
    con.register("uw_raw", uw_raw)
    con.execute(_LOAD_USER_WEEKS.replace("{keep}", keep))
    con.register(
        "spans",
        pd.DataFrame(spans, columns=["target", "role", "deployment", "week", "mask"]).astype(
            {"deployment": "object", "mask": "int64"}
        ),
    )
    sql = _SPAN_ACTIVITY.replace("$all_name", f"'{ALL_DEPLOYMENTS}'")
    # A view is computed inside the one query that reads it; several queries share a table.
    con.execute(sql.replace("CREATE TEMP VIEW", "CREATE TEMP TABLE") if materialize else sql)


_FS_SCHEMA = pa.schema([("user_id", pa.string()), ("first_day", pa.date32()), ("deployment", pa.string())])
_EMPTY_UW = pa.table(
    {"deployment": [], "week": [], "user_id": [], "days": []},
    schema=pa.schema(
        [("deployment", pa.string()), ("week", pa.date32()), ("user_id", pa.string()), ("days", pa.uint8())]
    ),
)


def _measured(deployments: Sequence[Deployment], end: dt.date) -> list[Deployment]:
    """Deployments whose history has begun before ``end`` (the others get no row, as in aggregate.py)."""
    return [d for d in deployments if d.start_date < end]


def _finish(frame: pd.DataFrame, now: dt.datetime, date_columns: Sequence[str]) -> pd.DataFrame:
    for col in date_columns:
        frame[col] = pd.to_datetime(frame[col]).dt.date
    frame["computed_at"] = pd.Timestamp(now).tz_convert("UTC")
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------- lifecycle


_LIFECYCLE_SQL = """
WITH people AS (
    SELECT DISTINCT target, role, deployment, user_id FROM act
),
cur AS (SELECT target AS period_start, deployment, user_id FROM people WHERE role = 'cur'),
prev AS (SELECT target AS period_start, deployment, user_id FROM people WHERE role = 'prev'),
both_periods AS (
    SELECT coalesce(c.period_start, v.period_start) AS period_start,
           coalesce(c.deployment, v.deployment) AS deployment,
           coalesce(c.user_id, v.user_id) AS user_id,
           c.user_id IS NOT NULL AS is_cur,
           v.user_id IS NOT NULL AS is_prev
    FROM cur c FULL OUTER JOIN prev v
      ON c.period_start = v.period_start AND c.deployment = v.deployment AND c.user_id = v.user_id
)
SELECT b.period_start, b.deployment,
       count(*) FILTER (WHERE b.is_cur) AS active_users,
       count(*) FILTER (WHERE b.is_cur AND f.first_day >= b.period_start AND f.first_day < t.period_end) AS new_users,
       count(*) FILTER (WHERE b.is_cur AND b.is_prev) AS returning_users,
       count(*) FILTER (WHERE b.is_cur AND NOT b.is_prev AND f.first_day < b.period_start) AS resurrected_users,
       count(*) FILTER (WHERE b.is_prev AND NOT b.is_cur) AS dormant_users,
       count(*) FILTER (WHERE b.is_prev) AS previous_active_users
FROM both_periods b
JOIN fs f ON f.deployment = b.deployment AND f.user_id = b.user_id
JOIN targets t ON t.period_start = b.period_start
GROUP BY b.period_start, b.deployment
"""


def _history_fields(name: str, history: dict, parts: dict, all_complete: bool, all_note: str) -> dict:
    """history_weeks, history_complete, complete and coverage_note of one row (``all`` combines them)."""
    if name == ALL_DEPLOYMENTS:
        return {
            "history_weeks": min((h.weeks for h in history.values()), default=0),
            "history_complete": bool(history) and all(h.complete for h in history.values()),
            "complete": all_complete,
            "coverage_note": all_note,
        }
    complete, note = parts[name]
    return {
        "history_weeks": history[name].weeks,
        "history_complete": history[name].complete,
        "complete": complete,
        "coverage_note": note,
    }


def lifecycle(
    storage: Storage,
    deployments: Sequence[Deployment],
    period: Period,
    start: dt.date | Iterable[dt.date],
    now: dt.datetime,
    warmup_weeks: int = HISTORY_WARMUP_WEEKS,
) -> pd.DataFrame:
    """Lifecycle of the active users of each deployment (and ``all``) in one or more periods.

    ``start``: the period start (a Monday for weeks, a 1st for months) or several;
    all are computed from one scan of the history. One row per period and
    measured deployment, plus ``all``. Columns: deployment, period, period_start,
    period_end, previous_period_start, active_users, new_users, returning_users,
    resurrected_users, dormant_users, previous_active_users, quick_ratio,
    history_weeks, history_complete, complete, coverage_note, computed_at.

    ``complete`` is true only when this period and the previous one have ended and
    were extracted in full, and the history before the period is complete
    (``history_complete``, see ``HistoryStatus``).
    """
    starts = _as_list(start)
    today = _today(now)
    bounds = {s: period_bounds(period, s) for s in starts}
    prevs = {s: previous_period_start(period, s) for s in starts}
    last_end = max(e for _, e in bounds.values())
    measured_all = _measured(deployments, last_end)
    con = _connect()  # closed below; the derived state uses it too
    states = _states(storage, measured_all, con)
    index = _day_index(states, min(last_end, today))
    spans = []
    for s in starts:
        spans += _spans(states, s, "cur", s, min(bounds[s][1], today))
        spans += _spans(states, s, "prev", prevs[s], min(s, today))

    try:
        _load(con, states, spans, first_seen=True)
        con.register("targets", pd.DataFrame({"period_start": starts, "period_end": [bounds[s][1] for s in starts]}))
        counts = con.execute(_LIFECYCLE_SQL).df()
    finally:
        con.close()

    counts["period_start"] = pd.to_datetime(counts["period_start"]).dt.date
    counts = counts.set_index(["period_start", "deployment"])
    rows = []
    for s in starts:
        _, end = bounds[s]
        prev = prevs[s]
        ended = today >= end
        parts: dict[str, tuple[bool, str]] = {}
        history: dict[str, HistoryStatus] = {}
        for d in _measured(deployments, end):
            days = index[d.name]
            cov = days.coverage(s, end, today)
            prev_cov = days.coverage(prev, s, today)
            hist = days.history(s, warmup_weeks)
            history[d.name] = hist
            notes = []
            if cov.note(ended):
                notes.append(cov.note(ended))
            if d.start_date >= s:
                notes.append(f"previous period {prev.isoformat()} is before the deployment's history")
            elif prev_cov.note(True):
                notes.append(f"previous period {prev.isoformat()}: {prev_cov.note(True)}")
            notes.extend(hist.notes)
            complete = cov.is_complete(ended) and prev_cov.is_complete(True) and hist.complete
            parts[d.name] = (complete, "; ".join(notes))
        names = list(parts)
        all_complete, all_note = _combine(parts)
        for name in [*names, ALL_DEPLOYMENTS]:
            values = counts.loc[(s, name)] if (s, name) in counts.index else None
            row = {
                "deployment": name,
                "period": period,
                "period_start": s,
                "period_end": end,
                "previous_period_start": prev,
            }
            for col in LIFECYCLE_COUNTS:
                row[col] = 0 if values is None else int(values[col])
            row.update(_history_fields(name, history, parts, all_complete, all_note))
            rows.append(row)
    frame = pd.DataFrame(rows)
    for col in (*LIFECYCLE_COUNTS, "history_weeks"):
        frame[col] = frame[col].astype("int64")
    gained = frame["new_users"] + frame["resurrected_users"]
    frame.insert(
        frame.columns.get_loc("previous_active_users") + 1,
        "quick_ratio",
        (gained / frame["dormant_users"].where(frame["dormant_users"] > 0)).round(3).astype("float64"),
    )
    for col in ("history_complete", "complete"):
        frame[col] = frame[col].astype(bool)
    return _finish(frame, now, ["period_start", "period_end", "previous_period_start"])


# --------------------------------------------------------------------------- stickiness


_STICKINESS_SQL = {
    "month": "SELECT deployment, target AS key, count(DISTINCT user_id) AS users FROM act GROUP BY ALL",
    "week": "SELECT deployment, week AS key, count(*) AS users FROM act GROUP BY ALL",
    "day": "SELECT deployment, week + CAST(i AS INTEGER) AS key, count(*) AS users "
    "FROM act, range(7) r(i) WHERE bits & CAST(1 << i AS UTINYINT) != 0 GROUP BY ALL",
}


def stickiness(
    storage: Storage,
    deployments: Sequence[Deployment],
    start: dt.date | Iterable[dt.date],
    now: dt.datetime,
) -> pd.DataFrame:
    """Stickiness of each deployment (and ``all``) in one or more calendar months.

    ``start``: the 1st of a month, or several. Reads exactly the months' days.

    * ``monthly_active_users`` (MAU): distinct active users in the month;
    * ``weeks``: the ISO weeks lying entirely inside the month (3 or 4), of which
      those already ended are averaged into ``mean_weekly_active_users``;
      ``wau_mau`` = that mean / MAU. Every such week's users are a subset of the
      month's, so 0 <= wau_mau <= 1, and the value is final when the month ends;
    * ``days``: the month's days already ended, whose distinct active users
      (zero on days without activity) are averaged into
      ``mean_daily_active_users``; ``dau_mau`` = that mean / MAU;
    * ratios are null when MAU is 0 (or no week / day has ended yet).
    """
    starts = _as_list(start)
    today = _today(now)
    bounds = {s: period_bounds("month", s) for s in starts}
    last_end = max(e for _, e in bounds.values())
    measured_all = _measured(deployments, last_end)
    con = _connect()  # closed below; the derived state uses it too
    states = _states(storage, measured_all, con)
    index = _day_index(states, min(last_end, today))
    spans = [row for s in starts for row in _spans(states, s, "month", s, min(bounds[s][1], today))]

    try:
        # Only the user weeks overlapping the requested months (days from today on masked out) are read.
        _load(con, states, spans, first_seen=False, materialize=True)
        counts = {}
        for grain, sql in _STICKINESS_SQL.items():
            got = con.execute(sql).df()
            got["key"] = pd.to_datetime(got["key"]).dt.date
            counts[grain] = {(r.deployment, r.key): int(r.users) for r in got.itertuples()}
    finally:
        con.close()

    rows = []
    for s in starts:
        _, end = bounds[s]
        ended = today >= end
        weeks = [w for w in full_weeks_in_month(s) if w + dt.timedelta(days=7) <= today]
        days = [d for d in days_between(s, end) if d < today]
        parts = {}
        for d in _measured(deployments, end):
            cov = index[d.name].coverage(s, end, today)
            parts[d.name] = (cov.is_complete(ended), cov.note(ended))
        all_complete, all_note = _combine(parts)
        for name in [*parts, ALL_DEPLOYMENTS]:
            mau = counts["month"].get((name, s), 0)
            wau = [counts["week"].get((name, w), 0) for w in weeks]
            dau = [counts["day"].get((name, d), 0) for d in days]
            mean_wau = sum(wau) / len(wau) if wau else None
            mean_dau = sum(dau) / len(dau) if dau else None
            complete, note = (all_complete, all_note) if name == ALL_DEPLOYMENTS else parts[name]
            rows.append(
                {
                    "deployment": name,
                    "period": "month",
                    "period_start": s,
                    "period_end": end,
                    "monthly_active_users": mau,
                    "weeks": len(wau),
                    "mean_weekly_active_users": mean_wau,
                    "wau_mau": mean_wau / mau if mau and mean_wau is not None else None,
                    "days": len(dau),
                    "mean_daily_active_users": mean_dau,
                    "dau_mau": mean_dau / mau if mau and mean_dau is not None else None,
                    "complete": complete,
                    "coverage_note": note,
                }
            )
    frame = pd.DataFrame(rows)
    for col in ("monthly_active_users", "weeks", "days"):
        frame[col] = frame[col].astype("int64")
    for col, digits in (
        ("mean_weekly_active_users", 2),
        ("mean_daily_active_users", 2),
        ("wau_mau", 4),
        ("dau_mau", 4),
    ):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64").round(digits)
    frame["complete"] = frame["complete"].astype(bool)
    return _finish(frame, now, ["period_start", "period_end"])


# --------------------------------------------------------------------------- retention


_RETENTION_SQL = """
WITH cohort AS (
    SELECT f.deployment, f.user_id, t.period_start AS first_w
    FROM fs f JOIN targets t ON f.first_day >= t.period_start AND f.first_day < t.cohort_end
),
uw AS (SELECT DISTINCT deployment, user_id, week AS w FROM act)
SELECT c.first_w AS period_start, c.deployment, 0 AS k, count(*) AS users
FROM cohort c GROUP BY ALL
UNION ALL
SELECT c.first_w AS period_start, c.deployment, CAST((uw.w - c.first_w) // 7 AS INTEGER) AS k, count(*) AS users
FROM cohort c JOIN uw ON uw.deployment = c.deployment AND uw.user_id = c.user_id
WHERE uw.w > c.first_w AND uw.w <= c.first_w + $max_days
GROUP BY ALL
"""


def retained_column(k: int) -> str:
    return f"retained_w{k}"


def retention_column(k: int) -> str:
    return f"retention_w{k}"


def retention(
    storage: Storage,
    deployments: Sequence[Deployment],
    start: dt.date | Iterable[dt.date],
    now: dt.datetime,
    weeks: int = RETENTION_WEEKS,
    warmup_weeks: int = HISTORY_WARMUP_WEEKS,
) -> pd.DataFrame:
    """Weekly retention of new users, one row per cohort week W (a Monday) and deployment, plus ``all``.

    The cohort of W: users whose first seen day lies in W. ``retained_wK`` is
    how many of them were active in week W+K, ``retention_wK`` = 100 *
    retained_wK / cohort_users (K = 1..``weeks``); both are null while W+K has
    not ended (and the percentage when the cohort is empty). ``weeks_observed``
    counts the ended weeks W+1.. . ``complete`` is true only when W+``weeks`` has
    ended, all of W..W+``weeks`` was extracted in full and ``history_complete``
    holds for W (else the cohort may hold users who were active before
    extraction began or in a gap, see ``HistoryStatus``).
    Columns: deployment, period, period_start, period_end, cohort_users,
    retained_w1.., retention_w1.., weeks_observed, observed_until, history_weeks,
    history_complete, complete, coverage_note, computed_at.
    """
    starts = _as_list(start)
    for s in starts:
        period_bounds("week", s)
    today = _today(now)
    span = dt.timedelta(weeks=weeks + 1)
    last_end = max(starts) + span
    measured_all = _measured(deployments, max(starts) + dt.timedelta(days=7))
    con = _connect()  # closed below; the derived state uses it too
    states = _states(storage, measured_all, con)
    index = _day_index(states, min(last_end, today))
    # The later weeks W+1 .. W+weeks of every cohort, each user week read once.
    later = sorted({s + dt.timedelta(weeks=k) for s in starts for k in range(1, weeks + 1)})
    spans = [
        row for w in later if w < today for row in _spans(states, w, "later", w, min(w + dt.timedelta(days=7), today))
    ]

    try:
        cohort_end = [min(s + dt.timedelta(days=7), today) for s in starts]
        con.register("targets", pd.DataFrame({"period_start": starts, "cohort_end": cohort_end}))
        # Only the later weeks of users first seen in a cohort week matter (by raw id: a Keycloak-derived
        # id is the same person on every deployment, so its rows on all deployments are kept for ``all``).
        keep = (
            "u.user_id IN (SELECT f.user_id FROM fs_raw f JOIN targets t "
            "ON f.first_day >= t.period_start AND f.first_day < t.cohort_end)"
        )
        _load(con, states, spans, first_seen=True, keep=keep)
        got = con.execute(_RETENTION_SQL, {"max_days": 7 * weeks}).df()
    finally:
        con.close()
    got["period_start"] = pd.to_datetime(got["period_start"]).dt.date
    counts = {(r.period_start, r.deployment, int(r.k)): int(r.users) for r in got.itertuples()}

    rows = []
    for s in starts:
        end = s + dt.timedelta(days=7)
        observed_until = s + span
        ended = today >= observed_until
        observed = [k for k in range(1, weeks + 1) if today >= s + dt.timedelta(weeks=k + 1)]
        parts, history = {}, {}
        for d in _measured(deployments, end):
            days = index[d.name]
            # Coverage of the days observed so far (future days are not "missing").
            seen_until = min(observed_until, today)
            cov = days.coverage(s, seen_until, today) if seen_until > s else None
            hist = days.history(s, warmup_weeks)
            history[d.name] = hist
            notes = []
            if not ended:
                notes.append(
                    f"week W+{weeks} ends {observed_until.isoformat()}: {len(observed)} of {weeks} later weeks observed"
                )
            if cov is not None and cov.note(True):
                notes.append(f"{s.isoformat()}..{(seen_until - dt.timedelta(days=1)).isoformat()}: {cov.note(True)}")
            notes.extend(hist.notes)
            covered = cov is not None and cov.is_complete(True)
            parts[d.name] = (ended and covered and hist.complete, "; ".join(notes))
        all_complete, all_note = _combine(parts)
        for name in [*parts, ALL_DEPLOYMENTS]:
            cohort = counts.get((s, name, 0), 0)
            row = {
                "deployment": name,
                "period": "week",
                "period_start": s,
                "period_end": end,
                "cohort_users": cohort,
            }
            for k in range(1, weeks + 1):
                row[retained_column(k)] = counts.get((s, name, k), 0) if k in observed else None
            for k in range(1, weeks + 1):
                value = row[retained_column(k)]
                row[retention_column(k)] = round(100.0 * value / cohort, 2) if value is not None and cohort else None
            row["weeks_observed"] = len(observed)
            row["observed_until"] = observed_until
            row.update(_history_fields(name, history, parts, all_complete, all_note))
            rows.append(row)
    frame = pd.DataFrame(rows)
    for col in ("cohort_users", "weeks_observed", "history_weeks"):
        frame[col] = frame[col].astype("int64")
    for k in range(1, weeks + 1):
        frame[retained_column(k)] = frame[retained_column(k)].astype("Int64")
        frame[retention_column(k)] = pd.to_numeric(frame[retention_column(k)], errors="coerce").astype("float64")
    for col in ("history_complete", "complete"):
        frame[col] = frame[col].astype(bool)
    return _finish(frame, now, ["period_start", "period_end", "observed_until"])


# --------------------------------------------------------------------------- activation

# A new user is activated within N days when they did a core action (``CORE_ACTIONS``) on one of
# the N days starting with the day they were first seen (day 0 .. N-1).
ACTIVATION_DAYS = (7, 28)

_ACTIVATION_SQL = """
WITH cohort AS (
    SELECT f.deployment, f.user_id, f.first_day, t.period_start
    FROM fs f JOIN targets t ON f.first_day >= t.period_start AND f.first_day < t.cohort_end
),
core AS (
    SELECT DISTINCT deployment, user_id, week + CAST(i AS INTEGER) AS day
    FROM act, range(7) r(i) WHERE bits & CAST(1 << i AS UTINYINT) != 0
),
waited AS (
    SELECT c.period_start, c.deployment, c.user_id, min(k.day - c.first_day) AS days_to_core
    FROM cohort c
    LEFT JOIN core k ON k.deployment = c.deployment AND k.user_id = c.user_id AND k.day >= c.first_day
    GROUP BY c.period_start, c.deployment, c.user_id
)
SELECT period_start, deployment, count(*) AS cohort_users{windows}
FROM waited GROUP BY ALL
"""


def activated_column(days: int) -> str:
    return f"activated_{days}d"


def activation_column(days: int) -> str:
    return f"activation_{days}d"


def activation(
    storage: Storage,
    deployments: Sequence[Deployment],
    start: dt.date | Iterable[dt.date],
    now: dt.datetime,
    warmup_weeks: int = HISTORY_WARMUP_WEEKS,
) -> pd.DataFrame:
    """Activation of new users, one row per cohort week W (a Monday) and deployment, plus ``all``.

    The cohort of W: users whose first seen day f lies in W (as in ``retention``).
    ``activated_Nd`` (N = 7, 28) is how many of them did a core action (commit,
    dataset creation, workflow run, session start; a login is not one) on one of
    the days f .. f+N-1, and ``activation_Nd`` = 100 * activated_Nd / cohort_users.
    Both are null until N days after W has ended (then every cohort user's window
    has ended), the percentage also when the cohort is empty. ``observed_until``
    is W + 7 + 28 days: ``complete`` is true only from then on, with all of
    W .. observed_until extracted in full and ``history_complete`` for W. For
    ``all``, a user is new when first seen on any deployment and activated by a
    core action on any deployment (the identity rule of ``aggregate.py``).
    Columns: deployment, period, period_start, period_end, cohort_users,
    activated_7d, activated_28d, activation_7d, activation_28d, observed_until,
    history_weeks, history_complete, complete, coverage_note, computed_at.

    Reads first seen and the core days of the user weeks W .. W+4 (the 28 days of
    a user first seen on W's Sunday end in W+4) from the derived state.
    """
    starts = _as_list(start)
    for s in starts:
        period_bounds("week", s)
    today = _today(now)
    longest = max(ACTIVATION_DAYS)
    span = dt.timedelta(days=7 + longest)
    last_end = max(starts) + span
    measured_all = _measured(deployments, max(starts) + dt.timedelta(days=7))
    con = _connect()  # closed below; the derived state uses it too
    states = _states(storage, measured_all, con)
    index = _day_index(states, min(last_end, today))
    # The core days of W .. W+4 of every cohort (up to yesterday), each user week read once.
    weeks = sorted({s + dt.timedelta(days=d) for s in starts for d in range(0, 7 + longest - 1, 7)})
    spans = [
        row for w in weeks if w < today for row in _spans(states, w, "core", w, min(w + dt.timedelta(days=7), today))
    ]
    windows = "".join(f", count(*) FILTER (WHERE days_to_core < {n}) AS {activated_column(n)}" for n in ACTIVATION_DAYS)
    try:
        cohort_end = [min(s + dt.timedelta(days=7), today) for s in starts]
        con.register("targets", pd.DataFrame({"period_start": starts, "cohort_end": cohort_end}))
        keep = (
            "u.user_id IN (SELECT f.user_id FROM fs_raw f JOIN targets t "
            "ON f.first_day >= t.period_start AND f.first_day < t.cohort_end)"
        )
        _load(con, states, spans, first_seen=True, keep=keep, core=True)
        got = con.execute(_ACTIVATION_SQL.replace("{windows}", windows)).df()
    finally:
        con.close()
    got["period_start"] = pd.to_datetime(got["period_start"]).dt.date
    counts = {(r["period_start"], r["deployment"]): r for r in got.to_dict("records")}

    rows = []
    for s in starts:
        end = s + dt.timedelta(days=7)
        observed_until = s + span
        ended = today >= observed_until
        parts, history = {}, {}
        for d in _measured(deployments, end):
            days = index[d.name]
            seen_until = min(observed_until, today)
            cov = days.coverage(s, seen_until, today) if seen_until > s else None
            hist = days.history(s, warmup_weeks)
            history[d.name] = hist
            notes = []
            if not ended:
                notes.append(f"the {longest}-day windows of this cohort end by {observed_until.isoformat()}")
            if cov is not None and cov.note(True):
                notes.append(f"{s.isoformat()}..{(seen_until - dt.timedelta(days=1)).isoformat()}: {cov.note(True)}")
            notes.extend(hist.notes)
            covered = cov is not None and cov.is_complete(True)
            parts[d.name] = (ended and covered and hist.complete, "; ".join(notes))
        all_complete, all_note = _combine(parts)
        for name in [*parts, ALL_DEPLOYMENTS]:
            got_row = counts.get((s, name))
            cohort = int(got_row["cohort_users"]) if got_row else 0
            row = {"deployment": name, "period": "week", "period_start": s, "period_end": end, "cohort_users": cohort}
            for n in ACTIVATION_DAYS:
                observed = today >= end + dt.timedelta(days=n)
                row[activated_column(n)] = (int(got_row[activated_column(n)]) if got_row else 0) if observed else None
            for n in ACTIVATION_DAYS:
                value = row[activated_column(n)]
                row[activation_column(n)] = round(100.0 * value / cohort, 2) if value is not None and cohort else None
            row["observed_until"] = observed_until
            row.update(_history_fields(name, history, parts, all_complete, all_note))
            rows.append(row)
    frame = pd.DataFrame(rows)
    for col in ("cohort_users", "history_weeks"):
        frame[col] = frame[col].astype("int64")
    for n in ACTIVATION_DAYS:
        frame[activated_column(n)] = frame[activated_column(n)].astype("Int64")
        frame[activation_column(n)] = pd.to_numeric(frame[activation_column(n)], errors="coerce").astype("float64")
    for col in ("history_complete", "complete"):
        frame[col] = frame[col].astype(bool)
    return _finish(frame, now, ["period_start", "period_end", "observed_until"])
