"""Derived activity state: what the engagement views read instead of the raw history.

Four kinds of small objects per deployment (keys in ``renku_metrics.core.layout``):

* **day index** (``state/days/...``): for every stored day, the version of its
  manifest and events objects, whether it has events and its incomplete-source
  notes, and a mark in the raw-change log. Without an index, from one listing of
  the deployment's raw keys (``Storage.list_versions``); with one, only the days
  named in the raw-change log after its mark are listed again (their months),
  and only days whose version changed have their manifest read again.
* **raw-change log** (``state/raw_changes/...``): one empty object per day the
  extract rewrites, written before and after the write (``record_raw_change``).
* **user weeks** (``state/user_weeks/.../week=<Monday>/``): the users active in one
  ISO week (every user, excluded ones too: exclusions are applied when reading),
  with a 7-bit mask of their active days and their first day in the week. Built
  from the week's raw files; its ``signature`` (the versions of those days and
  the deployment's ``start_date``) says which raw data it was built from.
* **first seen** (``state/first_seen/...``): each user's first day in the
  deployment's extracted history, with the version of every day folded in.

Validity is checked against the day index at every use, never assumed: a user
week whose signature differs from its days' current versions is rebuilt from
raw (7 days); first seen folds in days that are new since it was written (a
minimum is monotone under additions) and is rebuilt from the user weeks when a
day it used was re-extracted or removed, or ``start_date`` moved later. The day
index itself is as current as the raw-change log: raw files changed by anything
but the extract (a restore, a manual fix) need ``state/`` deleted. Nothing here
depends on ``excluded_users``, which is applied when reading, so changing
exclusions needs no rebuild. Deleting ``state/`` is always safe: the next run
rebuilds what it needs from raw events (one listing and one scan of the history).

Cost of a weekly run: the notes written since the last run and a listing of
their months, the day index (about 100 bytes per day of history), first seen
(about 40 bytes per user ever seen), the user weeks it needs (a few, each about
the size of one week's distinct users; the weekly aggregate stores its week's as
a by-product) and the raw files of days not yet folded in. Plain Python, no
Dagster.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from renku_metrics.core.config import Deployment
from renku_metrics.core.coverage import DeploymentDays, day_status
from renku_metrics.core.events import CORE_ACTIONS, KNOWN_ACTIONS
from renku_metrics.core.layout import (
    changed_day_of_key,
    day_index_key,
    day_of_key,
    first_seen_key,
    is_events_key,
    is_manifest_key,
    manifest_key,
    raw_change_key,
    raw_change_mark,
    raw_changes_prefix,
    raw_events_key,
    raw_events_prefix,
    user_weeks_key,
)
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.periods import week_start
from renku_metrics.core.storage import Storage

STATE_FORMAT = 1
_META = b"renku_metrics_state"
USER_WEEKS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("days", pa.uint8(), nullable=False),  # bit i: active on Monday + i days
        pa.field("first_day", pa.date32(), nullable=False),
        # bit 7 * a + i: did action KNOWN_ACTIONS[a] on Monday + i days (the per-action user sets of
        # the week and of any month, for group metrics: core/value/groups.py)
        pa.field("action_days", pa.uint64(), nullable=False),
        # bit i: a core action (CORE_ACTIONS) on Monday + i days; null in user weeks stored before
        # the column existed (rebuilt from raw when a reader needs it, see ``user_weeks``).
        pa.field("core_days", pa.uint8(), nullable=True),
    ]
)
FIRST_SEEN_SCHEMA = pa.schema(
    [pa.field("user_id", pa.string(), nullable=False), pa.field("first_day", pa.date32(), nullable=False)]
)

# (version, has events, incomplete-source notes) of one stored day.
DayRecord = tuple[str, bool, list[str]]


# DuckDB's memory cap for a range computation here and in the aggregates (spilling to a
# temporary directory beyond it); RENKU_METRICS_DUCKDB_MEMORY_LIMIT overrides it ("1.5GB").
DUCKDB_MEMORY_ENV = "RENKU_METRICS_DUCKDB_MEMORY_LIMIT"
DEFAULT_DUCKDB_MEMORY_LIMIT = "1.2GB"


def duckdb_memory_limit() -> str:
    """DuckDB's memory cap: $RENKU_METRICS_DUCKDB_MEMORY_LIMIT, else the default."""
    return os.environ.get(DUCKDB_MEMORY_ENV) or DEFAULT_DUCKDB_MEMORY_LIMIT


