"""Records repeated across days: dedup is exact over the whole window, and a day reads only its window.

A record belongs to the earliest day it appears on within ``DEDUP_LOOKBACK_DAYS``
(test_extract_order.py checks that the order of extraction does not matter).
Here: the window's edges across a year boundary, ids that differ by one
character, large days with a known overlap, and what one day's extraction lists
and reads in a long history (the months of its window, never the whole
deployment).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from renku_metrics.core.config import Deployment
from renku_metrics.core.events import EVENT_SCHEMA, SourceResult, pseudonymize_user
from renku_metrics.core.extract import DEDUP_LOOKBACK_DAYS, RecentEventIds, extract_day
from renku_metrics.core.layout import raw_events_key, raw_events_prefix
from renku_metrics.core.sources.demo import Settings as DemoSettings
from renku_metrics.core.storage import LocalStorage

from .helpers import NOW

USER = pseudonymize_user("u1")


class IdsSource:
    """Returns, for each day, one login per given event id (ids stored exactly as given)."""

    name = "fixture"

    def __init__(self, deployment: str, by_day: dict[dt.date, list[str]]) -> None:
        self.deployment = deployment
        self.by_day = by_day

    def extract(self, window) -> SourceResult:
        day = window.start.date()
        return SourceResult(
            source=self.name,
            events=[_event(self.deployment, day, i, n) for n, i in enumerate(self.by_day.get(day, []))],
        )


def _event(deployment: str, day: dt.date, event_id: str, n: int = 0) -> dict:
    return {
        "event_id": event_id,
        "deployment": deployment,
        "occurred_at": dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
        + dt.timedelta(seconds=n % 86400),
        "user_id": USER,
        "action": "login",
        "project_id": None,
        "project_visibility": None,
        "source": "fixture",
    }


DEPLOYMENT = Deployment(name="alpha", start_date=dt.date(2023, 1, 1), sources={"demo": DemoSettings()})


def _extract(storage, by_day, order, recent: RecentEventIds | None = None) -> dict[dt.date, object]:
    source = {"fixture": IdsSource(DEPLOYMENT.name, by_day)}
    return {
        day: extract_day(storage, DEPLOYMENT, day, env={}, now=NOW, sources_by_type=source, recent_ids=recent)
        for day in order
    }


def _stored_ids(storage, day: dt.date) -> set[str]:
    key = raw_events_key(DEPLOYMENT.name, day)
    return set(storage.read_parquet(key).column("event_id").to_pylist()) if storage.exists(key) else set()


FIRST = dt.date(2024, 11, 20)
EDGE = FIRST + dt.timedelta(days=DEDUP_LOOKBACK_DAYS)  # 2025-02-18: the last day within the window
BEYOND = EDGE + dt.timedelta(days=1)


def _edge_records() -> dict[dt.date, list[str]]:
    return {
        FIRST: ["edge", "beyond", "only-first"],
        EDGE: ["edge", "only-edge"],
        BEYOND: ["beyond", "only-beyond"],
    }


@pytest.mark.parametrize("order", ["dates", "reverse", "separate runs"])
def test_the_window_ends_exactly_at_the_lookback_across_a_year_boundary(tmp_path, order):
    storage = LocalStorage(tmp_path / "root")
    days = [FIRST, EDGE, BEYOND]
    if order == "separate runs":  # one run per day, later days first: no cache is shared
        for day in reversed(days):
            _extract(storage, _edge_records(), [day])
    else:
        recent = RecentEventIds(storage, DEPLOYMENT.name)
        _extract(storage, _edge_records(), days if order == "dates" else list(reversed(days)), recent)
    assert _stored_ids(storage, FIRST) == {"edge", "beyond", "only-first"}
    assert _stored_ids(storage, EDGE) == {"only-edge"}  # 90 days later: the first day's record
    assert _stored_ids(storage, BEYOND) == {"beyond", "only-beyond"}  # 91 days later: a record of its own


def test_ids_that_differ_by_one_character_are_different_records(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    base = "0123456789abcdef0123456789abcdef"
    earlier = [base, "r1", "ABC", "ü", "x" * 300]
    later = [base[:-1] + "e", base.upper(), "r10", "r1 ", " r1", "abc", "u", "x" * 299, "x" * 301, "ü", "r1"]
    day1, day2 = dt.date(2025, 3, 1), dt.date(2025, 3, 5)
    done = _extract(storage, {day1: earlier, day2: later}, [day1, day2], RecentEventIds(storage, DEPLOYMENT.name))
    assert _stored_ids(storage, day2) == set(later) - {"ü", "r1"}
    assert done[day2].repeated_from_earlier_days == 2


def test_large_days_with_a_known_overlap_lose_exactly_that_overlap(tmp_path):
    day1, day2, day3 = dt.date(2025, 1, 30), dt.date(2025, 3, 2), dt.date(2025, 4, 29)  # days 0, 31 and 89
    ids = [f"{i:032x}" for i in range(30_000)]
    by_day = {day1: ids[:12_000], day2: ids[11_863:24_000], day3: ids[23_000:30_000] + ids[5:9]}
    for order in ([day1, day2, day3], [day3, day2, day1], [day2, day3, day1]):
        root = LocalStorage(tmp_path / "-".join(d.isoformat() for d in order))
        _extract(root, by_day, order, RecentEventIds(root, DEPLOYMENT.name))
        assert _stored_ids(root, day1) == set(ids[:12_000])
        assert _stored_ids(root, day2) == set(ids[12_000:24_000])  # 137 records were the first day's
        assert _stored_ids(root, day3) == set(ids[24_000:30_000])  # 1,000 of the second's, 4 of the first's


class RecordingStorage(LocalStorage):
    """Local storage that records what is listed and read."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.listed: list[str] = []
        self.read: list[str] = []

    def list_keys(self, prefix: str) -> list[str]:
        self.listed.append(prefix)
        return super().list_keys(prefix)

    def list_versions(self, prefix: str) -> dict[str, str]:
        self.listed.append(prefix)
        return super().list_versions(prefix)

    def read_bytes(self, key: str) -> bytes:
        self.read.append(key)
        return super().read_bytes(key)


