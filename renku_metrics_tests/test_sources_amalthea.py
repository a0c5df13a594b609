"""The Amalthea audit-log source against a real S3 endpoint (moto's server)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid

import boto3
import pytest
import requests

from renku_metrics.core.config import parse_config
from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import TimeWindow, events_frame, pseudonymize_user, validate_events
from renku_metrics.core.sources import source_module
from renku_metrics.core.sources.amalthea import (
    AuditObject,
    Settings,
    Source,
    objects_for_window,
    parse_object_name,
    parse_time,
)
from renku_metrics.core.sources.base import SourceError

from .conftest import free_port

UTC = dt.timezone.utc
DAY = dt.date(2023, 5, 2)
WINDOW = TimeWindow.for_day(DAY)
ENV = {"AUDIT_S3_KEY": "testing", "AUDIT_S3_SECRET": "testing"}
SECRET = "never-print-this-secret-1234"


def at(day: dt.date, hms: str) -> dt.datetime:
    h, m, s = (int(x) for x in hms.split(":"))
    return dt.datetime(day.year, day.month, day.day, h, m, s, tzinfo=UTC)


def object_key(prefix: str, started: dt.datetime) -> str:
    return f"{prefix}amalthea_audit_log_{started.strftime('%Y%m%d_%H%M%S%z')}.txt"


def audit_line(
    time: str,
    uid: str,
    old: str | None,
    new: str | None,
    user: str | None = None,
    project: str | None = None,
    labels: dict | None = None,
) -> str:
    """One line as Amalthea's S3Formatter writes it."""
    if labels is None:
        labels = {}
        if user is not None:
            labels["renku.io/userId"] = user
        if project is not None:
            labels["renku.io/gitlabProjectId"] = project
    message = {
        "name": f"session-{uid}",
        "namespace": "renku",
        "uid": uid,
        "creation_timestamp": "2023-05-01T08:00:00+00:00",
        "resource_request": {"cpu_millicores": 500, "memory_bytes": 1e9, "disk_bytes": 1e9, "gpus": 0},
        "image": "registry.example.org/image:abc",
        "status": new,
        "old_status": old,
        "additional_labels": labels,
    }
    return json.dumps({"time": time, "message": message})


def put(endpoint: str, bucket: str, key: str, lines: list[str | bytes]) -> None:
    body = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(Bucket=bucket, Key=key, Body=body)


def make_source(endpoint: str, bucket: str, env: dict | None = None, **overrides) -> Source:
    raw = {
        "bucket": bucket,
        "prefix": "audit/",
        "endpoint_url": endpoint,
        "access_key_id_env": "AUDIT_S3_KEY",
        "secret_access_key_env": "AUDIT_S3_SECRET",
        "region": "us-east-1",
        "max_attempts": 1,
        "connect_timeout_seconds": 2,
    }
    raw.update(overrides)
    raw = {k: v for k, v in raw.items() if v is not None}
    return Source("renkulab", Settings.from_mapping(raw, "test"), ENV if env is None else env)


def starts(result) -> dict[str, dt.datetime]:
    """user key -> start time of the result's events (users are unique in these tests)."""
    return {e["user_id"]: e["occurred_at"] for e in result.events}


# -- plain functions ---------------------------------------------------------------


def test_parse_object_name_reads_the_start_time_and_ignores_other_keys():
    assert parse_object_name("audit/amalthea_audit_log_20230501_093000+0000.txt", "audit/") == at(
        dt.date(2023, 5, 1), "09:30:00"
    )
    assert parse_object_name("audit/amalthea_audit_log_20230501_093000+0200.txt", "audit/") == at(
        dt.date(2023, 5, 1), "07:30:00"
    )
    assert parse_object_name("audit/README.txt", "audit/") is None
    assert parse_object_name("audit/old/amalthea_audit_log_20230501_093000+0000.txt", "audit/") is None
    assert parse_object_name("audit/amalthea_audit_log_20231301_093000+0000.txt", "audit/") is None


def test_parse_time_requires_an_offset_and_converts_to_utc():
    assert parse_time("2023-05-02T01:30:00+02:00") == at(dt.date(2023, 5, 1), "23:30:00")
    assert parse_time("2023-05-02T01:30:00Z") == at(DAY, "01:30:00")
    assert parse_time("2023-05-02T01:30:00") is None
    assert parse_time("yesterday") is None
    assert parse_time(1683000000) is None


