"""The storage layout, defined once: every key is built and parsed here.

Under the storage root (a local directory or ``s3://bucket/prefix``)::

    raw_events/deployment=<name>/date=YYYY-MM-DD/events.parquet   canonical events of one UTC day
    raw_events/deployment=<name>/date=YYYY-MM-DD/_manifest.json   written last: what was extracted,
                                                                  per-source coverage and counts
    rejected/deployment=<name>/date=YYYY-MM-DD/rejected.jsonl     records that failed validation
    rejected/deployment=<name>/date=YYYY-MM-DD/withheld_events.parquet  a day that failed a blocking
                                                                  check (personal-looking values hashed)
    metrics/<table>/period=YYYY-MM-DD/<table>.parquet             one aggregate period (Monday of
                                                                  the ISO week, or 1st of the month)
    reports/<report>/<file>                                       the latest report (markdown and
                                                                  PNG charts), replaced on each run
    state/days/deployment=<name>/days.json                         derived, rebuilt when missing: each
                                                                  day's manifest version, events?, notes
    state/user_weeks/deployment=<name>/week=YYYY-MM-DD/user_weeks.parquet
                                                                  derived: users active in the ISO week,
                                                                  with a bitmask of their days
    state/first_seen/deployment=<name>/first_seen.parquet          derived: each user's first day seen
    state/raw_changes/deployment=<name>/YYYY-MM-DD/<stamp>_<day>_<token>
                                                                  empty: written by the extract around
                                                                  every write of a raw day (the day
                                                                  index reads those after its mark)

Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import re

EVENTS_FILE = "events.parquet"
MANIFEST_FILE = "_manifest.json"
_DAY_IN_KEY = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")


def raw_events_prefix(deployment: str) -> str:
    return f"raw_events/deployment={deployment}/"


def raw_events_key(deployment: str, day: dt.date) -> str:
    return f"{raw_events_prefix(deployment)}date={day.isoformat()}/{EVENTS_FILE}"


def manifest_key(deployment: str, day: dt.date) -> str:
    return f"{raw_events_prefix(deployment)}date={day.isoformat()}/{MANIFEST_FILE}"


def rejected_prefix(deployment: str) -> str:
    return f"rejected/deployment={deployment}/"


def rejected_key(deployment: str, day: dt.date) -> str:
    return f"{rejected_prefix(deployment)}date={day.isoformat()}/rejected.jsonl"


def withheld_key(deployment: str, day: dt.date) -> str:
    return f"{rejected_prefix(deployment)}date={day.isoformat()}/withheld_events.parquet"


def metrics_prefix(table: str) -> str:
    return f"metrics/{table}/"


def metrics_key(table: str, period_start: dt.date) -> str:
    return f"{metrics_prefix(table)}period={period_start.isoformat()}/{table}.parquet"


def report_key(report: str, file: str) -> str:
    return f"reports/{report}/{file}"


def day_of_key(key: str) -> dt.date:
    """The UTC day of a raw-events, manifest or rejected key."""
    match = _DAY_IN_KEY.search(key)
    if not match:
        raise ValueError(f"not a per-day key: {key!r}")
    return dt.date.fromisoformat(match.group(1))


def is_events_key(key: str) -> bool:
    return key.endswith("/" + EVENTS_FILE)


def is_manifest_key(key: str) -> bool:
    return key.endswith("/" + MANIFEST_FILE)


# Derived engagement state (renku_metrics.core.activity): small objects rebuilt from
# raw events whenever they are missing or stale; deleting ``state/`` is always safe.
STATE_PREFIX = "state/"


def day_index_key(deployment: str) -> str:
    return f"{STATE_PREFIX}days/deployment={deployment}/days.json"


def user_weeks_key(deployment: str, week: dt.date) -> str:
    return f"{STATE_PREFIX}user_weeks/deployment={deployment}/week={week.isoformat()}/user_weeks.parquet"


def first_seen_key(deployment: str) -> str:
    return f"{STATE_PREFIX}first_seen/deployment={deployment}/first_seen.parquet"


def raw_changes_prefix(deployment: str) -> str:
    return f"{STATE_PREFIX}raw_changes/deployment={deployment}/"


def raw_change_mark(at: dt.datetime) -> str:
    """A position in a deployment's raw-change log (relative to its prefix): keys sort by time."""
    at = at.astimezone(dt.timezone.utc)
    return f"{at:%Y-%m-%d}/{at:%Y%m%dT%H%M%S%f}Z"


def raw_change_key(deployment: str, at: dt.datetime, day: dt.date, token: str) -> str:
    """The change note of ``day``, written at ``at`` (``token`` keeps concurrent writers apart)."""
    return f"{raw_changes_prefix(deployment)}{raw_change_mark(at)}_{day.isoformat()}_{token}"


def changed_day_of_key(key: str) -> dt.date:
    return dt.date.fromisoformat(key.rsplit("/", 1)[-1].split("_")[1])


# The weekly digest (renku_metrics.core.value.digest): its files per ISO week, and one
# delivery record per (week, channel). Delivery records are not derived state: they are
# what stops a digest being sent twice, so they live outside ``state/``.
DIGEST_REPORT = "digest"


def digest_key(week: dt.date, file: str) -> str:
    """reports/digest/<week>/<file> (digest.md, digest.html, digest.png)."""
    return f"reports/{DIGEST_REPORT}/{week.isoformat()}/{file}"


def delivery_record_key(week: dt.date, channel: str) -> str:
    return f"deliveries/{DIGEST_REPORT}/week={week.isoformat()}/{channel}.json"


# Group membership snapshots (renku_metrics.core.value.groups): one object per deployment and
# weekly partition, named by the day the snapshot was taken:
#   groups/membership/deployment=<name>/week=YYYY-MM-DD/snapshot=YYYY-MM-DD.parquet
_SNAPSHOT_IN_KEY = re.compile(r"/week=(\d{4}-\d{2}-\d{2})/snapshot=(\d{4}-\d{2}-\d{2})\.parquet$")


def membership_prefix(deployment: str) -> str:
    return f"groups/membership/deployment={deployment}/"


def membership_key(deployment: str, week: dt.date, snapshot_date: dt.date) -> str:
    return f"{membership_prefix(deployment)}week={week.isoformat()}/snapshot={snapshot_date.isoformat()}.parquet"


def membership_of_key(key: str) -> tuple[dt.date, dt.date] | None:
    """(partition week, snapshot date) of a membership key; None for any other key."""
    match = _SNAPSHOT_IN_KEY.search(key)
    if not match:
        return None
    return dt.date.fromisoformat(match.group(1)), dt.date.fromisoformat(match.group(2))


# Releases and their measured impact (renku_metrics.core.value): one table each, rewritten whole.
def releases_key() -> str:
    return f"{metrics_prefix('releases')}releases.parquet"


def release_impact_key() -> str:
    return f"{metrics_prefix('release_impact')}release_impact.parquet"


def projects_key(deployment: str, day: dt.date) -> str:
    """The project-ownership snapshot the extract of ``day`` used (ids and user keys only):
    ``projects/deployment=<name>/date=YYYY-MM-DD/projects.parquet``."""
    return f"projects/deployment={deployment}/date={day.isoformat()}/projects.parquet"
