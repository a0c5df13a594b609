import datetime as dt
import hashlib

import pytest

from renku_metrics.core.events import (
    EVENT_SCHEMA,
    TimeWindow,
    events_frame,
    looks_personal,
    make_event_id,
    pseudonymize_user,
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
