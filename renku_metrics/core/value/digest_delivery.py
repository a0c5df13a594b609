"""Delivering a week's digest once per channel, whatever reruns, retries and backfills do.

Each (week, channel) has a delivery record in the storage
(``deliveries/digest/week=<week>/<channel>.json``, ``layout.delivery_record_key``):

* ``sent``: delivered; a rerun, a retry or a backfill skips the channel (only
  ``resend`` naming it sends again);
* ``sending``: written just before the message leaves; if a run dies between the send and
  the record of its result, the next run cannot know whether it arrived, so it does not
  send again: it reports the channel as interrupted (a person checks the channel and, if
  nothing arrived, reruns with ``resend``);
* ``failed``: the channel refused or never answered after its retries; the next run tries
  again.

Which weeks are sent: only the latest complete ISO week (the week before the one ``now``
falls in). Older weeks are "backfilled": their digest is written but never sent unless
``send_backfilled`` is true; the week in progress is never sent. Channels are tried one
after another; one that fails does not stop the others. Records hold no URL, no
recipient, no secret. Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from renku_metrics.core.delivery.smtp import build_message, send_message
from renku_metrics.core.delivery.webhook import DeliveryError, post_webhook
from renku_metrics.core.layout import delivery_record_key
from renku_metrics.core.storage import Storage
from renku_metrics.core.value.digest import (
    Digest,
    check_no_personal_data,
    to_html,
    to_mattermost,
    to_slack,
    to_text,
)
from renku_metrics.core.value.digest_config import Channel, DigestSettings, EmailChannel, WebhookChannel

CHART_CID = "digest-chart@renku-metrics"

SENT, SENDING, FAILED = "sent", "sending", "failed"
# Outcomes of one channel in one run.
DELIVERED = "delivered"
ALREADY_SENT = "already_sent"
NOT_SENT_BACKFILLED = "not_sent_backfilled"
NOT_SENT_IN_PROGRESS = "not_sent_week_in_progress"
INTERRUPTED = "interrupted"
FAILED_OUTCOME = "failed"
PROBLEMS = (INTERRUPTED, FAILED_OUTCOME)


@dataclass
class Outcome:
    channel: str
    outcome: str
    detail: str = ""
    attempts: int = 0

    @property
    def failed(self) -> bool:
        return self.outcome in PROBLEMS


def latest_complete_week(now: dt.datetime) -> dt.date:
    today = now.astimezone(dt.timezone.utc).date()
    return today - dt.timedelta(days=today.weekday() + 7)


def _stamp(now: dt.datetime) -> str:
    return now.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def read_record(storage: Storage, week: dt.date, channel: str) -> dict | None:
    key = delivery_record_key(week, channel)
    return storage.read_json(key) if storage.exists(key) else None


def _write(storage: Storage, week: dt.date, channel: Channel, status: str, **fields) -> None:
    record = {"week": week.isoformat(), "channel": channel.name, "type": channel.type, "status": status, **fields}
    storage.write_json(delivery_record_key(week, channel.name), record)


def _secret(env: Mapping[str, str], name: str | None, channel: str, what: str) -> str | None:
    if name is None:
        return None
    value = env.get(name)
    if not value:
        raise DeliveryError(f"channel {channel!r}: environment variable {name} ({what}) is not set")
    return value


def _send(
    channel: Channel,
    digest: Digest,
    env: Mapping[str, str],
    sleep: Callable[[float], None],
    attempts: int,
    backoff: float,
) -> int:
    if isinstance(channel, WebhookChannel):
        url = _secret(env, channel.webhook_url_env, channel.name, "the webhook URL")
        payload = (
            to_slack(digest) if channel.type == "slack" else to_mattermost(digest, channel.channel, channel.username)
        )
        check_no_personal_data(str(payload), f"channel {channel.name!r}")
        return post_webhook(url, payload, channel.name, attempts=attempts, backoff=backoff, sleep=sleep)
    assert isinstance(channel, EmailChannel)
    password = _secret(env, channel.password_env, channel.name, "the SMTP password")
    images = {CHART_CID: digest.chart_png} if digest.chart_png else {}
    plain, page = to_text(digest), to_html(digest, f"cid:{CHART_CID}" if images else None)
    check_no_personal_data(plain + page, f"channel {channel.name!r}")
    msg = build_message(
        subject=digest.title,
        sender=channel.sender,
        recipients=list(channel.recipients),
        plain=plain,
        html=page,
        images=images,
        message_id=f"<digest-{digest.week.isoformat()}-{channel.name}@renku-metrics>",
    )
    context = ssl.create_default_context(cafile=channel.ca_file) if channel.ca_file else None
    return send_message(
        msg,
        channel.host,
        channel.port,
        channel.name,
        username=channel.username,
        password=password,
        context=context,
        attempts=attempts,
        backoff=backoff,
        sleep=sleep,
    )


def deliver_digest(
    storage: Storage,
    digest: Digest,
    settings: DigestSettings,
    now: dt.datetime,
    env: Mapping[str, str] | None = None,
    send_backfilled: bool = False,
    resend: tuple[str, ...] | list[str] = (),
    sleep: Callable[[float], None] = time.sleep,
) -> list[Outcome]:
    """Send ``digest`` to every configured channel that has not had it; one Outcome per channel."""
    env = os.environ if env is None else env
    unknown = sorted(set(resend) - {c.name for c in settings.channels})
    if unknown:
        raise ValueError(
            f"resend names unknown channel(s) {', '.join(unknown)} (configured: "
            f"{', '.join(c.name for c in settings.channels) or 'none'})"
        )
    week = digest.week
    latest = latest_complete_week(now)
    fingerprint = hashlib.sha256(to_text(digest).encode()).hexdigest()[:16]
    outcomes = []
    for channel in settings.channels:
        record = read_record(storage, week, channel.name)
        forced = channel.name in resend
        if record and record.get("status") == SENT and not forced:
            outcomes.append(Outcome(channel.name, ALREADY_SENT, f"sent {record.get('sent_at', '')}"))
            continue
        if record and record.get("status") == SENDING and not forced:
            outcomes.append(
                Outcome(
                    channel.name,
                    INTERRUPTED,
                    f"a send started {record.get('started_at', '')} never recorded its result: check the channel; "
                    f"if the digest did not arrive, rerun with resend: [{channel.name}]",
                )
            )
            continue
        if week > latest:
            outcomes.append(Outcome(channel.name, NOT_SENT_IN_PROGRESS, f"the latest complete week is {latest}"))
            continue
        if week < latest and not (send_backfilled or forced):
            outcomes.append(Outcome(channel.name, NOT_SENT_BACKFILLED, f"older than the latest complete week {latest}"))
            continue
        _write(storage, week, channel, SENDING, started_at=_stamp(now), digest_sha256=fingerprint)
        try:
            used = _send(channel, digest, env, sleep, settings.retry_attempts, settings.retry_backoff_seconds)
        except (DeliveryError, ValueError) as exc:
            _write(storage, week, channel, FAILED, started_at=_stamp(now), error=str(exc), digest_sha256=fingerprint)
            outcomes.append(Outcome(channel.name, FAILED_OUTCOME, str(exc)))
            continue
        sent_at = _stamp(dt.datetime.now(dt.timezone.utc))
        _write(
            storage,
            week,
            channel,
            SENT,
            started_at=_stamp(now),
            sent_at=sent_at,
            attempts=used,
            digest_sha256=fingerprint,
        )
        outcomes.append(Outcome(channel.name, DELIVERED, f"after {used} attempt(s)", used))
    return outcomes
