"""Amalthea's audit log on S3: session starts of Renku 1.x.

Amalthea writes one JSON line per change of a session's state to a local file
and uploads that file to S3 when it rotates it (daily by default), as
``{prefix}amalthea_audit_log_YYYYmmdd_HHMMSS+0000.txt``. The time in the name is
when the file was *started*; the file then collects lines until the next
rotation, so a day's lines sit partly in the object named the day before. A
line looks like::

    {"time": "2023-05-01T10:00:00+00:00",
     "message": {"uid": ..., "status": "running", "old_status": "starting",
                 "additional_labels": {"renku.io/userId": ..., ...}, ...}}

A session start is the transition ``starting`` -> ``running`` (a resumed session
goes hibernated -> starting -> running, a start too). The user and project ids
exist only when the deployment listed their labels in the audit log's extra
labels (inferred for renkulab.io, hence the ``*_label`` settings).

No Dagster in here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import RejectedRecord, SourceResult, TimeWindow, make_event_id, pseudonymize_user
from renku_metrics.core.sources.base import SettingsBase, SourceError, read_secret

SOURCE_NAME = "amalthea_audit_log"
log = logging.getLogger(__name__)

# Amalthea names the uploaded file after its local file /tmp/amalthea_audit_log.txt
# plus the start time of the rotation period.
_OBJECT_NAME = re.compile(r"^amalthea_audit_log_(\d{8}_\d{6}[+-]\d{4})\.txt$")
_ADDRESSING_STYLES = ("auto", "path", "virtual")


class Settings(SettingsBase):
    bucket: str
    # Literal key prefix of the objects. Amalthea uploads to
    # ``<its path_prefix> + "/" + name``, so for path_prefix "audit" this is "audit/".
    prefix: str = ""
    endpoint_url: str | None = None  # unset: AWS S3
    # Both set or both unset. Unset: boto3's standard credential chain
    # (AWS_* variables, shared config, instance or pod role).
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    # Which of the audit log's extra labels carry the Keycloak user id and the
    # project id (inferred for renkulab.io).
    user_id_label: str = "renku.io/userId"
    project_id_label: str = "renku.io/gitlabProjectId"
    # How long before the window start an object may have started and still hold
    # lines of the window: Amalthea's rotation period (rotation_period_seconds,
    # 86400 by default) plus a margin for restarts.
    lookback_hours: int = 26
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0
    max_attempts: int = 5

    def validate(self, where: str) -> None:
        if bool(self.access_key_id_env) != bool(self.secret_access_key_env):
            raise ConfigError(
                f"{where}: set both access_key_id_env and secret_access_key_env, or neither "
                "(to use the standard AWS credential chain)"
            )
        if self.addressing_style not in _ADDRESSING_STYLES:
            raise ConfigError(
                f"{where}.addressing_style: expected one of {', '.join(_ADDRESSING_STYLES)}, "
                f"got {self.addressing_style!r}"
            )
        for name in ("lookback_hours", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be at least 1")
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            if parts.username is not None or parts.password is not None or "@" in parts.netloc:
                # Such a URL ends up in logs and messages: credentials come from the environment only.
                raise ConfigError(
                    f"{where}.endpoint_url: carries credentials ({parts.scheme}://***@"
                    f"{parts.netloc.rsplit('@', 1)[-1]}): name them with access_key_id_env and "
                    "secret_access_key_env instead"
                )


@dataclass(frozen=True)
class AuditObject:
    key: str
    started_at: dt.datetime  # from the object's name
    last_modified: dt.datetime  # upload time, i.e. when Amalthea rotated the file


def parse_object_name(key: str, prefix: str) -> dt.datetime | None:
    """The start time in an audit-log object's key, or None if the key is not one."""
    if not key.startswith(prefix):
        return None
    match = _OBJECT_NAME.match(key[len(prefix) :])
    if not match:
        return None
    try:
        started = dt.datetime.strptime(match.group(1), "%Y%m%d_%H%M%S%z")
    except ValueError:
        return None
    return started.astimezone(dt.timezone.utc)


def objects_for_window(objects: Iterable[AuditObject], window: TimeWindow, lookback: dt.timedelta) -> list[AuditObject]:
    """The objects that can hold lines of ``window``, oldest first.

    An object holds lines from its start time until the next rotation, at most
    ``lookback`` later. The end bound is inclusive: the line that triggers a
    rotation goes into the new object, whose name (whole seconds) can equal
    that line's time.
    """
    earliest = window.start - lookback
    return sorted(
        (o for o in objects if earliest <= o.started_at <= window.end),
        key=lambda o: (o.started_at, o.key),
    )


