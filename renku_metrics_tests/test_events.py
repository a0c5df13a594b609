import datetime as dt
import hashlib
import random
import re

import pytest

from renku_metrics.core.events import (
    EVENT_SCHEMA,
    TimeWindow,
    contains_email,
    events_frame,
    looks_personal,
    make_event_id,
    pseudonymize_user,
    redact_personal,
    to_arrow,
    validate_events,
)

DAY = dt.date(2025, 3, 4)
WINDOW = TimeWindow.for_day(DAY)
USER = pseudonymize_user("kc-1")


def event(**changes):
    base = {
        "event_id": make_event_id("alpha", "test", changes.pop("key", "k1")),
        "deployment": "alpha",
        "occurred_at": dt.datetime(2025, 3, 4, 12, tzinfo=dt.timezone.utc),
        "user_id": USER,
        "action": "commit",
        "project_id": "42",
        "project_visibility": "private",
        "source": "test",
    }
    base.update(changes)
    return base


def test_pseudonymize_matches_renku_analytics_key():
    assert pseudonymize_user("abc") == hashlib.md5(b"abc").hexdigest()
    with pytest.raises(ValueError):
        pseudonymize_user("")


def test_event_id_is_stable_and_distinguishes_inputs():
    assert make_event_id("a", "s", 1, "x") == make_event_id("a", "s", 1, "x")
    assert make_event_id("a", "s", 1, "x") != make_event_id("b", "s", 1, "x")
    assert len(make_event_id("a", "s")) == 32


def test_time_window_rejects_naive_and_empty():
    with pytest.raises(ValueError, match="UTC-aware"):
        TimeWindow(dt.datetime(2025, 1, 1), dt.datetime(2025, 1, 2))
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(ValueError, match="empty"):
        TimeWindow(start, start)
    assert TimeWindow(start, start + dt.timedelta(days=3)).days() == [dt.date(2025, 1, d) for d in (1, 2, 3)]


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"user_id": "someone@example.org"}, "user_id"),
        ({"user_id": None}, "user_id"),
        ({"action": "clone"}, "unknown action"),
        ({"occurred_at": dt.datetime(2025, 3, 5, tzinfo=dt.timezone.utc)}, "outside the window"),
        ({"occurred_at": "not a time"}, "occurred_at"),
        ({"deployment": "beta"}, "wrong deployment"),
        ({"project_id": "10.1.2.3"}, "personal data in project_id"),
        ({"project_visibility": "secret"}, "project_visibility"),
    ],
)
def test_invalid_records_are_rejected_with_reason(changes, reason):
    frame = events_frame([event(), event(key="k2", **changes)])
    good, rejected = validate_events(frame, WINDOW, "alpha")
    assert len(good) == 1
    assert len(rejected) == 1
    assert reason in rejected[0].reason


def test_window_edges_inclusive_start_exclusive_end():
    frame = events_frame(
        [
            event(key="a", occurred_at=dt.datetime(2025, 3, 4, tzinfo=dt.timezone.utc)),
            event(key="b", occurred_at=dt.datetime(2025, 3, 4, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)),
            event(key="c", occurred_at=dt.datetime(2025, 3, 5, tzinfo=dt.timezone.utc)),
        ]
    )
    good, rejected = validate_events(frame, WINDOW, "alpha")
    assert len(good) == 2 and len(rejected) == 1


def test_duplicate_ids_collapse_and_schema_is_exact():
    frame = events_frame([event(), event(), event(key="k2", project_id=None, project_visibility=None)])
    good, rejected = validate_events(frame, WINDOW, "alpha")
    assert len(good) == 2 and not rejected
    table = to_arrow(good)
    assert table.schema.equals(EVENT_SCHEMA)


def test_looks_personal():
    assert looks_personal("a.b@c.org")
    assert looks_personal("192.168.1.1")
    assert looks_personal("::1")
    assert not looks_personal("gitlab:12")
    assert not looks_personal(USER)
    assert not looks_personal(None)


# The email rule as a (backtracking, quadratic) regex: the reference for the linear scan.
EMAIL_REFERENCE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def test_contains_email_decides_exactly_the_reference_pattern():
    rng = random.Random(20261130)
    alphabet = ["a", "b", ".", "@", " ", "\t", "-", "é", "1"]
    samples = ["", "@", "a@b.c", "a@b.", "a@.c", "@b.c", "a @b.c", "a@b .c", "a@@b.c", "a@b@c.d", "x a@b.c y"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(20_000)]
    for text in samples:
        assert contains_email(text) == bool(EMAIL_REFERENCE.search(text)), repr(text)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a" * 1_000_000, False),  # the quadratic case of the regex: no "@" at all
        ("a@" * 500_000, False),  # an "@" every other character, never a dot
        ("a@" + "b" * 1_000_000, False),  # one endless domain without a dot
        ("@." * 500_000, False),
        (" a@b" * 250_000, False),
        ("x" * 1_000_000 + "@example.org", True),
        ("a@" * 500_000 + "b.c", True),
    ],
)
def test_personal_data_detection_finishes_on_megabyte_inputs(text, expected):
    # The scan reads each character at most twice: these finish at once (the regex took minutes).
    assert contains_email(text) is expected
    assert looks_personal(text) is expected


def test_redaction_keeps_a_hash_never_the_value():
    record = {"project_id": "jane.doe@example.org", "ip": "10.1.2.3", "n": 3, "list": ["ok", "::1"], "name": "x"}
    redacted = redact_personal(record)
    digest = hashlib.sha256(b"jane.doe@example.org").hexdigest()[:16]
    assert redacted == {
        "project_id": f"redacted:sha256:{digest}",
        "ip": "redacted:sha256:" + hashlib.sha256(b"10.1.2.3").hexdigest()[:16],
        "n": 3,
        "list": ["ok", "redacted:sha256:" + hashlib.sha256(b"::1").hexdigest()[:16]],
        "name": "x",
    }
    assert redact_personal("mail me: jane.doe@example.org").startswith("redacted:sha256:")