def test_objects_for_window_spans_lookback_to_window_end_inclusive():
    def obj(started: dt.datetime) -> AuditObject:
        return AuditObject(object_key("a/", started), started, started)

    lookback = dt.timedelta(hours=26)
    inside = [
        obj(WINDOW.start - lookback),  # oldest that can still hold lines of the window
        obj(at(DAY - dt.timedelta(days=1), "09:30:00")),
        obj(at(DAY, "09:30:12")),
        obj(WINDOW.end),  # its first line may be from the last second of the window
    ]
    outside = [
        obj(WINDOW.start - lookback - dt.timedelta(seconds=1)),
        obj(WINDOW.end + dt.timedelta(seconds=1)),
    ]
    chosen = objects_for_window(outside + list(reversed(inside)), WINDOW, lookback)
    assert chosen == inside


# -- extraction against S3 ---------------------------------------------------------


def test_day_lines_in_previous_days_object_and_which_transitions_are_starts(s3_endpoint, s3_bucket):
    prev, nxt = DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=1)
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(prev, "09:30:00")),
        [
            audit_line("2023-05-01T10:00:00+00:00", "s0", "starting", "running", user="kc-early"),  # day before
            audit_line(
                "2023-05-02T01:30:00+02:00", "s9", "starting", "running", user="kc-offset"
            ),  # 23:30 UTC day before
            audit_line("2023-05-02T01:00:00+00:00", "s1", None, "starting", user="kc-a"),  # new session: not a start
            audit_line("2023-05-02T01:15:00+00:00", "s1", "starting", "running", user="kc-a", project="42"),
            audit_line("2023-05-02T02:00:00+00:00", "s1", "running", "stopping", user="kc-a", project="42"),
            audit_line("2023-05-02T03:00:00+00:00", "s2", "starting", "failed", user="kc-failed"),
        ],
    )
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(DAY, "09:30:12")),
        [
            audit_line("2023-05-02T10:00:00+00:00", "s3", "hibernated", "starting", user="kc-b", project="7"),
            audit_line("2023-05-02T10:02:00+00:00", "s3", "starting", "running", user="kc-b", project="7"),  # resumed
            audit_line("2023-05-02T23:59:59+00:00", "s4", "starting", "running", user="kc-c"),
            audit_line("2023-05-03T00:00:00+00:00", "s5", "starting", "running", user="kc-next-day"),
        ],
    )
    # Objects that cannot hold lines of the window, each with a planted in-window start:
    # if either were read, its user would show up.
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(nxt, "09:30:20")),
        [
            audit_line("2023-05-02T12:00:00+00:00", "sz", "starting", "running", user="kc-planted-after"),
        ],
    )
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(DAY - dt.timedelta(days=3), "09:30:00")),
        [
            audit_line("2023-05-02T12:00:00+00:00", "sy", "starting", "running", user="kc-planted-before"),
        ],
    )
    put(s3_endpoint, s3_bucket, "audit/README.txt", ["not an audit log"])
    put(
        s3_endpoint,
        s3_bucket,
        object_key("elsewhere/", at(DAY, "00:00:00")),
        [
            audit_line("2023-05-02T12:00:00+00:00", "sx", "starting", "running", user="kc-other-prefix"),
        ],
    )

    result = make_source(s3_endpoint, s3_bucket).extract(WINDOW)

    assert starts(result) == {
        pseudonymize_user("kc-a"): at(DAY, "01:15:00"),
        pseudonymize_user("kc-b"): at(DAY, "10:02:00"),
        pseudonymize_user("kc-c"): at(DAY, "23:59:59"),
    }
    by_user = {e["user_id"]: e for e in result.events}
    assert by_user[pseudonymize_user("kc-a")]["project_id"] == "42"
    assert by_user[pseudonymize_user("kc-b")]["project_id"] == "7"
    assert by_user[pseudonymize_user("kc-c")]["project_id"] is None
    assert {e["action"] for e in result.events} == {"start_session"}
    assert {e["source"] for e in result.events} == {"amalthea_audit_log"}
    assert result.rejected == []
    assert result.complete, result.coverage_note
    assert result.stats["objects_listed"] == 4
    assert result.stats["objects_read"] == 2
    assert result.stats["session_starts"] == 3
    assert result.stats["lines_without_user"] == 0
    # The canonical validation accepts every event as is.
    valid, invalid = validate_events(events_frame(result.events), WINDOW, "renkulab")
    assert invalid == [] and len(valid) == 3