def test_one_day_lists_and_reads_only_its_window_of_a_long_history(tmp_path):
    storage = RecordingStorage(tmp_path / "root")
    first, day = dt.date(2023, 1, 1), dt.date(2025, 4, 1)
    history = [first + dt.timedelta(days=i) for i in range((day - first).days)]
    for d in history:  # two years and three months of stored days, each with its own record
        path = Path(storage.uri(raw_events_key(DEPLOYMENT.name, d)))
        path.parent.mkdir(parents=True)
        event = _event(DEPLOYMENT.name, d, f"id-{d}")
        pq.write_table(pa.table({k: [v] for k, v in event.items()}, schema=EVENT_SCHEMA), path)
    # The new day repeats the records of the 90th and the 91st day before it.
    repeats = [f"id-{day - dt.timedelta(days=90)}", f"id-{day - dt.timedelta(days=91)}"]
    storage.listed.clear()
    done = _extract(storage, {day: ["new", *repeats]}, [day])
    assert done[day].repeated_from_earlier_days == 1
    assert _stored_ids(storage, day) == {"new", repeats[1]}
    prefix = raw_events_prefix(DEPLOYMENT.name)
    # One listing per calendar month of the window (2025-01-01 .. 2025-06-30), never the whole deployment.
    assert sorted(set(storage.listed)) == [f"{prefix}date=2025-0{m}-" for m in range(1, 7)]
    assert len(storage.listed) == 6
    read_days = {dt.date.fromisoformat(k.split("date=")[1][:10]) for k in storage.read if k.startswith(prefix)}
    assert min(read_days) == day - dt.timedelta(days=90) and max(read_days) <= day


def test_recent_ids_accept_sets_and_arrow_arrays_alike(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    recent = RecentEventIds(storage, DEPLOYMENT.name)
    day = dt.date(2025, 3, 1)
    recent.add(day - dt.timedelta(days=3), {"a", "b"})
    recent.add(day - dt.timedelta(days=2), pa.chunked_array([pa.array(["c"]), pa.array(["d"])]))
    recent.add(day + dt.timedelta(days=4), pa.array(["e", "a"]))
    assert recent.repeated_before(day, ["a", "c", "e", "z"]).tolist() == [True, True, False, False]
    assert recent.later_days_holding(day, pa.array(["e", "z"])) == {day + dt.timedelta(days=4): {"e"}}
    recent.remove(day + dt.timedelta(days=4), {"e"})
    assert recent.later_days_holding(day, {"e", "a"}) == {day + dt.timedelta(days=4): {"a"}}
    recent.add(day - dt.timedelta(days=3), [], published=False)
    assert recent.repeated_before(day, ["a", "b", "c"]).tolist() == [False, False, True]
