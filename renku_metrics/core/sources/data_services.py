"""renku-data-services' PostgreSQL: session starts and data connectors of Renku 2.x.

Two tables, read in one read-only transaction:

``resource_pools.resource_requests_log``
    A periodic capture (every ``capture_interval``, e.g. 10 minutes) of each
    session pod and volume claim. A pod (``kind`` 'Pod') that reached phase
    Running is a session start at its ``since`` (the pod's start time); one that
    never left Pending is not. ``user_id`` is the Keycloak id. A pod started late
    on day D may be first captured (or first captured Running) on day D+1, so
    captures are read up to ``capture_margin_minutes`` past the window end, and a
    start is kept only when its ``since`` lies in the window. Every pod counts
    once: it is keyed by its Kubernetes ``uid``.

``metrics.metrics``
    A staging table renku-data-services drains into PostHog (rows are deleted
    once sent). ``anonymous_user_id`` is already the md5 hex of the Keycloak id,
    our user key, and is kept as is. ``data_connector_created`` becomes
    ``create_dataset`` (data connectors take the place of datasets in Renku 2).
    ``project_created`` has no canonical action: it is counted in the stats
    only. ``session_started`` is ignored (counted for comparison): the capture
    log is durable and complete, the staging table is neither. A window whose
    rows may already be drained (the oldest remaining row is newer than the
    window start) is reported incomplete.

Renku 2 has no commits and no workflows (no GitLab, no renku CLI history), and
logins come from the Keycloak source, not from here.

No Dagster in here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import (
    VISIBILITIES,
    RejectedRecord,
    SourceResult,
    TimeWindow,
    make_event_id,
    pseudonymize_user,
)
from renku_metrics.core.ownership import ProjectRecord
from renku_metrics.core.sources.base import SettingsBase, SourceError, read_secret

SOURCE_NAME = "data_services"
SESSION_LOG_TABLE = "resource_pools.resource_requests_log"
METRICS_TABLE = "metrics.metrics"
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
# data-services stores this instead of a hash for requests without a user.
_ANONYMOUS = "anonymous"
# The capture clock (data services) and the pods' clock (Kubernetes) can differ a
# little: read captures from a bit before the window so a pod started right at
# its beginning is not lost to skew.
_CLOCK_SKEW = dt.timedelta(minutes=10)

# Pods captured in [captures_from, captures_until), one row per pod uid.
_SESSION_STARTS_SQL = """
SELECT uid,
       bool_or(phase = 'Running') AS reached_running,
       min(since) FILTER (WHERE phase = 'Running') AS started_at,
       min(coalesce(since, capture_date)) AS first_seen,
       (array_agg(user_id ORDER BY capture_date) FILTER (WHERE user_id IS NOT NULL))[1] AS user_id,
       (array_agg(project_id::text ORDER BY capture_date) FILTER (WHERE project_id IS NOT NULL))[1] AS project_id
FROM resource_pools.resource_requests_log
WHERE kind = 'Pod'
  AND capture_date >= %(captures_from)s
  AND capture_date < %(captures_until)s
GROUP BY uid
ORDER BY uid
"""

_SESSION_LOG_SPAN_SQL = """
SELECT min(capture_date), max(capture_date) FROM resource_pools.resource_requests_log
"""

_METRICS_SQL = """
SELECT id::text, event, anonymous_user_id, "timestamp"
FROM metrics.metrics
WHERE "timestamp" >= %(start)s
  AND "timestamp" < %(end)s
  AND event = ANY(%(events)s)
