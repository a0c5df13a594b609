"""The canonical event: the one record shape every source produces.

Every raw events partition is a Parquet file of rows with exactly these columns
(see ``EVENT_SCHEMA``). This module has no Dagster in it.

Columns
-------
event_id            str, not null. Stable id: sha256 over (deployment, source,
                    natural key of the upstream record), first 32 hex chars.
                    Re-extracting a day yields the same ids, so nothing doubles.
deployment          str, not null. Name of the deployment in deployments.yaml.
occurred_at         timestamp (microseconds, UTC), not null. When the action happened.
user_id             str, not null. Pseudonymous user key: md5 hex of the Keycloak
                    user id (the key Renku's own product analytics uses). A GitLab
                    author that cannot be mapped to Keycloak is kept as
                    ``gitlab:<gitlab user id>``. Never an email, a name or an IP.
action              str, not null. One of ``ACTIONS``, or of ``DERIVED_ACTIONS`` (added by
                    the extract from project ownership, see ``renku_metrics.core.ownership``).
project_id          str, nullable. Upstream project id (GitLab project id, Renku 2
                    project ULID), as text.
project_visibility  str, nullable. ``public``, ``internal`` or ``private`` where known.
source              str, not null. Which connector produced the event.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

ACTIONS = ("login", "commit", "create_dataset", "run_workflow", "start_session")
# The core actions of the pitch (every action but a login): what "activated" means in the
# activation view (renku_metrics.core.engagement.activation).
CORE_ACTIONS = ("commit", "create_dataset", "run_workflow", "start_session")
# Actions the extract derives from who owned the event's project on its day
# (renku_metrics.core.ownership): a ``commit`` to a project the user does not own, or to a fork
# of a project they do not own, adds a ``collaborate`` event; a ``start_session`` on a project
# the user does not own adds a ``start_shared_session`` event (same user, time and project).
DERIVED_ACTIONS = ("collaborate", "start_shared_session")
KNOWN_ACTIONS = ACTIONS + DERIVED_ACTIONS
VISIBILITIES = ("public", "internal", "private")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("deployment", pa.string(), nullable=False),
        pa.field("occurred_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("project_id", pa.string(), nullable=True),
        pa.field("project_visibility", pa.string(), nullable=True),
        pa.field("source", pa.string(), nullable=False),
    ]
)
EVENT_COLUMNS = tuple(EVENT_SCHEMA.names)

# An email address anywhere in a text: ``[^@\s]+@[^@\s]+\.[^@\s]+``. Searched with
# a regex engine that backtracks, that pattern is quadratic in the length of a text
# without "@" (a 1 MB label stalled an extract for minutes): ``contains_email``
# decides the same language in one pass.
_LOCAL_CHAR = re.compile(r"[^@\s]")
_DOMAIN_RUN = re.compile(r"[^@\s]*")
# A stored user key: md5 hex of the Keycloak id, or ``gitlab:<id>`` for GitLab users
# with no Keycloak identity. The one definition of the rule (Python and SQL).
USER_KEY_PATTERN = r"[0-9a-f]{32}|gitlab:[0-9]+"
_USER_ID = re.compile(rf"^({USER_KEY_PATTERN})$")

# The cross-deployment rollup row, and its user identity: the same Keycloak-derived
# key on two deployments is one person; GitLab-only ids are per GitLab instance and
# so kept apart (prefixed with the deployment). SQL over columns deployment, user_id.
ALL_DEPLOYMENTS = "all"
ROLLUP_USER_SQL = "CASE WHEN user_id LIKE 'gitlab:%' THEN deployment || '/' || user_id ELSE user_id END"


def is_user_key(value: str) -> bool:
    """Whether ``value`` is already a stored user key (not a raw Keycloak id)."""
    return bool(_USER_ID.match(value))


def pseudonymize_user(keycloak_user_id: str) -> str:
    """The user key stored in events: md5 hex of the Keycloak user id."""
    if not keycloak_user_id:
        raise ValueError("empty Keycloak user id")
    return hashlib.md5(keycloak_user_id.encode("utf-8")).hexdigest()


def gitlab_user_key(gitlab_user_id: int | str) -> str:
    """User key for a GitLab author with no Keycloak identity (documented fallback)."""
    return f"gitlab:{int(gitlab_user_id)}"


def make_event_id(deployment: str, source: str, *natural_key: Any) -> str:
    """Stable id for an upstream record; same inputs, same id."""
    raw = "\x1f".join([deployment, source, *(str(k) for k in natural_key)])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class TimeWindow:
    """A half-open UTC interval [start, end)."""

    start: dt.datetime
    end: dt.datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() != dt.timedelta(0):
                raise ValueError(f"TimeWindow.{name} must be UTC-aware, got {value!r}")
        if self.end <= self.start:
            raise ValueError(f"empty TimeWindow {self.start} .. {self.end}")

    @classmethod
    def for_day(cls, day: dt.date) -> TimeWindow:
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
        return cls(start, start + dt.timedelta(days=1))

    def contains(self, moment: dt.datetime) -> bool:
        return self.start <= moment < self.end

    def days(self) -> list[dt.date]:
        out, day = [], self.start.date()
        while dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc) < self.end:
            out.append(day)
            day += dt.timedelta(days=1)
        return out


@dataclass
class RejectedRecord:
    """An upstream record that could not become an event, kept for inspection.

    ``record`` must already be stripped of personal data (no emails, names, IPs).
    """

    source: str
    reason: str
    record: Mapping[str, Any] | str


def redact_personal(value: Any) -> Any:
    """``value`` with every string that looks personal replaced by ``"redacted:sha256:<16 hex>"``.

    For rejected records: the reason and a hash (to match repeats) are kept, never the value.
    Mappings and lists are redacted item by item.
    """
    if isinstance(value, str):
        if looks_personal(value):
            return "redacted:sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]
        return value
    if isinstance(value, Mapping):
        return {key: redact_personal(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_personal(item) for item in value]
    return value


@dataclass
class SourceResult:
    """What one source extracted for one window.

    events      canonical event dicts (keys = EVENT_COLUMNS; ``occurred_at`` a UTC datetime)
    rejected    records that failed parsing; never silently dropped
    complete    False when the source could no longer read the whole window
                (e.g. Keycloak events already expired, a drained table)
    coverage_note  human-readable reason when not complete
    stats       numbers shown in the materialization metadata, e.g.
                ``{"unmapped_authors": 3, "lines_without_user": 12}``
    """

    source: str
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[RejectedRecord] = field(default_factory=list)
    complete: bool = True
    coverage_note: str = ""
    stats: dict[str, int | float | str] = field(default_factory=dict)
    frame: pd.DataFrame | None = None  # sources that build a DataFrame directly (demo)


def contains_email(text: str) -> bool:
    r"""Whether ``text`` contains ``[^@\s]+@[^@\s]+\.[^@\s]+``, in time linear in its length.

    Each "@" needs a non-space, non-"@" character before it and, up to the next
    "@" or space, a run with a "." that has a character on either side. The runs
    after successive "@" do not overlap, so every character is read at most twice.
    """
    at = text.find("@")
    while at != -1:
        if at > 0 and _LOCAL_CHAR.match(text, at - 1):
            run = _DOMAIN_RUN.match(text, at + 1).group()
            if "." in run[1:-1]:
                return True
        at = text.find("@", at + 1)
    return False


def looks_personal(value: Any) -> bool:
    """True for a string that looks like an email address or an IP address (linear time)."""
    if not isinstance(value, str) or not value:
        return False
    if contains_email(value):
        return True
    if len(value) > 64:  # no IP address is that long
        return False
    try:
        ipaddress.ip_address(value.strip())
        return True
    except ValueError:
        return False


def validate_events(
    frame: pd.DataFrame, window: TimeWindow, deployment: str
) -> tuple[pd.DataFrame, list[RejectedRecord]]:
    """Split a frame of candidate events into valid rows and rejected records.

    Checks: all columns present, known action, user id of the documented forms,
    timestamp inside the window, deployment matches, nothing personal in any
    column. Duplicate event ids are collapsed (same id = same upstream record).
    """
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"events of deployment {deployment!r} lack columns {missing}")
    frame = frame.loc[:, list(EVENT_COLUMNS)].copy()
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True, errors="coerce")
    reasons = pd.Series("", index=frame.index, dtype="object")

    def flag(mask: pd.Series, reason: str) -> None:
        mask = mask.fillna(True).astype(bool) & (reasons == "")
        reasons[mask] = reason

    flag(frame["event_id"].isna() | (frame["event_id"].astype(str) == ""), "missing event_id")
    flag(frame["deployment"] != deployment, "wrong deployment")
    flag(frame["occurred_at"].isna(), "missing or unparseable occurred_at")
    start, end = pd.Timestamp(window.start), pd.Timestamp(window.end)
    flag(~((frame["occurred_at"] >= start) & (frame["occurred_at"] < end)), "occurred_at outside the window")
    flag(~frame["user_id"].astype("string").str.match(_USER_ID), "missing or malformed user_id")
    flag(~frame["action"].isin(KNOWN_ACTIONS), "unknown action")
    flag(
        frame["project_visibility"].notna() & ~frame["project_visibility"].isin(VISIBILITIES),
        "unknown project_visibility",
    )
    flag(frame["source"].isna(), "missing source")
    for column in ("project_id", "source"):
        flag(frame[column].map(looks_personal), f"personal data in {column}")

    bad = reasons != ""
    rejected = [
        RejectedRecord(
            source=str(row.get("source") or "unknown"),
            reason=reasons[idx],
            record={k: (None if pd.isna(v) else str(v)) for k, v in row.items()},
        )
        for idx, row in frame[bad].iterrows()
    ]
    good = frame[~bad].drop_duplicates(subset="event_id", keep="first")
    good = good.sort_values(["occurred_at", "event_id"], kind="stable").reset_index(drop=True)
    good["occurred_at"] = good["occurred_at"].astype("datetime64[us, UTC]")
    return good, rejected


def events_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A DataFrame with the canonical columns from event dicts (possibly none)."""
    frame = pd.DataFrame.from_records(list(records), columns=list(EVENT_COLUMNS))
    return frame


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    """Canonical events frame -> Arrow table with the exact EVENT_SCHEMA."""
    frame = frame.loc[:, list(EVENT_COLUMNS)]
    return pa.Table.from_pandas(frame, schema=EVENT_SCHEMA, preserve_index=False)