def parse_time(value: Any) -> dt.datetime | None:
    """An ISO 8601 time with a UTC offset (as Amalthea writes it), in UTC; else None."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # ambiguous local time: reject rather than guess
    return moment.astimezone(dt.timezone.utc)


class Source:
    name = SOURCE_NAME

    def __init__(self, deployment: str, settings: Settings, env: Mapping[str, str]) -> None:
        self.deployment = deployment
        self.settings = settings
        where = f"deployment {deployment!r}: sources.{SOURCE_NAME}"
        credentials: dict[str, str] = {}
        if settings.access_key_id_env and settings.secret_access_key_env:
            credentials = {
                "aws_access_key_id": read_secret(env, settings.access_key_id_env, f"{where}.access_key_id_env"),
                "aws_secret_access_key": read_secret(
                    env, settings.secret_access_key_env, f"{where}.secret_access_key_env"
                ),
            }
        # An own session: never share credentials or region with other boto3 users
        # in the process (e.g. the storage of the pipeline itself).
        session = boto3.session.Session(region_name=settings.region, **credentials)
        self._client = session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            config=botocore.config.Config(
                connect_timeout=settings.connect_timeout_seconds,
                read_timeout=settings.read_timeout_seconds,
                retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                s3={"addressing_style": settings.addressing_style},
            ),
        )
        # Every HTTP request to the endpoint (retries included): the extraction's cost against
        # the store's rate limit, in the day's manifest.
        self.s3_requests = 0
        self._client.meta.events.register("before-send.s3", self._count_request)

    def _count_request(self, **_: Any) -> None:
        self.s3_requests += 1

    # -- S3 --------------------------------------------------------------------

    def _fail(self, action: str, target: str, exc: Exception) -> SourceError:
        """A SourceError naming deployment, source, the S3 location and the error code.

        Deliberately not the upstream message: it is not needed to act and the
        code plus status say what went wrong; credentials never appear.
        """
        where = f"deployment {self.deployment!r}, source {SOURCE_NAME!r}: {action} s3://{self.settings.bucket}/{target}"
        if isinstance(exc, botocore.exceptions.ClientError):
            code = exc.response.get("Error", {}).get("Code", "unknown")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            hint = {
                "NoSuchBucket": "the bucket does not exist",
                "AccessDenied": "the credentials need s3:ListBucket on the bucket and s3:GetObject on its objects",
                "InvalidAccessKeyId": "the access key id is not known to the endpoint",
                "SignatureDoesNotMatch": "the secret access key does not match the access key id",
                "NoSuchKey": "the object disappeared between listing and reading",
            }.get(code, "")
            return SourceError(f"{where} failed: {code} (HTTP {status}){': ' + hint if hint else ''}")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return SourceError(
                f"{where} failed: NoCredentialsError: no credentials found "
                "(set access_key_id_env and secret_access_key_env, or configure the AWS credential chain)"
            )
        if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)):
            endpoint = self._endpoint_for_messages()
            return SourceError(f"{where} failed: {type(exc).__name__}: cannot reach endpoint {endpoint}")
        return SourceError(f"{where} failed: {type(exc).__name__}")

    def _endpoint_for_messages(self) -> str:
        url = self.settings.endpoint_url
        if not url:
            return "AWS S3"
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"

    def list_objects(self) -> tuple[list[AuditObject], int]:
        """All audit-log objects under the prefix, and how many other keys were there."""
        prefix = self.settings.prefix
        objects, others = [], 0
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    started = parse_object_name(item["Key"], prefix)
                    if started is None:
                        others += 1
                        continue
                    objects.append(AuditObject(item["Key"], started, item["LastModified"].astimezone(dt.timezone.utc)))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail("listing", prefix, exc) from None
        return objects, others

    def read_lines(self, key: str) -> Iterator[bytes]:
        try:
            body = self._client.get_object(Bucket=self.settings.bucket, Key=key)["Body"]
            # Read whole: a failure half way must not leave a half-read object.
            data = body.read()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail("reading", key, exc) from None
        return iter(data.splitlines())

    # -- extraction ------------------------------------------------------------

    def extract(self, window: TimeWindow) -> SourceResult:
        s = self.settings
        self.s3_requests = 0
        result = SourceResult(source=SOURCE_NAME)
        objects, others = self.list_objects()
        candidates = objects_for_window(objects, window, dt.timedelta(hours=s.lookback_hours))
        stats = {
            "objects_listed": len(objects),
            "objects_read": len(candidates),
            "lines_read": 0,
            "lines_in_window": 0,
            "session_starts": 0,
            "lines_without_user": 0,
        }
        events: dict[str, dict[str, Any]] = {}
        for obj in candidates:
            for number, raw in enumerate(self.read_lines(obj.key), start=1):
                if not raw.strip():
                    continue
                stats["lines_read"] += 1
                self._handle_line(raw, obj.key, number, window, events, result.rejected, stats)
        result.events = sorted(events.values(), key=lambda e: (e["occurred_at"], e["event_id"]))
        stats["session_starts"] = len(result.events)
        result.stats = stats

        self._check_coverage(result, objects, others, window)
        if stats["lines_without_user"]:
            log.warning(
                "deployment %r, source %s: %d session starts in %s .. %s carry no %r label and are not counted",
                self.deployment,
                SOURCE_NAME,
                stats["lines_without_user"],
                window.start,
                window.end,
                s.user_id_label,
            )
        result.stats["s3_requests"] = self.s3_requests
        return result

    def _handle_line(
        self,
        raw: bytes,
        key: str,
        number: int,
        window: TimeWindow,
        events: dict[str, dict[str, Any]],
        rejected: list[RejectedRecord],
        stats: dict[str, int],
    ) -> None:
        where = {"object_key": key, "line_number": number}

        def reject(reason: str) -> None:
            # Only the location: the line itself holds user ids and image names.
            rejected.append(RejectedRecord(source=SOURCE_NAME, reason=reason, record=dict(where)))

        try:
            line = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            reject("malformed JSON line")
            return
        if not isinstance(line, dict):
            reject("line is not a JSON object")
            return
        moment = parse_time(line.get("time"))
        if moment is None:
            reject("missing or unparseable time (ISO 8601 with UTC offset expected)")
            return
        if not window.contains(moment):
            return  # belongs to another window, which judges it
        stats["lines_in_window"] += 1
        message = line.get("message")
        if not isinstance(message, dict):
            reject("message is not a JSON object")
            return
        if not (message.get("old_status") == "starting" and message.get("status") == "running"):
            return
        uid = message.get("uid")
        if not isinstance(uid, str) or not uid:
            reject("session start without uid")
            return
        labels = message.get("additional_labels") or {}
        if not isinstance(labels, dict):
            reject("additional_labels is not a JSON object")
            return
        user = labels.get(self.settings.user_id_label)
        if not isinstance(user, str) or not user.strip():
            stats["lines_without_user"] += 1
            return
        project = labels.get(self.settings.project_id_label)
        event_id = make_event_id(self.deployment, SOURCE_NAME, uid, moment.isoformat())
        events[event_id] = {
            "event_id": event_id,
            "deployment": self.deployment,
            "occurred_at": moment,
            "user_id": pseudonymize_user(user.strip()),
            "action": "start_session",
            "project_id": str(project) if project not in (None, "") else None,
            "project_visibility": None,
            "source": SOURCE_NAME,
        }

    def _check_coverage(
        self, result: SourceResult, objects: list[AuditObject], others: int, window: TimeWindow
    ) -> None:
        """Mark the result incomplete when lines of the window may not be in the bucket yet.

        Amalthea uploads a file only when it rotates it: lines after the newest
        upload are still in its local file. So the window is fully readable only
        once some object was uploaded at or after the window end.
        """
        location = f"s3://{self.settings.bucket}/{self.settings.prefix}"
        if not objects:
            result.complete = False
            result.coverage_note = (
                f"no audit-log objects under {location} "
                f"(expected names {self.settings.prefix}amalthea_audit_log_YYYYmmdd_HHMMSS+0000.txt"
                + (f"; {others} other objects are there: does the prefix end with '/'?" if others else "")
                + ")"
            )
            return
        newest_upload = max(o.last_modified for o in objects)
        if newest_upload < window.end:
            result.complete = False
            result.coverage_note = (
                f"newest audit-log object under {location} was uploaded at {newest_upload.isoformat()}, "
                f"before the window end {window.end.isoformat()}: later lines are still in Amalthea's "
                "open log file and arrive at its next rotation"
            )