ORDER BY "timestamp", id
"""

PROJECTS_TABLE = "projects.projects"
_PROJECT_OWNERS_SQL = """
SELECT id::text, created_by_id, visibility::text FROM projects.projects WHERE id::text = ANY(%(ids)s)
"""

_METRICS_OLDEST_SQL = """
SELECT min("timestamp") FROM metrics.metrics
"""

# metrics.metrics event -> canonical action; the other listed events are counted only.
METRICS_ACTIONS = {"data_connector_created": "create_dataset"}
METRICS_COUNTED_ONLY = ("project_created", "session_started")


class Settings(SettingsBase):
    # Environment variable holding a libpq connection string (URI or key=value).
    dsn_env: str
    connect_timeout_seconds: int = 10
    sslmode: str | None = None  # overrides the DSN's sslmode when set
    statement_timeout_seconds: int = 300
    # How long after the window end a pod started in the window may first be
    # captured Running: the capture interval plus image pulls and start-up.
    capture_margin_minutes: int = 120
    # Off for deployments that drain the staging table continuously and accept
    # that Renku 2 data connectors are not counted (it would always be incomplete).
    read_metrics_table: bool = True
    # Read who created each project of the day's session starts from projects.projects
    # (needs SELECT on it): feeds start_shared_session (renku_metrics.core.ownership).
    project_ownership: bool = False

    def validate(self, where: str) -> None:
        if self.sslmode is not None and self.sslmode not in _SSLMODES:
            raise ConfigError(f"{where}.sslmode: expected one of {', '.join(_SSLMODES)}, got {self.sslmode!r}")
        for name in ("connect_timeout_seconds", "statement_timeout_seconds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be at least 1")
        if self.capture_margin_minutes < 0:
            raise ConfigError(f"{where}.capture_margin_minutes: must not be negative")


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return value.astimezone(dt.timezone.utc) if value is not None else None


class Source:
    name = SOURCE_NAME

    def __init__(self, deployment: str, settings: Settings, env: Mapping[str, str]) -> None:
        self.deployment = deployment
        self.settings = settings
        where = f"deployment {deployment!r}: sources.{SOURCE_NAME}.dsn_env"
        self._dsn = read_secret(env, settings.dsn_env, where)
        try:
            params = psycopg2.extensions.parse_dsn(self._dsn)
        except psycopg2.ProgrammingError:
            # Not the parser's message: it quotes the connection string.
            raise ConfigError(f"{where}: {settings.dsn_env} is not a valid PostgreSQL connection string") from None
        self._password = params.get("password") or ""
        # For messages: where we connect, never with the password.
        self._target = (
            f"{params.get('host', 'local socket')}:{params.get('port', '5432')}/{params.get('dbname', '?')}"
            f" as {params.get('user', '?')}"
        )

    def _prefix(self) -> str:
        return f"deployment {self.deployment!r}, source {SOURCE_NAME!r}"

    def _clean(self, text: str) -> str:
        """First line of a libpq/server message, with the password blanked just in case."""
        first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
        return first.replace(self._password, "***") if self._password else first

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in a read-only, repeatable-read transaction (one snapshot for all queries)."""
        s = self.settings
        options: dict[str, Any] = {"connect_timeout": s.connect_timeout_seconds, "application_name": "renku-metrics"}
        if s.sslmode:
            options["sslmode"] = s.sslmode
        try:
            conn = psycopg2.connect(self._dsn, **options)
        except psycopg2.Error as exc:
            raise SourceError(
                f"{self._prefix()}: cannot connect to PostgreSQL {self._target}: "
                f"{type(exc).__name__}: {self._clean(str(exc))}"
            ) from None
        try:
            conn.set_session(readonly=True, isolation_level="REPEATABLE READ")
            with conn.cursor() as cur:
                cur.execute("SET LOCAL TIME ZONE 'UTC'")
                cur.execute("SELECT set_config('statement_timeout', %s, true)", (f"{s.statement_timeout_seconds}s",))
                yield cur
        finally:
            conn.rollback()  # nothing to commit: the transaction is read-only
            conn.close()

    def _query(self, cur, table: str, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        self.sql_queries = getattr(self, "sql_queries", 0) + 1
        try:
            cur.execute(sql, params)
            return cur.fetchall()
        except psycopg2.Error as exc:
            hint = ""
            if isinstance(exc, psycopg2.errors.UndefinedTable):
                hint = " (table missing: renku-data-services too old, or wrong database?)"
            elif isinstance(exc, psycopg2.errors.InsufficientPrivilege):
                hint = f" (the role needs USAGE on the schema and SELECT on {table})"
            elif isinstance(exc, psycopg2.errors.QueryCanceled):
                hint = " (statement_timeout_seconds reached)"
            raise SourceError(
                f"{self._prefix()}: query on {table} at {self._target} failed: "
                f"{exc.pgcode or type(exc).__name__} {self._clean(exc.pgerror or str(exc))}{hint}"
            ) from None

    # -- extraction ------------------------------------------------------------

    def extract(self, window: TimeWindow) -> SourceResult:
        result = SourceResult(source=SOURCE_NAME)
        notes: list[str] = []
        self.sql_queries = 0
        with self.transaction() as cur:
            self._session_starts(cur, window, result, notes)
            if self.settings.read_metrics_table:
                self._metrics(cur, window, result, notes)
        result.events.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
        result.stats["sql_queries"] = self.sql_queries
        if notes:
            result.complete = False
            result.coverage_note = "; ".join(notes)
        return result

    def _session_starts(self, cur, window: TimeWindow, result: SourceResult, notes: list[str]) -> None:
        margin = dt.timedelta(minutes=self.settings.capture_margin_minutes)
        rows = self._query(
            cur,
            SESSION_LOG_TABLE,
            _SESSION_STARTS_SQL,
            {"captures_from": window.start - _CLOCK_SKEW, "captures_until": window.end + margin},
        )
        stats = {"session_starts": 0, "pods_without_user": 0, "pods_pending_only": 0}
        for uid, reached_running, started_at, first_seen, user_id, project_id in rows:
            started_at, first_seen = _utc(started_at), _utc(first_seen)
            if not reached_running:
                # Pending until the end of the margin: not a session start.
                if first_seen is not None and window.contains(first_seen):
                    stats["pods_pending_only"] += 1
                continue
            if started_at is None:
                result.rejected.append(
                    RejectedRecord(SOURCE_NAME, "running pod without since", {"table": SESSION_LOG_TABLE, "uid": uid})
                )
                continue
            if not window.contains(started_at):
                continue  # started in another window, which counts it
            if not user_id:
                stats["pods_without_user"] += 1
                continue
            stats["session_starts"] += 1
            result.events.append(
                {
                    "event_id": make_event_id(self.deployment, SOURCE_NAME, "pod", uid),
                    "deployment": self.deployment,
                    "occurred_at": started_at,
                    "user_id": pseudonymize_user(user_id),
                    "action": "start_session",
                    "project_id": project_id,
                    "project_visibility": None,
                    "source": SOURCE_NAME,
                }
            )
        result.stats.update(stats)

        oldest, newest = (_utc(v) for v in self._query(cur, SESSION_LOG_TABLE, _SESSION_LOG_SPAN_SQL)[0])
        if oldest is None:
            notes.append(f"{SESSION_LOG_TABLE} is empty: no session starts can be read")
            return
        if oldest > window.start:
            notes.append(
                f"{SESSION_LOG_TABLE} begins at {oldest.isoformat()}, after the window start: "
                "earlier session starts are not in it"
            )
        if newest < window.end + margin:
            notes.append(
                f"latest capture in {SESSION_LOG_TABLE} is {newest.isoformat()}, before window end + "
                f"capture_margin_minutes ({(window.end + margin).isoformat()}): pods started late in the "
                "window may not be captured running yet"
            )

    def _metrics(self, cur, window: TimeWindow, result: SourceResult, notes: list[str]) -> None:
        events = [*METRICS_ACTIONS, *METRICS_COUNTED_ONLY]
        rows = self._query(
            cur, METRICS_TABLE, _METRICS_SQL, {"start": window.start, "end": window.end, "events": events}
        )
        stats = {
            "data_connectors_created": 0,
            "projects_created": 0,  # no canonical action: counted only
            "metrics_session_started_ignored": 0,  # the capture log counts sessions
            "metrics_anonymous_rows": 0,  # requests without a user: no user key
        }
        for row_id, event, anonymous_user_id, timestamp in rows:
            if event == "project_created":
                stats["projects_created"] += 1
                continue
            if event == "session_started":
                stats["metrics_session_started_ignored"] += 1
                continue
            if anonymous_user_id == _ANONYMOUS:
                stats["metrics_anonymous_rows"] += 1
                continue
            if not isinstance(anonymous_user_id, str) or not _MD5_HEX.match(anonymous_user_id):
                # Not the value: an unexpected format might be a raw id or a name.
                result.rejected.append(
                    RejectedRecord(
                        SOURCE_NAME,
                        "anonymous_user_id is not an md5 hex digest",
                        {"table": METRICS_TABLE, "id": row_id, "event": event},
                    )
                )
                continue
            stats["data_connectors_created"] += 1
            result.events.append(
                {
                    "event_id": make_event_id(self.deployment, SOURCE_NAME, "metrics", row_id),
                    "deployment": self.deployment,
                    "occurred_at": _utc(timestamp),
                    "user_id": anonymous_user_id,
                    "action": METRICS_ACTIONS[event],
                    "project_id": None,  # the event carries no project
                    "project_visibility": None,
                    "source": SOURCE_NAME,
                }
            )
        result.stats.update(stats)

        # The drain deletes oldest rows first: if the oldest remaining row is newer
        # than the window start, rows of the window may already be gone.
        oldest = _utc(self._query(cur, METRICS_TABLE, _METRICS_OLDEST_SQL)[0][0])
        if oldest is None or oldest > window.start:
            since = f"the oldest remaining row is from {oldest.isoformat()}" if oldest else "the table is empty"
            notes.append(
                f"{METRICS_TABLE} may already be drained for this window ({since}): data connectors "
                "created before it were sent to PostHog and deleted, and are missing"
            )

    # -- project ownership (renku_metrics.core.ownership) --------------------------

    def project_owners(self, project_ids: list[str]) -> dict[str, ProjectRecord | None]:
        """The creator (``created_by_id``, a Keycloak id, as its md5 user key) and visibility of each
        project in ``projects.projects``; None for ids not there (deleted). Renku 2 projects have
        no forks. Without ``project_ownership`` in the settings nothing is read."""
        if not self.settings.project_ownership or not project_ids:
            return {p: None for p in project_ids}
        with self.transaction() as cur:
            rows = self._query(cur, PROJECTS_TABLE, _PROJECT_OWNERS_SQL, {"ids": list(project_ids)})
        found = {
            pid: ProjectRecord(
                project_id=pid,
                owner=pseudonymize_user(creator) if isinstance(creator, str) and creator.strip() else None,
                visibility=visibility if visibility in VISIBILITIES else None,
            )
            for pid, creator, visibility in rows
        }
        return {p: found.get(p) for p in project_ids}