def test_the_previous_days_object_is_needed_for_early_lines(s3_endpoint, s3_bucket):
    """With a lookback shorter than the rotation period the early start is lost."""
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(DAY - dt.timedelta(days=1), "09:30:00")),
        [
            audit_line("2023-05-02T01:15:00+00:00", "s1", "starting", "running", user="kc-a"),
        ],
    )
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(DAY, "09:30:00")),
        [
            audit_line("2023-05-02T11:00:00+00:00", "s2", "starting", "running", user="kc-b"),
        ],
    )
    full = make_source(s3_endpoint, s3_bucket).extract(WINDOW)
    short = make_source(s3_endpoint, s3_bucket, lookback_hours=2).extract(WINDOW)
    assert set(starts(full)) == {pseudonymize_user("kc-a"), pseudonymize_user("kc-b")}
    assert set(starts(short)) == {pseudonymize_user("kc-b")}
    assert short.stats["objects_read"] == 1


def test_event_ids_are_stable_and_a_repeated_line_counts_once(s3_endpoint, s3_bucket):
    start = audit_line("2023-05-02T08:00:00+00:00", "s1", "starting", "running", user="kc-a")
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(DAY, "00:00:05")),
        [
            start,
            start,  # the same transition logged twice
            audit_line("2023-05-02T09:00:00+00:00", "s1", "running", "hibernated", user="kc-a"),
            audit_line("2023-05-02T12:00:00+00:00", "s1", "starting", "running", user="kc-a"),  # resumed later
        ],
    )
    first = make_source(s3_endpoint, s3_bucket).extract(WINDOW)
    second = make_source(s3_endpoint, s3_bucket).extract(WINDOW)
    ids = [e["event_id"] for e in first.events]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert ids == [e["event_id"] for e in second.events]
    # The deployment is part of the id: the same log read for another deployment differs.
    other = Source("other", make_source(s3_endpoint, s3_bucket).settings, ENV).extract(WINDOW)
    assert not set(ids) & {e["event_id"] for e in other.events}


def test_starts_without_user_label_are_counted_not_hidden(s3_endpoint, s3_bucket):
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(DAY, "00:00:00")),
        [
            audit_line("2023-05-02T08:00:00+00:00", "s1", "starting", "running", user="kc-a"),
            audit_line("2023-05-02T08:05:00+00:00", "s2", "starting", "running"),  # no labels at all
            audit_line("2023-05-02T08:06:00+00:00", "s3", "starting", "running", labels={"renku.io/userId": ""}),
            audit_line("2023-05-02T08:07:00+00:00", "s4", "starting", "running", labels={"custom/user": "kc-d"}),
            audit_line("2023-05-02T08:08:00+00:00", "s5", None, "starting"),  # not a start: not counted either
        ],
    )
    default = make_source(s3_endpoint, s3_bucket).extract(WINDOW)
    assert set(starts(default)) == {pseudonymize_user("kc-a")}
    assert default.stats["lines_without_user"] == 3
    # The label is a setting: a deployment that labels users differently.
    custom = make_source(s3_endpoint, s3_bucket, user_id_label="custom/user").extract(WINDOW)
    assert set(starts(custom)) == {pseudonymize_user("kc-d")}
    assert custom.stats["lines_without_user"] == 3


def test_malformed_lines_are_rejected_with_their_location_only(s3_endpoint, s3_bucket):
    key = object_key("audit/", at(DAY, "00:00:00"))
    put(
        s3_endpoint,
        s3_bucket,
        key,
        [
            audit_line("2023-05-02T08:00:00+00:00", "s1", "starting", "running", user="kc-a"),  # 1
            '{"time": "2023-05-02T08:01:00+00:00", "message": {"uid": "s2", "status": "runn',  # 2: cut off
            "[1, 2, 3]",  # 3
            json.dumps(
                {"time": "soon", "message": {"uid": "s3", "additional_labels": {"renku.io/userId": "kc-secret"}}}
            ),  # 4
            json.dumps({"time": "2023-05-02T08:02:00+00:00", "message": "kc-secret started"}),  # 5
            b'{"time": "2023-05-02T08:03:00+00:00", "message": {"uid": "\xff\xfe"}}',  # 6: not UTF-8
            "",  # blank lines are not records
            json.dumps({"time": "2023-05-01T08:02:00+00:00", "message": "other day"}),  # 8: another window's
            audit_line("2023-05-02T09:00:00+00:00", "s4", "starting", "running", user="kc-b"),  # 9
            json.dumps({"time": "2023-05-02T09:30:00", "message": {}}),  # 10: no UTC offset
        ],
    )
    result = make_source(s3_endpoint, s3_bucket).extract(WINDOW)

    assert set(starts(result)) == {pseudonymize_user("kc-a"), pseudonymize_user("kc-b")}
    assert sorted(r.record["line_number"] for r in result.rejected) == [2, 3, 4, 5, 6, 10]
    for record in result.rejected:
        assert record.source == "amalthea_audit_log"
        assert record.record == {"object_key": key, "line_number": record.record["line_number"]}
        assert "kc-secret" not in json.dumps(record.record) and "kc-secret" not in record.reason
    reasons = {r.record["line_number"]: r.reason for r in result.rejected}
    assert reasons[2] == "malformed JSON line"
    assert "time" in reasons[4] and "time" in reasons[10]