def _duckdb() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"memory_limit": duckdb_memory_limit()})
    # Casting a TIMESTAMPTZ to DATE uses the session time zone: make it UTC.
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def _with_meta(table: pa.Table, meta: dict) -> pa.Table:
    return table.replace_schema_metadata({_META: json.dumps(meta, sort_keys=True).encode()})


def _meta_of(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(_META)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) and meta.get("format") == STATE_FORMAT else {}


def _read_state(storage: Storage, key: str) -> pa.Table | None:
    """A stored state object, or None when it is missing or unreadable (then it is rebuilt)."""
    try:
        return storage.read_parquet(key)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError):
        return None


def day_versions(listing: dict[str, str]) -> dict[dt.date, str]:
    """{day: version of its manifest and events objects} of the days with a manifest, from a
    ``Storage.list_versions`` listing of raw-event keys."""
    parts: dict[dt.date, list[str]] = {}
    for key, version in listing.items():
        if is_manifest_key(key):
            parts.setdefault(day_of_key(key), ["", ""])[0] = version
        elif is_events_key(key):
            parts.setdefault(day_of_key(key), ["", ""])[1] = version
    return {day: f"{m}|{e}" for day, (m, e) in parts.items() if m}


def list_day_versions(storage: Storage, name: str, days: Iterable[dt.date]) -> dict[dt.date, str]:
    """``day_versions`` of the given days only: one listing per calendar month they touch."""
    days = set(days)
    listing: dict[str, str] = {}
    for month in sorted({d.strftime("%Y-%m-") for d in days}):
        listing.update(storage.list_versions(f"{raw_events_prefix(name)}date={month}"))
    return {d: v for d, v in day_versions(listing).items() if d in days}


def week_signature(deployment: Deployment, week: dt.date, days: dict[dt.date, tuple[str, bool]]) -> str | None:
    """What a user week is built from: the version of each of its history days with a manifest
    (``days``: {day: (version, has events)}, other days ignored) and the deployment's
    ``start_date``; None when none of those days has events (no user week is stored then)."""
    history = [
        (d, days[d])
        for d in (week + dt.timedelta(days=i) for i in range(7))
        if d in days and d >= deployment.start_date
    ]
    if not any(has_events for _, (_, has_events) in history):
        return None
    text = f"{STATE_FORMAT}|{deployment.start_date}|" + ";".join(f"{d}={v}" for d, (v, _) in history)
    return hashlib.sha1(text.encode()).hexdigest()


def store_user_week(storage: Storage, name: str, week: dt.date, table: pa.Table, signature: str) -> pa.Table:
    """Write one user week (columns user_id, days, first_day, action_days, core_days) with the signature of
    what it was built from."""
    table = _with_meta(
        table.select(["user_id", "days", "first_day", "action_days", "core_days"]).cast(USER_WEEKS_SCHEMA),
        {
            "format": STATE_FORMAT,
            "signature": signature,
        },
    )
    storage.write_parquet(user_weeks_key(name, week), table)
    return table


