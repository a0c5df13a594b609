"""The renku-data-services source against a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import psycopg2
import psycopg2.errors
import pytest

from renku_metrics.core.config import parse_config
from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import TimeWindow, events_frame, pseudonymize_user, validate_events
from renku_metrics.core.extract import build_sources
from renku_metrics.core.sources import source_module
from renku_metrics.core.sources.base import SourceError
from renku_metrics.core.sources.data_services import Settings, Source

from .conftest import free_port

UTC = dt.timezone.utc
DAY = dt.date(2026, 3, 10)
WINDOW = TimeWindow.for_day(DAY)
NEXT_WINDOW = TimeWindow.for_day(DAY + dt.timedelta(days=1))

# The two tables as renku-data-services creates them (columns per SOURCES.md and
# its migrations; types of the columns this source does not read are close enough).
DDL = """
CREATE SCHEMA resource_pools;
CREATE TABLE resource_pools.resource_requests_log (
    id                varchar(26) PRIMARY KEY,  -- ULID
    cluster_id        varchar,
    namespace         varchar NOT NULL,
    name              varchar NOT NULL,
    uid               varchar NOT NULL,
    kind              varchar NOT NULL,         -- 'Pod' or 'PersistentVolumeClaim'
    api_version       varchar NOT NULL,
    phase             varchar NOT NULL,         -- Pending, Running, ... / Bound
    capture_date      timestamptz NOT NULL,
    capture_interval  interval NOT NULL,
    user_id           varchar,                  -- Keycloak user id
    project_id        varchar(26),              -- ULID
    launcher_id       varchar(26),              -- ULID
    resource_class_id integer,
    resource_class_cost integer,
    resource_pool_id  integer,
    since             timestamptz,              -- pod start time / claim creation time
    cpu_request       double precision,
    memory_request    bigint,
    gpu_request       double precision,
    gpu_slice         double precision,
    gpu_product       varchar,
    disk_request      bigint
);
CREATE INDEX ix_resource_requests_log_capture_date ON resource_pools.resource_requests_log (capture_date);