def test_window_not_yet_uploaded_is_reported_incomplete(s3_endpoint, s3_bucket):
    """Amalthea uploads a file at rotation: today's later lines are not in the bucket yet."""
    today = dt.datetime.now(UTC).date()
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(today - dt.timedelta(days=1), "09:30:00")),
        [
            audit_line(f"{today.isoformat()}T00:10:00+00:00", "s1", "starting", "running", user="kc-a"),
        ],
    )
    result = make_source(s3_endpoint, s3_bucket).extract(TimeWindow.for_day(today))
    assert set(starts(result)) == {pseudonymize_user("kc-a")}
    assert not result.complete
    assert "uploaded at" in result.coverage_note and "next rotation" in result.coverage_note
    # A past window is complete: objects uploaded after its end exist.
    past = make_source(s3_endpoint, s3_bucket).extract(TimeWindow.for_day(today - dt.timedelta(days=1)))
    assert past.complete, past.coverage_note


def test_prefix_without_trailing_slash_finds_nothing_and_says_why(s3_endpoint, s3_bucket):
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(DAY, "00:00:00")),
        [
            audit_line("2023-05-02T08:00:00+00:00", "s1", "starting", "running", user="kc-a"),
        ],
    )
    result = make_source(s3_endpoint, s3_bucket, prefix="audit").extract(WINDOW)
    assert result.events == []
    assert not result.complete
    assert "no audit-log objects" in result.coverage_note and "end with '/'" in result.coverage_note