# The SQL expressions of a user week over events with ``occurred_at``: a user's active days in
# the ISO week as a bitmask (bit i: Monday + i days) and the first of them (UTC days).
USER_DAYS_SQL = "CAST(bit_or(CAST(1 AS UTINYINT) << CAST(isodow(CAST({ts} AS DATE)) - 1 AS INTEGER)) AS UTINYINT)"
USER_FIRST_DAY_SQL = "min(CAST({ts} AS DATE))"
# Each action's days as one bitmask: bit 7 * a + i for KNOWN_ACTIONS[a] on Monday + i days.
USER_ACTION_DAYS_SQL = (
    "coalesce(bit_or(CAST(1 AS UBIGINT) << CAST(7 * (CASE {action} "
    + " ".join(f"WHEN '{a}' THEN {i}" for i, a in enumerate(KNOWN_ACTIONS))
    + " END) + isodow(CAST({ts} AS DATE)) - 1 AS INTEGER)), CAST(0 AS UBIGINT))"
)
# The days of the week with a core action (``CORE_ACTIONS``), 0 when none; ``{action}`` is the
# action column.
USER_CORE_DAYS_SQL = (
    "coalesce(CAST(bit_or(CAST(1 AS UTINYINT) << CAST(isodow(CAST({ts} AS DATE)) - 1 AS INTEGER)) "
    "FILTER (WHERE {action} IN (" + ", ".join(f"'{a}'" for a in CORE_ACTIONS) + ")) AS UTINYINT), "
    "CAST(0 AS UTINYINT))"
)


# How far back a day index re-reads the raw-change log at each use: a change note is
# written before a day's objects are replaced and again after, so a note older than this
# (by the reader's clock) describes writes that have ended, even with clocks an hour apart.
CHANGE_MARGIN = dt.timedelta(hours=1)


def record_raw_change(
    storage: Storage, deployment: str, days: Iterable[dt.date], at: dt.datetime | None = None
) -> None:
    """Note in the deployment's raw-change log that ``days`` are being (or were) rewritten.

    Every writer of raw days (the extract) calls this before it replaces a day's objects
    and again after: the day index learns of changed days from these notes instead of
    listing the whole history. One empty object per day; keys never collide.
    """
    at = at or dt.datetime.now(dt.timezone.utc)
    token = uuid.uuid4().hex[:12]
    for day in sorted(set(days)):
        storage.write_bytes(raw_change_key(deployment, at, day, token), b"")


def _read_day_index(storage: Storage, name: str) -> tuple[dict[dt.date, DayRecord], str | None]:
    """The stored index and its mark in the raw-change log ({} and None when missing or unreadable)."""
    try:
        raw = storage.read_json(day_index_key(name))
        if raw.get("format") != STATE_FORMAT:
            return {}, None
        days = {dt.date.fromisoformat(d): (v, bool(e), list(n)) for d, (v, e, n) in raw["days"].items()}
        mark = raw.get("changes_seen")
        return days, mark if isinstance(mark, str) else None
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return {}, None


def load_day_index(storage: Storage, deployment: Deployment) -> dict[dt.date, DayRecord]:
    """Every stored day of the deployment (with a manifest), brought up to date.

    Without a stored index (or one without a mark in the raw-change log), from one listing
    of the deployment's raw keys. With one, only the days named in the raw-change log after
    its mark are listed again (their months): a run's cost does not grow with the number of
    days stored. Days whose version changed have their manifest read again.
    """
    name = deployment.name
    started = dt.datetime.now(dt.timezone.utc)
    stored, mark = _read_day_index(storage, name)
    changed: set[dt.date] = set()
    if mark is None:
        current = day_versions(storage.list_versions(raw_events_prefix(name)))
        index: dict[dt.date, DayRecord] = {}
    else:
        prefix = raw_changes_prefix(name)
        changed = {changed_day_of_key(k) for k in storage.list_keys(prefix, start_after=prefix + mark)}
        if not changed:
            return stored  # nothing noted since the mark: nothing to list, nothing to write
        current = list_day_versions(storage, name, changed)
        index = {d: r for d, r in stored.items() if d not in changed}
    for day, version in current.items():
        known = stored.get(day)
        if known is not None and known[0] == version:
            index[day] = known
        else:
            has_events, notes = day_status(Manifest.read_key(storage, manifest_key(name, day)))
            index[day] = (version, has_events, notes)
    index = dict(sorted(index.items()))
    # Written when a day changed: notes written from an hour before this listing on are read
    # again next time (when nothing changed, the same few notes are simply read again).
    new_mark = max(mark or "", raw_change_mark(started - CHANGE_MARGIN))
    if index != stored or mark is None:
        document = {
            "format": STATE_FORMAT,
            "changes_seen": new_mark,
            "days": {d.isoformat(): list(r) for d, r in index.items()},
        }
        storage.write_bytes(day_index_key(name), json.dumps(document, separators=(",", ":")).encode())
    return index