CREATE SCHEMA metrics;
CREATE TABLE metrics.metrics (
    id                varchar(26) PRIMARY KEY,  -- ULID
    event             varchar NOT NULL,
    anonymous_user_id varchar NOT NULL,         -- md5 hex of the Keycloak user id
    "timestamp"       timestamptz NOT NULL DEFAULT now(),
    metadata          jsonb
);
"""

PASSWORD_MARKER = "pw-Do-Not-Print-42"


def at(day: dt.date, hms: str, ms: int = 0) -> dt.datetime:
    h, m, s = (int(x) for x in hms.split(":"))
    return dt.datetime(day.year, day.month, day.day, h, m, s, ms * 1000, tzinfo=UTC)


D0, D1, D2 = DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)


def ulid() -> str:
    return uuid.uuid4().hex[:26].upper()


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def dsn(params: dict, **overrides) -> str:
    p = dict(params, **overrides)
    return f"host={p['host']} port={p['port']} user={p['user']} password={p['password']} dbname={p['dbname']}"


@pytest.fixture
def db(postgres_db):
    """Connection parameters of a fresh database holding the two (empty) tables."""
    conn = psycopg2.connect(**postgres_db)
    with conn, conn.cursor() as cur:
        cur.execute(DDL)
    conn.close()
    return postgres_db


def execute(params: dict, sql: str, args=None) -> None:
    conn = psycopg2.connect(**params)
    with conn, conn.cursor() as cur:
        cur.execute(sql, args)
    conn.close()


def capture(params, uid, phase, capture_date, since=None, user_id="kc-user", project_id=None, kind="Pod"):
    execute(
        params,
        """INSERT INTO resource_pools.resource_requests_log
           (id, namespace, name, uid, kind, api_version, phase, capture_date, capture_interval,
            user_id, project_id, since, cpu_request, memory_request)
           VALUES (%s, 'renku', %s, %s, %s, 'v1', %s, %s, interval '10 minutes', %s, %s, %s, 0.5, 1000000000)""",
        (ulid(), f"session-{uid}", uid, kind, phase, capture_date, user_id, project_id, since),
    )


def metric(params, event, anonymous_user_id, timestamp):
    execute(
        params,
        "INSERT INTO metrics.metrics (id, event, anonymous_user_id, timestamp, metadata) VALUES (%s, %s, %s, %s, '{}')",
        (ulid(), event, anonymous_user_id, timestamp),
    )


def covering_captures(params, start=at(D0, "00:00:00"), end=at(D2 + dt.timedelta(days=1), "06:00:00")):
    """Captures of an idle pod at both ends, so the log spans the windows under test."""
    capture(params, "heartbeat-start", "Pending", start, user_id=None)
    capture(params, "heartbeat-end", "Pending", end, user_id=None)


def old_metrics_row(params):
    """A row older than the windows under test: nothing of them was drained yet."""
    metric(params, "group_created", md5("kc-old"), at(D0 - dt.timedelta(days=5), "12:00:00"))


def make_source(params, **overrides) -> Source:
    raw = {"dsn_env": "DATA_SERVICES_DSN", "connect_timeout_seconds": 3, "capture_margin_minutes": 120}
    raw.update(overrides)
    return Source("renkulab", Settings.from_mapping(raw, "test"), {"DATA_SERVICES_DSN": dsn(params)})


def starts(result) -> set[tuple]:
    return {(e["user_id"], e["occurred_at"], e["project_id"]) for e in result.events if e["action"] == "start_session"}


# -- session starts ----------------------------------------------------------------


def test_session_starts_from_the_capture_log(db):
    covering_captures(db)
    old_metrics_row(db)
    # A: Pending first, then Running in several captures: one start at its since.
    a_since = at(D1, "09:57:00")
    capture(db, "pod-a", "Pending", at(D1, "09:58:00"), a_since, "kc-a", "01PROJECTA0000000000000000")
    for minute in ("10:08:00", "10:18:00", "10:28:00"):
        capture(db, "pod-a", "Running", at(D1, minute), a_since, "kc-a", "01PROJECTA0000000000000000")
    # The session's volume claim is captured too and is not a session.
    capture(db, "pvc-a", "Bound", at(D1, "10:08:00"), at(D1, "09:56:00"), "kc-a", kind="PersistentVolumeClaim")
    # B: never left Pending: not a start.
    capture(db, "pod-b", "Pending", at(D1, "11:00:00"), at(D1, "10:59:00"), "kc-b")
    capture(db, "pod-b", "Pending", at(D1, "11:10:00"), at(D1, "10:59:00"), "kc-b")
    # C: started late on D, first captured (Running) on D+1.
    capture(db, "pod-c", "Running", at(D2, "00:03:00"), at(D1, "23:55:00"), "kc-c")
    # H: Pending at the end of D (slow image pull), Running only on D+1.
    capture(db, "pod-h", "Pending", at(D1, "22:00:00"), at(D1, "21:59:00"), "kc-h")
    capture(db, "pod-h", "Running", at(D2, "00:10:00"), at(D1, "21:59:00"), "kc-h")
    # D: started the day before, still running on D: belongs to the day before.
    capture(db, "pod-d", "Running", at(D0, "23:58:00"), at(D0, "23:50:00"), "kc-d")
    capture(db, "pod-d", "Running", at(D1, "00:08:00"), at(D0, "23:50:00"), "kc-d")
    # E and F: the last millisecond of D and the first of D+1.
    capture(db, "pod-e", "Running", at(D2, "00:05:00"), at(D1, "23:59:59", ms=999), "kc-e")
    capture(db, "pod-f", "Running", at(D2, "00:06:00"), at(D2, "00:00:00"), "kc-f")
    # G: running but without a user id.
    capture(db, "pod-g", "Running", at(D1, "12:00:00"), at(D1, "11:58:00"), None)

    result = make_source(db).extract(WINDOW)

    assert starts(result) == {
        (pseudonymize_user("kc-a"), a_since, "01PROJECTA0000000000000000"),
        (pseudonymize_user("kc-c"), at(D1, "23:55:00"), None),
        (pseudonymize_user("kc-h"), at(D1, "21:59:00"), None),
        (pseudonymize_user("kc-e"), at(D1, "23:59:59", ms=999), None),
    }
    assert result.stats["session_starts"] == 4
    assert result.stats["pods_pending_only"] == 1
    assert result.stats["pods_without_user"] == 1
    assert result.rejected == []
    assert result.complete, result.coverage_note
    valid, invalid = validate_events(events_frame(result.events), WINDOW, "renkulab")
    assert invalid == [] and len(valid) == 4

    # The next day has F (00:00:00.000) and nothing of D.
    following = make_source(db).extract(NEXT_WINDOW)
    assert starts(following) == {(pseudonymize_user("kc-f"), at(D2, "00:00:00"), None)}
    assert not {e["event_id"] for e in result.events} & {e["event_id"] for e in following.events}

    # The previous day has D, and D only once across both days.
    previous = make_source(db).extract(TimeWindow.for_day(D0))
    assert starts(previous) == {(pseudonymize_user("kc-d"), at(D0, "23:50:00"), None)}


def test_a_capture_beyond_the_margin_is_not_read(db):
    """A pod first captured Running after window end + margin is missed (the margin is a setting)."""
    covering_captures(db)
    old_metrics_row(db)
    capture(db, "pod-slow", "Pending", at(D1, "23:00:00"), at(D1, "22:59:00"), "kc-slow")
    capture(db, "pod-slow", "Running", at(D2, "03:00:00"), at(D1, "22:59:00"), "kc-slow")
    short = make_source(db, capture_margin_minutes=60).extract(WINDOW)
    long = make_source(db, capture_margin_minutes=240).extract(WINDOW)
    assert starts(short) == set() and short.stats["pods_pending_only"] == 1
    assert starts(long) == {(pseudonymize_user("kc-slow"), at(D1, "22:59:00"), None)}


def test_event_ids_are_stable_per_pod(db):
    covering_captures(db)
    old_metrics_row(db)
    capture(db, "pod-a", "Running", at(D1, "10:00:00"), at(D1, "09:57:00"), "kc-a")
    capture(db, "pod-a2", "Running", at(D1, "10:00:00"), at(D1, "09:57:00"), "kc-a")  # a second session
    first = make_source(db).extract(WINDOW)
    capture(db, "pod-a", "Running", at(D1, "10:10:00"), at(D1, "09:57:00"), "kc-a")  # a later capture
    second = make_source(db).extract(WINDOW)
    ids = sorted(e["event_id"] for e in first.events)
    assert len(ids) == 2 and len(set(ids)) == 2
    assert ids == sorted(e["event_id"] for e in second.events)


def test_log_starting_after_the_window_or_not_yet_captured_is_incomplete(db):
    old_metrics_row(db)
    capture(db, "pod-a", "Running", at(D1, "12:00:00"), at(D1, "11:59:00"), "kc-a")
    result = make_source(db).extract(WINDOW)
    assert starts(result) == {(pseudonymize_user("kc-a"), at(D1, "11:59:00"), None)}
    assert not result.complete
    assert "begins at 2026-03-10T12:00:00+00:00" in result.coverage_note
    assert "latest capture" in result.coverage_note and "capture_margin_minutes" in result.coverage_note


def test_empty_log_is_incomplete(db):
    old_metrics_row(db)
    result = make_source(db).extract(WINDOW)
    assert result.events == [] and not result.complete
    assert "resource_pools.resource_requests_log is empty" in result.coverage_note


# -- metrics staging table ---------------------------------------------------------


def test_data_connectors_become_create_dataset_and_other_events_are_counted(db):
    covering_captures(db)
    old_metrics_row(db)
    metric(db, "data_connector_created", md5("kc-x"), at(D1, "08:00:00"))
    metric(db, "data_connector_created", md5("kc-y"), at(D1, "23:59:59", ms=999))
    metric(db, "data_connector_created", md5("kc-z"), at(D2, "00:00:00"))  # next day
    metric(db, "data_connector_created", md5("kc-w"), at(D0, "23:59:59", ms=999))  # previous day
    metric(db, "project_created", md5("kc-x"), at(D1, "07:00:00"))
    metric(db, "project_created", md5("kc-y"), at(D1, "07:30:00"))
    metric(db, "session_started", md5("kc-x"), at(D1, "09:00:00"))
    metric(db, "group_created", md5("kc-x"), at(D1, "09:30:00"))
    metric(db, "data_connector_created", "anonymous", at(D1, "10:00:00"))
    metric(db, "data_connector_created", "kc-raw-keycloak-id", at(D1, "11:00:00"))

    result = make_source(db).extract(WINDOW)

    created = {(e["user_id"], e["occurred_at"]) for e in result.events if e["action"] == "create_dataset"}
    # Kept as is: already the md5 hex of the Keycloak id, i.e. our user key.
    assert created == {
        (pseudonymize_user("kc-x"), at(D1, "08:00:00")),
        (pseudonymize_user("kc-y"), at(D1, "23:59:59", ms=999)),
    }
    assert {e["action"] for e in result.events} == {"create_dataset"}  # no project or session events
    assert result.stats["data_connectors_created"] == 2
    assert result.stats["projects_created"] == 2
    assert result.stats["metrics_session_started_ignored"] == 1
    assert result.stats["metrics_anonymous_rows"] == 1
    assert len(result.rejected) == 1
    rejected = result.rejected[0]
    assert rejected.reason == "anonymous_user_id is not an md5 hex digest"
    assert "kc-raw-keycloak-id" not in str(rejected.record) and rejected.record["table"] == "metrics.metrics"
    assert result.complete, result.coverage_note

    following = make_source(db).extract(NEXT_WINDOW)
    assert {(e["user_id"], e["occurred_at"]) for e in following.events} == {
        (pseudonymize_user("kc-z"), at(D2, "00:00:00"))
    }


def test_drained_metrics_table_is_reported(db):
    covering_captures(db)
    # The drain already deleted everything before D 12:00.
    metric(db, "data_connector_created", md5("kc-x"), at(D1, "12:00:00"))
    metric(db, "data_connector_created", md5("kc-y"), at(D1, "13:00:00"))
    result = make_source(db).extract(WINDOW)
    assert len(result.events) == 2  # what is left is still read
    assert not result.complete
    assert "metrics.metrics may already be drained" in result.coverage_note
    assert "2026-03-10T12:00:00+00:00" in result.coverage_note
    # The next day is still fully there.
    assert make_source(db).extract(NEXT_WINDOW).complete

    execute(db, "DELETE FROM metrics.metrics")
    empty = make_source(db).extract(NEXT_WINDOW)
    assert not empty.complete and "the table is empty" in empty.coverage_note
    # A deployment can opt out of the staging table: then only the log decides.
    opted_out = make_source(db, read_metrics_table=False).extract(NEXT_WINDOW)
    assert opted_out.complete, opted_out.coverage_note
    assert "data_connectors_created" not in opted_out.stats


# -- connection, permissions, errors -----------------------------------------------


def test_transaction_is_read_only_repeatable_read_in_utc(db):
    source = make_source(db)
    with source.transaction() as cur:
        cur.execute("SHOW transaction_read_only")
        assert cur.fetchone()[0] == "on"
        cur.execute("SHOW transaction_isolation")
        assert cur.fetchone()[0] == "repeatable read"
        cur.execute("SHOW TimeZone")
        assert cur.fetchone()[0] == "UTC"
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("INSERT INTO metrics.metrics (id, event, anonymous_user_id) VALUES ('x', 'y', 'z')")


@pytest.fixture
def reader_role(db):
    """A login role with exactly the documented grants, and one with none."""
    suffix = uuid.uuid4().hex[:8]
    reader, nobody = f"metrics_reader_{suffix}", f"metrics_nobody_{suffix}"
    execute(db, f"CREATE ROLE {reader} LOGIN PASSWORD %s", (PASSWORD_MARKER,))
    execute(db, f"CREATE ROLE {nobody} LOGIN PASSWORD %s", (PASSWORD_MARKER,))
    execute(
        db,
        f"""GRANT CONNECT ON DATABASE "{db["dbname"]}" TO {reader};
            GRANT USAGE ON SCHEMA resource_pools, metrics TO {reader};
            GRANT SELECT ON resource_pools.resource_requests_log, metrics.metrics TO {reader};""",
    )
    yield {"reader": reader, "nobody": nobody}
    execute(db, f"DROP OWNED BY {reader}, {nobody}")
    execute(db, f"DROP ROLE {reader}, {nobody}")


def test_select_on_the_two_tables_suffices_and_less_is_a_clear_error(db, reader_role):
    covering_captures(db)
    old_metrics_row(db)
    capture(db, "pod-a", "Running", at(D1, "10:00:00"), at(D1, "09:57:00"), "kc-a")
    env_reader = {"DSN": dsn(db, user=reader_role["reader"], password=PASSWORD_MARKER)}
    env_nobody = {"DSN": dsn(db, user=reader_role["nobody"], password=PASSWORD_MARKER)}
    settings = Settings.from_mapping({"dsn_env": "DSN"}, "test")

    result = Source("renkulab", settings, env_reader).extract(WINDOW)
    assert starts(result) == {(pseudonymize_user("kc-a"), at(D1, "09:57:00"), None)}

    with pytest.raises(SourceError) as info:
        Source("renkulab", settings, env_nobody).extract(WINDOW)
    message = str(info.value)
    assert "'renkulab'" in message and "data_services" in message
    assert "resource_pools.resource_requests_log" in message and "42501" in message
    assert "SELECT on" in message and PASSWORD_MARKER not in message


def test_missing_tables_name_the_table(postgres_db):
    with pytest.raises(SourceError) as info:
        make_source(postgres_db).extract(WINDOW)
    message = str(info.value)
    assert "resource_pools.resource_requests_log" in message and "42P01" in message
    assert "table missing" in message


def test_unreachable_database_message_has_no_password(postgres_server):
    port = free_port()
    env = {"DSN": f"postgresql://renku_metrics:{PASSWORD_MARKER}@127.0.0.1:{port}/renku_metrics"}
    source = Source("renkulab", Settings.from_mapping({"dsn_env": "DSN", "connect_timeout_seconds": 2}, "t"), env)
    with pytest.raises(SourceError) as info:
        source.extract(WINDOW)
    message = str(info.value)
    assert "'renkulab'" in message and "data_services" in message
    assert f"127.0.0.1:{port}/renku_metrics" in message and "OperationalError" in message
    assert PASSWORD_MARKER not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_wrong_password_message_has_no_password(db):
    env = {"DSN": dsn(db, password=PASSWORD_MARKER)}
    source = Source("renkulab", Settings.from_mapping({"dsn_env": "DSN"}, "t"), env)
    with pytest.raises(SourceError) as info:
        source.extract(WINDOW)
    message = str(info.value)
    assert "password authentication failed" in message and PASSWORD_MARKER not in message


# -- settings ----------------------------------------------------------------------


def test_settings_defaults_and_validation():
    settings = Settings.from_mapping({"dsn_env": "DSN"}, "where")
    assert settings.connect_timeout_seconds == 10 and settings.sslmode is None
    assert settings.capture_margin_minutes == 120 and settings.read_metrics_table is True
    assert settings.secret_env_vars() == {"dsn_env": "DSN"}
    with pytest.raises(ConfigError, match="missing required key 'dsn_env'"):
        Settings.from_mapping({}, "where")
    with pytest.raises(ConfigError, match="sslmode"):
        Settings.from_mapping({"dsn_env": "DSN", "sslmode": "sometimes"}, "where")
    with pytest.raises(ConfigError, match="DSN is not set"):
        Source("renkulab", settings, {})
    with pytest.raises(ConfigError) as info:
        Source("renkulab", settings, {"DSN": f"host=db password={PASSWORD_MARKER} nonsense"})
    assert "not a valid PostgreSQL connection string" in str(info.value)
    assert PASSWORD_MARKER not in str(info.value)


def test_sslmode_setting_reaches_the_connection(db):
    def uses_ssl(sslmode: str) -> bool:
        with make_source(db, sslmode=sslmode).transaction() as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return cur.fetchone()[0]

    assert uses_ssl("disable") is False
    # "require" either gets TLS or fails saying why (servers without TLS).
    try:
        assert uses_ssl("require") is True
    except SourceError as exc:
        assert "SSL" in str(exc)


def test_registered_under_data_services():
    assert source_module("data_services").Source is Source
    raw = {
        "deployments": [
            {"name": "renku2", "start_date": "2026-01-01", "sources": {"data_services": {"dsn_env": "RENKU2_DSN"}}}
        ]
    }
    # Loading does not need the secret; building the source does, and names it.
    config = parse_config(raw, "deployments.yaml")
    assert config.names == ["renku2"]
    with pytest.raises(ConfigError, match="RENKU2_DSN is not set"):
        build_sources(config.deployment("renku2"), env={})
    assert set(build_sources(config.deployment("renku2"), env={"RENKU2_DSN": "host=db"})) == {"data_services"}


# -- project ownership ------------------------------------------------------------------

PROJECTS_DDL = """
CREATE SCHEMA projects;
CREATE TYPE projects.visibility AS ENUM ('private', 'public');
CREATE TABLE projects.projects (
    id            varchar(26) PRIMARY KEY,  -- ULID
    name          varchar(99) NOT NULL,
    visibility    projects.visibility NOT NULL,
    created_by_id varchar NOT NULL,         -- Keycloak user id
    description   varchar(500),
    creation_date timestamptz NOT NULL DEFAULT now()
);
"""


def test_project_owners_are_the_creators(db):
    execute(db, PROJECTS_DDL)
    p1, p2, gone = ulid(), ulid(), ulid()
    execute(
        db,
        "INSERT INTO projects.projects (id, name, visibility, created_by_id) VALUES (%s, 'x', 'public', 'kc-ann'), "
        "(%s, 'y', 'private', 'kc-ben')",
        (p1, p2),
    )
    from renku_metrics.core.ownership import ProjectRecord

    got = make_source(db, project_ownership=True).project_owners([p1, p2, gone])
    assert got == {
        p1: ProjectRecord(p1, md5("kc-ann"), None, "public"),
        p2: ProjectRecord(p2, md5("kc-ben"), None, "private"),
        gone: None,  # deleted
    }
    assert make_source(db).project_owners([p1]) == {p1: None}  # off by default


def test_project_owners_without_the_table_name_it(db):
    with pytest.raises(SourceError, match=r"projects\.projects.*table missing"):
        make_source(db, project_ownership=True).project_owners([ulid()])