def test_default_credential_chain_when_no_key_variables_are_set(s3_endpoint, s3_bucket, monkeypatch):
    """Without *_env settings boto3's chain is used (here: AWS_* variables set by the fixture)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    put(
        s3_endpoint,
        s3_bucket,
        object_key("audit/", at(DAY, "00:00:00")),
        [
            audit_line("2023-05-02T08:00:00+00:00", "s1", "starting", "running", user="kc-a"),
        ],
    )
    source = make_source(s3_endpoint, s3_bucket, env={}, access_key_id_env=None, secret_access_key_env=None)
    assert set(starts(source.extract(WINDOW))) == {pseudonymize_user("kc-a")}


# -- errors ------------------------------------------------------------------------


def test_missing_bucket_names_deployment_source_bucket_and_code(s3_endpoint):
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    source = make_source(s3_endpoint, missing, env={"AUDIT_S3_KEY": "testing", "AUDIT_S3_SECRET": SECRET})
    with pytest.raises(SourceError) as info:
        source.extract(WINDOW)
    message = str(info.value)
    assert "'renkulab'" in message and "amalthea_audit_log" in message
    assert f"s3://{missing}/audit/" in message and "NoSuchBucket" in message
    assert SECRET not in message


def test_unreachable_endpoint_is_a_source_error(s3_bucket):
    endpoint = f"http://127.0.0.1:{free_port()}"
    source = make_source(endpoint, s3_bucket, env={"AUDIT_S3_KEY": "testing", "AUDIT_S3_SECRET": SECRET})
    with pytest.raises(SourceError) as info:
        source.extract(WINDOW)
    message = str(info.value)
    assert "EndpointConnectionError" in message and endpoint in message and s3_bucket in message
    assert SECRET not in message


@contextlib.contextmanager
def moto_authentication(endpoint: str):
    """Make the moto server check signatures and IAM policies, then restore it."""
    previous = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).json()
    try:
        yield
    finally:
        requests.post(
            f"{endpoint}/moto-api/reset-auth",
            data=previous["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"].encode(),
            timeout=10,
        )


def iam_user_with_policy(endpoint: str, bucket: str, actions: list[str]) -> dict:
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    statements = []
    if "s3:ListBucket" in actions:
        statements.append({"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"})
    if "s3:GetObject" in actions:
        statements.append({"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{bucket}/*"})
    iam.put_user_policy(
        UserName=name,
        PolicyName="audit-log-read",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AUDIT_S3_KEY": key["AccessKeyId"], "AUDIT_S3_SECRET": key["SecretAccessKey"]}


def test_credentials_are_checked_and_read_only_access_suffices(s3_endpoint, s3_bucket):
    key = object_key("audit/", at(DAY, "00:00:00"))
    put(
        s3_endpoint,
        s3_bucket,
        key,
        [
            audit_line("2023-05-02T08:00:00+00:00", "s1", "starting", "running", user="kc-a"),
        ],
    )
    reader = iam_user_with_policy(s3_endpoint, s3_bucket, ["s3:ListBucket", "s3:GetObject"])
    lister = iam_user_with_policy(s3_endpoint, s3_bucket, ["s3:ListBucket"])
    wrong_secret = dict(reader, AUDIT_S3_SECRET=SECRET)
    unknown_key = {"AUDIT_S3_KEY": "AKIAUNKNOWNUNKNOWN00", "AUDIT_S3_SECRET": SECRET}

    with moto_authentication(s3_endpoint):
        # The documented permissions (s3:ListBucket + s3:GetObject) are enough.
        result = make_source(s3_endpoint, s3_bucket, env=reader).extract(WINDOW)
        assert set(starts(result)) == {pseudonymize_user("kc-a")}

        failures = {}
        for label, env in [("wrong_secret", wrong_secret), ("unknown_key", unknown_key), ("lister", lister)]:
            with pytest.raises(SourceError) as info:
                make_source(s3_endpoint, s3_bucket, env=env).extract(WINDOW)
            failures[label] = str(info.value)

    assert "SignatureDoesNotMatch" in failures["wrong_secret"] and "listing" in failures["wrong_secret"]
    assert "InvalidAccessKeyId" in failures["unknown_key"]
    # Listing is allowed, reading is not: the message names the object it could not read.
    assert "AccessDenied" in failures["lister"] and f"s3://{s3_bucket}/{key}" in failures["lister"]
    assert "s3:GetObject" in failures["lister"]
    for message in failures.values():
        assert "'renkulab'" in message and "amalthea_audit_log" in message
        assert SECRET not in message and reader["AUDIT_S3_SECRET"] not in message


# -- settings ----------------------------------------------------------------------


def test_settings_defaults_and_validation():
    settings = Settings.from_mapping({"bucket": "audit-logs"}, "where")
    assert settings.prefix == "" and settings.endpoint_url is None
    assert settings.user_id_label == "renku.io/userId"
    assert settings.project_id_label == "renku.io/gitlabProjectId"
    assert settings.secret_env_vars() == {}
    with pytest.raises(ConfigError, match="both access_key_id_env and secret_access_key_env"):
        Settings.from_mapping({"bucket": "b", "access_key_id_env": "K"}, "where")
    with pytest.raises(ConfigError, match="addressing_style"):
        Settings.from_mapping({"bucket": "b", "addressing_style": "sideways"}, "where")
    with pytest.raises(ConfigError, match="unknown key 'path_prefix'"):
        Settings.from_mapping({"bucket": "b", "path_prefix": "audit"}, "where")
    with pytest.raises(ConfigError, match="missing required key 'bucket'"):
        Settings.from_mapping({}, "where")


def test_registered_and_secrets_checked_through_deployments_config():
    assert source_module("amalthea_audit_log").Source is Source
    raw = {
        "deployments": [
            {
                "name": "renkulab",
                "start_date": "2023-01-01",
                "sources": {
                    "amalthea_audit_log": {
                        "bucket": "audit-logs",
                        "prefix": "audit/",
                        "access_key_id_env": "AUDIT_S3_KEY",
                        "secret_access_key_env": "AUDIT_S3_SECRET",
                    }
                },
            }
        ]
    }
    # Loading does not need the secrets; building the source does, and names the one missing.
    config = parse_config(raw, "deployments.yaml")
    with pytest.raises(ConfigError, match="AUDIT_S3_SECRET is not set"):
        Source("renkulab", config.deployment("renkulab").sources["amalthea_audit_log"], {"AUDIT_S3_KEY": "k"})
    assert config.deployment("renkulab").sources["amalthea_audit_log"].bucket == "audit-logs"
    # Secrets are read when the source is built, and a missing one names its variable.
    with pytest.raises(ConfigError, match="AUDIT_S3_KEY"):
        Source("renkulab", config.deployment("renkulab").sources["amalthea_audit_log"], {})
