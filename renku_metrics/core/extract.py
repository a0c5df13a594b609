"""Extract one deployment-day: run its sources, validate, store. No Dagster in here.

A day is written in three steps, each an atomic replace of one object: the
events Parquet file, the rejected records (if any), and last the manifest. A
source that fails raises before anything is written, so the day's previous
data stays intact; a rerun replaces the day, never appends to it.

The blocking raw-event checks (``core.raw_checks``) run on the day's rows in
memory before anything is written. A day that fails one is withheld: its rows go
to ``rejected/.../withheld_events.parquet`` (personal-looking values hashed), no
events file is published for it, and its manifest records the violations, so
the aggregates leave the day out and call its periods incomplete.

A record that appears on several days belongs to the earliest of them, whatever
the order of extraction (see ``RecentEventIds``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from renku_metrics.core.activity import record_raw_change
from renku_metrics.core.config import Deployment
from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import (
    ACTIONS,
    DERIVED_ACTIONS,
    RejectedRecord,
    TimeWindow,
    events_frame,
    redact_personal,
    to_arrow,
    validate_events,
)
from renku_metrics.core.integrity import DamagedFileError, file_record, parquet_bytes, read_checked
from renku_metrics.core.layout import (
    day_of_key,
    is_events_key,
    raw_events_key,
    raw_events_prefix,
    rejected_key,
    withheld_key,
)
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.ownership import add_ownership_actions
from renku_metrics.core.raw_checks import table_violations
from renku_metrics.core.sources import source_module
from renku_metrics.core.sources.base import SourceError
from renku_metrics.core.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class DayExtract:
    deployment: str
    day: dt.date
    row_count: int
    rejected_count: int
    by_action: dict[str, int]
    users: int
    sources: dict[str, dict[str, Any]]
    events_uri: str
    rejected_uri: str | None = None
    incomplete: list[str] = field(default_factory=list)
    repeated_from_earlier_days: int = 0
    taken_from_later_days: int = 0  # records of this day that later days held, removed there
    checks: dict[str, int] = field(default_factory=dict)  # rows breaking each blocking check
    # {neighbouring day: what is wrong with its stored file}: days it could not de-duplicate against.
    dedup_unchecked_days: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.incomplete


def _rejected_line(record: RejectedRecord) -> str:
    """One line of ``rejected.jsonl``: anything that looks personal is replaced by a hash."""
    return json.dumps(
        {"source": record.source, "reason": record.reason, "record": redact_personal(record.record)},
        default=str,
        sort_keys=True,
    )


# How far apart two days can hold the same upstream record (a commit pushed to a
# branch, fast-forwarded onto master by someone else weeks later).
DEDUP_LOOKBACK_DAYS = 90


class RecentEventIds:
    """Event ids stored for a deployment, day by day, around the day being extracted.

    A record that appears on several days belongs to the earliest of them (within
    ``lookback_days``): extracting day D drops the ids stored on the days before
    D, and takes the ids D now holds away from the stored days after D. So the
    store does not depend on the order in which days are extracted.

    Keeps what it has read (one listing per calendar month of the window, then each
    day's ids once), so a run over many days, in any order, reads each day once.
    What a day's extraction reads and holds does not grow with the history: the
    months within ``lookback_days`` of the day are listed, never the whole
    deployment, and only the days within ``lookback_days + 1`` of the last day
    extracted are kept, each as one Arrow string array (about 40 bytes an id, not
    a Python set of strings), matched exactly in Arrow's hash tables.
    """

    def __init__(self, storage: Storage, deployment: str, lookback_days: int = DEDUP_LOOKBACK_DAYS) -> None:
        self.storage = storage
        self.deployment = deployment
        self.lookback_days = lookback_days
        self._by_day: dict[dt.date, pa.Array] = {}
        self._months: dict[str, set[dt.date]] = {}  # "YYYY-MM-": its days that have an events object
        # Stored days whose events file is damaged: {day: the one-line error}. Their ids are taken
        # as none; re-extracting such a day repairs it and de-duplicates it against its neighbours.
        self.unreadable: dict[dt.date, DamagedFileError] = {}

    def _month(self, day: dt.date) -> set[dt.date]:
        """The stored days of ``day``'s calendar month (one listing of that month, then kept up to date)."""
        month = day.strftime("%Y-%m-")
        if month not in self._months:
            keys = self.storage.list_keys(f"{raw_events_prefix(self.deployment)}date={month}")
            self._months[month] = {day_of_key(key) for key in keys if is_events_key(key)}
        return self._months[month]

    def _is_stored(self, day: dt.date) -> bool:
        return day in self._month(day)

    def _load(self, day: dt.date) -> pa.Array:
        if day not in self._by_day:
            ids = _id_array(())
            if self._is_stored(day):
                key = raw_events_key(self.deployment, day)
                try:
                    manifest = Manifest.read(self.storage, self.deployment, day)
                    data = read_checked(self.storage, self.deployment, key, manifest.accepts(key) if manifest else [])
                except DamagedFileError as exc:
                    log.warning("%s", exc)
                    self.unreadable[day] = exc
                else:
                    table = pq.read_table(io.BytesIO(data), columns=["event_id"])
                    ids = _id_array(table.column("event_id"))
            self._by_day[day] = ids
        return self._by_day[day]

    def _prune(self, day: dt.date) -> None:
        reach = dt.timedelta(days=self.lookback_days + 1)
        for old in [d for d in self._by_day if not day - reach <= d <= day + reach]:
            del self._by_day[old]

    def _holding(self, days: list[dt.date], ids: pa.Array) -> dict[dt.date, pa.Array]:
        """{day: the ``ids`` it stores}, for those of ``days`` that store any (one hash table of ``ids``)."""
        if not len(ids):
            return {}
        held = [(d, self._load(d)) for d in days]
        held = [(d, stored) for d, stored in held if len(stored)]
        if not held:
            return {}
        found = pc.is_in(pa.chunked_array([stored for _, stored in held], type=pa.string()), value_set=ids)
        found = found.to_numpy(zero_copy_only=False)
        out, at = {}, 0
        for d, stored in held:
            mask = found[at : at + len(stored)]
            at += len(stored)
            if mask.any():
                out[d] = stored.filter(pa.array(mask))
        return out

    def repeated_before(self, day: dt.date, ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """For each of ``ids``, whether one of the ``lookback_days`` days before ``day`` stores it."""
        self._prune(day)
        ids = _id_array(ids)
        earlier = [day - dt.timedelta(days=back) for back in range(1, self.lookback_days + 1)]
        held = self._holding(earlier, ids)
        if not held:
            return np.zeros(len(ids), dtype=bool)
        return pc.is_in(ids, value_set=pa.concat_arrays(list(held.values()))).to_numpy(zero_copy_only=False)

    def later_days_holding(
        self, day: dt.date, ids: Iterable[str] | pa.Array | pa.ChunkedArray
    ) -> dict[dt.date, set[str]]:
        """{later day: the ``ids`` it stores}, for the stored days within ``lookback_days`` after ``day``."""
        later = [day + dt.timedelta(days=ahead) for ahead in range(1, self.lookback_days + 1)]
        held = self._holding([d for d in later if self._is_stored(d)], _id_array(ids))
        return {d: set(common.to_pylist()) for d, common in held.items()}

    def unchecked_around(self, day: dt.date) -> dict[str, str]:
        """{day: what is wrong} of the damaged days within ``lookback_days`` of ``day``."""
        reach = dt.timedelta(days=self.lookback_days)
        return {
            d.isoformat(): exc.problem
            for d, exc in sorted(self.unreadable.items())
            if d != day and day - reach <= d <= day + reach
        }

    def add(self, day: dt.date, ids: Iterable[str] | pa.Array | pa.ChunkedArray, published: bool = True) -> None:
        self.unreadable.pop(day, None)
        self._by_day[day] = _id_array(ids)
        if published:
            self._month(day).add(day)
        else:
            self._month(day).discard(day)

    def remove(self, day: dt.date, ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> None:
        stored = self._load(day)
        self._by_day[day] = stored.filter(pc.invert(pc.is_in(stored, value_set=_id_array(ids))))


def _id_array(ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Event ids as one Arrow string array."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    elif not isinstance(ids, pa.Array):
        ids = pa.array(list(ids), type=pa.string())
    return ids.cast(pa.string())


def _give_up_to_earlier_day(storage: Storage, deployment: str, later: dt.date, ids: set[str]) -> int:
    """Remove ``ids`` from the stored day ``later`` (they belong to an earlier day); its manifest follows.

    Events first, then the manifest, each an atomic replace: a crash in between
    leaves correct events and stale counts, which the next extract of either day rewrites.
    """
    key = raw_events_key(deployment, later)
    try:
        manifest = Manifest.read(storage, deployment, later)
        data = read_checked(storage, deployment, key, manifest.accepts(key) if manifest else [])
    except DamagedFileError as exc:  # nothing to take from a file that cannot be read
        log.warning("%s", exc)
        return 0
    stored = pq.read_table(io.BytesIO(data)).to_pandas()
    keep = ~stored["event_id"].isin(ids)
    removed = int((~keep).sum())
    if not removed:
        return 0
    kept = stored[keep].reset_index(drop=True)
    kept["occurred_at"] = kept["occurred_at"].astype("datetime64[us, UTC]")
    _replace_files(storage, manifest, {key: parquet_bytes(to_arrow(kept))})
    if manifest is not None:
        manifest.pending = {}
        manifest.row_count = int(len(kept))
        manifest.users = int(kept["user_id"].nunique()) if len(kept) else 0
        counts = kept["action"].value_counts()
        manifest.by_action = {a: int(counts.get(a, 0)) for a in ACTIONS} | {
            a: int(n) for a, n in counts.items() if a in DERIVED_ACTIONS and n
        }
        manifest.repeated_from_earlier_days += removed
        manifest.write(storage)
    return removed


def _replace_files(storage: Storage, manifest: Manifest | None, files: dict[str, bytes]) -> dict[str, dict]:
    """Write ``files`` ({key: bytes}); return their size-and-checksum records.

    When the day already has a manifest, it first names the coming files as pending, so that a
    crash after a file and before the final manifest leaves a file its manifest still accepts.
    """
    records = {key: file_record(data) for key, data in files.items()}
    if manifest is not None and files:
        manifest.pending = records
        manifest.write(storage)
        manifest.files.update(records)
    for key, data in files.items():
        storage.write_bytes(key, data)
    return records


# The stats key in which each kind of source counts the requests it made to its upstream.
REQUEST_STATS = ("http_requests", "s3_requests", "sql_queries")


def upstream_requests(stats: Mapping[str, Any]) -> int:
    """Requests a source made to its upstream for one window (HTTP requests, S3 requests, SQL queries)."""
    return int(sum(stats.get(key, 0) for key in REQUEST_STATS))


def build_sources(deployment: Deployment, env: Mapping[str, str]) -> dict[str, Any]:
    """One source object per configured source type (secrets are read from ``env`` here)."""
    built = {}
    for source_type, settings in deployment.sources.items():
        try:
            built[source_type] = source_module(source_type).Source(deployment.name, settings, env)
        except ConfigError as exc:
            if str(exc).startswith(f"deployment {deployment.name!r}"):
                raise  # the source's message already names deployment and key
            raise ConfigError(f"deployment {deployment.name!r}, source {source_type!r}: {exc}") from exc
    return built


def _previous_day(storage: Storage, deployment: str, day: dt.date) -> tuple[pd.DataFrame, Manifest] | None:
    """The day's stored events and manifest, if it was extracted before. A damaged manifest or
    events file is logged (one line naming it) and taken as absent: this extract replaces it."""
    try:
        manifest = Manifest.read(storage, deployment, day)
    except DamagedFileError as exc:
        log.warning("%s; extracting the day again replaces it", exc)
        return None
    if manifest is None:
        return None
    ekey = raw_events_key(deployment, day)
    events = events_frame([])
    if storage.exists(ekey):
        try:
            events = pq.read_table(io.BytesIO(read_checked(storage, deployment, ekey, manifest.accepts(ekey))))
            events = events.to_pandas()
        except DamagedFileError as exc:
            log.warning("%s; extracting the day again replaces it", exc)
    return events, manifest


def _keep_previous(frame: pd.DataFrame, info: dict, previous: tuple[pd.DataFrame, Manifest], source: str):
    """A source that could not read its whole window (e.g. Keycloak events expired since the
    last extract) must not erase what an earlier extract of the same day stored: keep the
    union of both (event ids are stable, so nothing doubles)."""
    stored, manifest = previous
    kept = stored[stored["source"] == source]
    if kept.empty:
        return frame, info
    merged = pd.concat([frame, kept], ignore_index=True).drop_duplicates(subset="event_id", keep="first")
    earlier = manifest.source(source)
    info = dict(info)
    info["events"] = int(len(merged))
    info["kept_from_previous_extract"] = int(len(merged) - len(frame))
    if earlier.get("complete"):
        # The earlier extract read the whole window: the union is complete.
        info["complete"] = True
        info["coverage_note"] = f"window complete from the extract of {manifest.extracted_at}"
    return merged, info


def extract_day(
    storage: Storage,
    deployment: Deployment,
    day: dt.date,
    env: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
    sources_by_type: Mapping[str, Any] | None = None,
    recent_ids: RecentEventIds | None = None,
) -> DayExtract:
    """Extract all sources of ``deployment`` for the UTC day ``day`` and store the result.

    ``sources_by_type`` lets a multi-day run reuse its source objects (and their
    caches, e.g. GitLab user lookups); by default they are built here. A record
    belongs to the earliest day it appears on (within ``DEDUP_LOOKBACK_DAYS``):
    events whose id is stored on an earlier day are dropped and counted; events of
    this day that later stored days hold are removed there, after this day is
    written. ``recent_ids`` lets a multi-day run keep those ids in memory.
    """
    env = os.environ if env is None else env
    now = now or dt.datetime.now(dt.timezone.utc)
    built = sources_by_type or build_sources(deployment, env)
    window = TimeWindow.for_day(day)
    frames, rejected, sources = [], [], {}
    previous = _previous_day(storage, deployment.name, day)
    for source_type, source in built.items():
        started = time.perf_counter()
        try:
            result = source.extract(window)
        except SourceError as exc:
            raise SourceError(f"{exc} (extracting day {day})") from exc
        except Exception as exc:  # anything unexpected still names deployment, source and day
            raise SourceError(
                f"deployment {deployment.name!r}, source {source_type!r}, day {day}: {type(exc).__name__}: {exc}"
            ) from exc
        frame = result.frame if result.frame is not None else events_frame(result.events)
        info = {
            "complete": bool(result.complete),
            "coverage_note": result.coverage_note,
            "events": int(len(frame)),
            "rejected": len(result.rejected),
            "stats": dict(result.stats),
            # The cost against the upstream: requests made (retries included) and time taken.
            "requests": upstream_requests(result.stats),
            "seconds": round(time.perf_counter() - started, 3),
        }
        if not result.complete and previous is not None:
            frame, info = _keep_previous(frame, info, previous, source_type)
        frames.append(frame)
        rejected.extend(result.rejected)
        sources[source_type] = info
    candidates = pd.concat(frames, ignore_index=True) if frames else events_frame([])
    valid, invalid = validate_events(candidates, window, deployment.name)
    rejected.extend(invalid)
    # Derived actions from who owned each project on this day (renku_metrics.core.ownership).
    try:
        valid, owner_source, owner_stats = add_ownership_actions(storage, deployment.name, day, valid, built)
    except SourceError as exc:
        raise SourceError(f"{exc} (looking up project owners for day {day})") from exc
    if owner_source is not None:
        sources[owner_source]["stats"].update(owner_stats)
    # The same upstream record can surface again on a later day (a commit pushed to a
    # branch, then fast-forwarded onto master by someone else): the earliest day wins,
    # whatever order the days are extracted in.
    recent_ids = recent_ids if recent_ids is not None else RecentEventIds(storage, deployment.name)
    repeated = recent_ids.repeated_before(day, pa.array(valid["event_id"], type=pa.string()))
    valid = valid[~repeated].reset_index(drop=True)
    table = to_arrow(valid)
    kept_ids = table.column("event_id")
    # Blocking checks before anything is published: a failing day is withheld.
    checks = table_violations(table, day.isoformat())
    withheld = any(checks.values())
    ekey, wkey = raw_events_key(deployment.name, day), withheld_key(deployment.name, day)
    if withheld:
        kept_ids = pa.chunked_array([], type=pa.string())
    later_days = recent_ids.later_days_holding(day, kept_ids)
    # The raw-change log, before and after the writes: the engagement state's day index reads
    # the days it names instead of listing every stored day (renku_metrics.core.activity).
    touched = [day, *later_days]
    record_raw_change(storage, deployment.name, touched)
    rkey = rejected_key(deployment.name, day)
    new_files = (
        {wkey: parquet_bytes(to_arrow(valid.map(redact_personal)))} if withheld else {ekey: parquet_bytes(table)}
    )
    if rejected:
        new_files[rkey] = ("\n".join(_rejected_line(r) for r in rejected) + "\n").encode()
    records = _replace_files(storage, previous[1] if previous is not None else None, new_files)
    storage.delete(ekey if withheld else wkey)
    if not rejected:
        storage.delete(rkey)  # a rerun that rejects nothing must not leave old rejects behind
    by_action = {a: int(n) for a, n in valid["action"].value_counts().items()} if len(valid) else {}
    by_action = {a: by_action.get(a, 0) for a in ACTIONS} | {a: n for a, n in by_action.items() if a in DERIVED_ACTIONS}
    incomplete = [
        f"{name}: {info['coverage_note'] or 'window not fully read'}"
        for name, info in sources.items()
        if not info["complete"]
    ]
    if withheld:
        failed = ", ".join(f"{name} ({n} rows)" for name, n in sorted(checks.items()) if n)
        incomplete.append(f"withheld: blocking raw-event checks failed ({failed}); see {storage.uri(wkey)}")
    manifest = Manifest(
        deployment=deployment.name,
        date=day.isoformat(),
        extracted_at=now.isoformat(),
        row_count=int(len(valid)),
        rejected_count=len(rejected),
        users=int(valid["user_id"].nunique()) if len(valid) else 0,
        repeated_from_earlier_days=int(repeated.sum()),
        by_action=by_action,
        sources=sources,
        checks=checks,
        files=records,
        dedup_unchecked_days=recent_ids.unchecked_around(day),
    )
    manifest.write(storage)
    recent_ids.add(day, kept_ids, published=not withheld)
    # Only once this day is stored: take its records away from later days that hold them.
    taken = 0
    for later, ids in sorted(later_days.items()):
        taken += _give_up_to_earlier_day(storage, deployment.name, later, ids)
        recent_ids.remove(later, ids)
    record_raw_change(storage, deployment.name, touched)
    return DayExtract(
        deployment=deployment.name,
        day=day,
        row_count=int(len(valid)),
        rejected_count=len(rejected),
        by_action=by_action,
        users=manifest.users,
        sources=sources,
        events_uri=storage.uri(wkey if withheld else ekey),
        rejected_uri=storage.uri(rkey) if rejected else None,
        incomplete=incomplete,
        repeated_from_earlier_days=int(repeated.sum()),
        taken_from_later_days=taken,
        checks=checks,
        dedup_unchecked_days=manifest.dedup_unchecked_days,
    )
