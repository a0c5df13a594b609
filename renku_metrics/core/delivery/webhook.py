"""Posting a message to a chat incoming webhook (Slack, Mattermost), with retries.

Neither webhook has an idempotency key: a POST that succeeds is a message in the
channel, so the caller decides whether to post at all (see the digest's delivery
records). Here: 2xx is delivered; 429 waits for ``Retry-After`` (seconds or an HTTP
date, capped) and tries again; 5xx and connection errors are retried with exponential
backoff; any other 4xx (400 invalid_payload, 403, 404 channel_not_found, 410
channel_is_archived) cannot succeed by repeating and fails at once. Errors name the
channel and the HTTP status and body, never the webhook URL (it is a secret).
Plain Python, no Dagster, no metrics.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Callable

import requests


class DeliveryError(RuntimeError):
    """A message could not be delivered; the message names the channel and why."""


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


def post_webhook(
    url: str,
    payload: dict,
    channel: str,
    attempts: int = 4,
    backoff: float = 2.0,
    max_wait: float = 120.0,
    timeout: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
    session: requests.Session | None = None,
) -> int:
    """POST ``payload`` as JSON to ``url``; return the number of attempts it took.

    Raises DeliveryError naming ``channel`` when it was not delivered after ``attempts``.
    """
    http = session or requests.Session()
    try:
        return _post(http, url, payload, channel, attempts, backoff, max_wait, timeout, sleep)
    finally:
        if session is None:
            http.close()


def _post(http, url, payload, channel, attempts, backoff, max_wait, timeout, sleep) -> int:
    last = ""
    for attempt in range(1, attempts + 1):
        wait = backoff * 2 ** (attempt - 1)
        try:
            response = http.post(url, json=payload, timeout=timeout)
        except requests.RequestException as exc:
            last = f"connection failed ({type(exc).__name__})"
        else:
            if 200 <= response.status_code < 300:
                return attempt
            body = " ".join(response.text.split())[:200]
            last = f"HTTP {response.status_code} {body}".rstrip()
            if response.status_code == 429:
                asked = retry_after_seconds(response.headers.get("Retry-After"))
                if asked is not None:
                    if asked > max_wait:
                        raise DeliveryError(
                            f"channel {channel!r}: rate limited, Retry-After {asked:.0f}s is longer than {max_wait:.0f}s"
                        )
                    wait = max(asked, 0.0)
            elif response.status_code < 500:
                raise DeliveryError(f"channel {channel!r}: refused: {last} (not retried: repeating cannot succeed)")
        if attempt < attempts:
            sleep(min(wait, max_wait))
    raise DeliveryError(f"channel {channel!r}: not delivered after {attempts} attempts: {last}")