def _lacks_core_days(table: pa.Table) -> bool:
    """Whether a user week was stored before ``core_days`` existed (its column is null)."""
    return table.num_rows > 0 and table.column("core_days").null_count > 0


@dataclass
class DeploymentActivity:
    """The derived state of one deployment, loaded and refreshed once per run."""

    storage: Storage
    deployment: Deployment
    index: dict[dt.date, DayRecord]
    con: duckdb.DuckDBPyConnection | None = None  # the caller's connection (set to UTC), else one per use
    _weeks: dict[dt.date, pa.Table] = field(default_factory=dict)

    @classmethod
    def load(
        cls, storage: Storage, deployment: Deployment, con: duckdb.DuckDBPyConnection | None = None
    ) -> DeploymentActivity:
        return cls(storage, deployment, load_day_index(storage, deployment), con)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.con is not None:
            yield self.con
            return
        con = _duckdb()
        try:
            yield con
        finally:
            con.close()

    @property
    def name(self) -> str:
        return self.deployment.name

    def days(self, until: dt.date) -> DeploymentDays:
        """Coverage view of the days [start_date, until), as ``DeploymentDays.load`` would read it."""
        return DeploymentDays(
            self.deployment,
            {d: (r[1], r[2]) for d, r in self.index.items() if self.deployment.start_date <= d < until},
        )

    def _history_days(self) -> dict[dt.date, DayRecord]:
        return {d: r for d, r in self.index.items() if d >= self.deployment.start_date}

    def _signature(self, week: dt.date) -> str | None:
        """What the user week is built from; None when the week has no stored events."""
        days = {d: (r[0], r[1]) for d in (week + dt.timedelta(days=i) for i in range(7)) if (r := self.index.get(d))}
        return week_signature(self.deployment, week, days)

    def history_weeks(self) -> list[dt.date]:
        return sorted({week_start(d) for d, r in self._history_days().items() if r[1]})

    def user_weeks(self, weeks: Iterable[dt.date], core_days: bool = False) -> pa.Table:
        """Users active in the given ISO weeks: columns user_id, days, first_day, core_days, week
        (rebuilt if stale). With ``core_days``, a user week stored before that column existed is
        rebuilt from raw too; otherwise its ``core_days`` are null."""
        weeks = sorted(set(weeks))
        signatures = {w: self._signature(w) for w in weeks}
        missing = []
        for week in weeks:
            sig = signatures[week]
            if sig is None or (week in self._weeks and not (core_days and _lacks_core_days(self._weeks[week]))):
                continue
            table = _read_state(self.storage, user_weeks_key(self.name, week))
            # A user week written before action_days existed is rebuilt like a stale one; one written
            # before core_days existed reads it as null (rebuilt when activation needs it).
            if table is not None and "core_days" not in table.schema.names:
                table = table.append_column("core_days", pa.nulls(table.num_rows, pa.uint8()))
            if (
                table is not None
                and _meta_of(table).get("signature") == sig
                and "action_days" in table.column_names
                and not (core_days and _lacks_core_days(table))
            ):
                self._weeks[week] = table.cast(USER_WEEKS_SCHEMA)
            else:
                missing.append(week)
        if missing:
            self._build_weeks(missing, signatures)
        parts = []
        for week in weeks:
            table = self._weeks.get(week) if signatures[week] is not None else None
            if table is not None and table.num_rows:
                parts.append(table.append_column("week", pa.array([week] * table.num_rows, pa.date32())))
        if not parts:
            return USER_WEEKS_SCHEMA.empty_table().append_column("week", pa.array([], pa.date32()))
        return pa.concat_tables(parts)

    def _build_weeks(self, weeks: list[dt.date], signatures: dict[dt.date, str | None]) -> None:
        """User weeks from raw events: one scan over all the weeks' files."""
        wanted = set(weeks)
        keys = [
            raw_events_key(self.name, d)
            for d, r in sorted(self._history_days().items())
            if r[1] and week_start(d) in wanted
        ]
        with self._connection() as con, self.storage.local_paths(keys) as paths:
            built = con.sql(
                """
                SELECT CAST(date_trunc('week', occurred_at) AS DATE) AS week, user_id,
                       {days} AS days, {first_day} AS first_day, {action_days} AS action_days,
                       {core_days} AS core_days
                FROM read_parquet($paths) GROUP BY ALL ORDER BY week, user_id
                """.replace("{days}", USER_DAYS_SQL.format(ts="occurred_at"))
                .replace("{first_day}", USER_FIRST_DAY_SQL.format(ts="occurred_at"))
                .replace("{action_days}", USER_ACTION_DAYS_SQL.format(ts="occurred_at", action="action"))
                .replace("{core_days}", USER_CORE_DAYS_SQL.format(ts="occurred_at", action="action")),
                params={"paths": paths},
            ).to_arrow_table()
        week_col = built.column("week").to_pylist()
        bounds: dict[dt.date, list[int]] = {}
        for i, w in enumerate(week_col):
            bounds.setdefault(w, [i, i])[1] = i + 1
        for week in weeks:
            lo, hi = bounds.get(week, (0, 0))
            self._weeks[week] = store_user_week(
                self.storage, self.name, week, built.slice(lo, hi - lo), signatures[week]
            )

    def first_seen(self) -> pa.Table:
        """Each user's first day in the extracted history (columns user_id, first_day), kept current."""
        current = {d.isoformat(): r[0] for d, r in self._history_days().items()}
        stored = _read_state(self.storage, first_seen_key(self.name))
        consumed = _meta_of(stored).get("days") if stored is not None else None
        if isinstance(consumed, dict) and all(current.get(d) == v for d, v in consumed.items()):
            new_days = [d for d in current if d not in consumed]
            if not new_days:
                return stored.cast(FIRST_SEEN_SCHEMA)
            base = stored.cast(FIRST_SEEN_SCHEMA)
            weeks = sorted(
                {week_start(dt.date.fromisoformat(d)) for d in new_days if self.index[dt.date.fromisoformat(d)][1]}
            )
        else:
            base = FIRST_SEEN_SCHEMA.empty_table()
            weeks = self.history_weeks()
        folded = self.user_weeks(weeks).select(["user_id", "first_day"]).cast(FIRST_SEEN_SCHEMA)
        with self._connection() as con:
            con.register("fs_base", base)
            con.register("fs_folded", folded)
            table = con.sql(
                "SELECT user_id, min(first_day) AS first_day "
                "FROM (SELECT * FROM fs_base UNION ALL SELECT * FROM fs_folded) GROUP BY user_id ORDER BY user_id"
            ).to_arrow_table()
            con.unregister("fs_base")
            con.unregister("fs_folded")
        table = table.cast(FIRST_SEEN_SCHEMA)
        self.storage.write_parquet(
            first_seen_key(self.name), _with_meta(table, {"format": STATE_FORMAT, "days": current})
        )
        return table
