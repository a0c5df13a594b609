"""Extraction does not depend on the order of the days: any order stores what date order stores.

A record that appears on several days (a commit pushed by one user on 03-11 and
fast-forwarded onto master by another on 03-13) belongs to the earliest day.
"""

from __future__ import annotations

import datetime as dt
import random

import pandas as pd
import pytest

from renku_metrics.core.aggregate import aggregate_period
from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.extract import RecentEventIds, extract_day
from renku_metrics.core.layout import raw_events_key
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.storage import LocalStorage

from .helpers import NOW, ev

FIRST = dt.date(2025, 3, 3)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(21)]  # three ISO weeks


def records() -> list[dict]:
    """Commits that reappear on later days under other users, and plain events."""
    out = []
    rng = random.Random(7)
    for i in range(60):
        day = rng.choice(DAYS)
        when = f"{day.isoformat()}T{rng.randint(0, 23):02d}:00:00Z"
        out.append(ev(when, f"u{rng.randint(1, 6)}", rng.choice(["commit", "login", "create_dataset"]), id=f"r{i}"))
        if i % 3 == 0:  # the same record again, 1 to 12 days later, under another user
            later = day + dt.timedelta(days=rng.randint(1, 12))
            out.append(ev(f"{later.isoformat()}T08:00:00Z", f"u{rng.randint(7, 9)}", "commit", id=f"r{i}"))
    # One worked case: pushed by u1 on 03-11, fast-forwarded onto master by u2 on 03-13.
    out.append(ev("2025-03-11T10:00:00Z", "alice", "commit", id="ff"))
    out.append(ev("2025-03-13T10:00:00Z", "bob", "commit", id="ff"))
    return out


@pytest.fixture
def config(tmp_path, fixture_source):
    from .helpers import write_config

    return write_config(tmp_path, {"alpha": {"start_date": "2025-03-01", "events": records()}})


def extract_in_order(root, config, order) -> LocalStorage:
    storage = LocalStorage(root)
    deployment = config.deployments[0]
    recent = RecentEventIds(storage, deployment.name)  # one run: its cache spans the days
    for day in order:
        extract_day(storage, deployment, day, env={}, now=NOW, recent_ids=recent)
    return storage


def stored(storage: LocalStorage) -> dict[dt.date, pd.DataFrame]:
    out = {}
    for day in DAYS:
        key = raw_events_key("alpha", day)
        if storage.exists(key):
            frame = storage.read_parquet(key).to_pandas()
            out[day] = frame.sort_values("event_id").reset_index(drop=True)
    return out


def metrics(storage, config) -> pd.DataFrame:
    frames = []
    for monday in DAYS[::7]:
        result = aggregate_period(storage, config.deployments, load_catalog(), "week", monday, NOW)
        frames.append(result.core_actions.drop(columns=["computed_at"], errors="ignore").assign(week=monday))
    return pd.concat(frames, ignore_index=True)


def assert_same_store(a: LocalStorage, b: LocalStorage) -> None:
    left, right = stored(a), stored(b)
    assert left.keys() == right.keys()
    for day in left:
        pd.testing.assert_frame_equal(left[day], right[day], check_exact=True)
        ma, mb = Manifest.read(a, "alpha", day), Manifest.read(b, "alpha", day)
        assert (ma.row_count, ma.users, ma.by_action) == (mb.row_count, mb.users, mb.by_action)
        assert ma.row_count == len(left[day])


@pytest.fixture
def reference(tmp_path, config):
    return extract_in_order(tmp_path / "date-order", config, DAYS)


def test_the_worked_case_belongs_to_the_first_day_and_its_user(tmp_path, config):
    from renku_metrics.core.events import pseudonymize_user

    storage = extract_in_order(tmp_path / "later-first", config, [dt.date(2025, 3, 13), dt.date(2025, 3, 11)])
    days = stored(storage)
    ids_11 = set(days[dt.date(2025, 3, 11)]["event_id"])
    ids_13 = set(days[dt.date(2025, 3, 13)]["event_id"])
    assert not ids_11 & ids_13  # stored once
    all_rows = pd.concat(days.values())
    (ff,) = all_rows[all_rows["user_id"].isin([pseudonymize_user("alice"), pseudonymize_user("bob")])].itertuples()
    assert ff.user_id == pseudonymize_user("alice") and ff.occurred_at.day == 11


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_days_store_exactly_what_date_order_stores(tmp_path, config, reference, seed):
    order = list(DAYS)
    random.Random(seed).shuffle(order)
    shuffled = extract_in_order(tmp_path / f"shuffled-{seed}", config, order)
    assert_same_store(reference, shuffled)
    pd.testing.assert_frame_equal(metrics(reference, config), metrics(shuffled, config))


def test_reverse_order_and_separate_runs(tmp_path, config, reference):
    storage = LocalStorage(tmp_path / "runs")
    deployment = config.deployments[0]
    # The daily schedule ran first (the last days), then a backfill in two ranges, later range first,
    # each day extracted as its own run (no shared cache), and a retry of an early day at the end.
    for day in DAYS[-3:] + DAYS[10:18] + list(reversed(DAYS[:10])) + DAYS[18:] + [DAYS[2], DAYS[9]]:
        extract_day(storage, deployment, day, env={}, now=NOW)
    assert_same_store(reference, storage)
    pd.testing.assert_frame_equal(metrics(reference, config), metrics(storage, config))


def test_a_day_re_extracted_after_the_next_changes_nothing(tmp_path, config, reference):
    storage = extract_in_order(tmp_path / "again", config, DAYS + DAYS[5:12] + [DAYS[0]])
    assert_same_store(reference, storage)
    assert sum(len(f) for f in stored(storage).values()) == sum(len(f) for f in stored(reference).values())
