"""Project ownership and the derived actions collaborate and start_shared_session, worked by hand.

People: A (alice) and B (bob) own projects; C (carol) owns nothing.
Projects: p1 is A's; p2 is B's fork of p1; p3 is A's fork of her own p1; p4 was deleted
(the source does not know it); p5 is B's fork of p9, which was deleted.
"""

from __future__ import annotations

import datetime as dt

import pytest

from renku_metrics.core.aggregate import aggregate_period
from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.config import Deployment
from renku_metrics.core.events import (
    SourceResult,
    TimeWindow,
    events_frame,
    is_user_key,
    make_event_id,
    pseudonymize_user,
)
from renku_metrics.core.extract import extract_day
from renku_metrics.core.layout import projects_key
from renku_metrics.core.ownership import ProjectRecord, derived_events, read_snapshot
from renku_metrics.core.readers import read_events
from renku_metrics.core.sources.demo import Settings as DemoSettings
from renku_metrics.core.sources.demo import Source as DemoSource
from renku_metrics.core.sources.demo import build_population
from renku_metrics.core.storage import LocalStorage

A, B, C = (pseudonymize_user(f"kc-{n}") for n in ("alice", "bob", "carol"))
RECORDS = {
    "p1": ProjectRecord("p1", A),
    "p2": ProjectRecord("p2", B, forked_from="p1"),
    "p3": ProjectRecord("p3", A, forked_from="p1"),
    "p4": None,
    "p5": ProjectRecord("p5", B, forked_from="p9"),
    "p9": None,
}
DAY = dt.date(2025, 3, 4)  # a Tuesday
WEEK = dt.date(2025, 3, 3)


def event(n: int, user: str, action: str, project: str | None, day: dt.date = DAY) -> dict:
    return {
        "event_id": make_event_id("dep", "fake", day, n),
        "deployment": "dep",
        "occurred_at": dt.datetime.combine(day, dt.time(10, n), dt.timezone.utc),
        "user_id": user,
        "action": action,
        "project_id": project,
        "project_visibility": None,
        "source": "fake",
    }


CASES = [
    # (user, action, project, derived action or None)
    (A, "commit", "p1", None),  # her own project
    (B, "commit", "p1", "collaborate"),  # someone else's project
    (B, "commit", "p2", "collaborate"),  # his own fork of A's project
    (A, "commit", "p3", None),  # a fork of her own project
    (A, "commit", "p2", "collaborate"),  # B's fork
    (C, "commit", "p4", None),  # deleted project: owner unknown
    (B, "commit", "p5", None),  # his fork of a deleted project: upstream owner unknown
    (C, "commit", "p1", "collaborate"),  # a user who owns nothing
    (C, "start_session", "p1", "start_shared_session"),
    (A, "start_session", "p2", "start_shared_session"),  # B's fork: not hers
    (B, "start_session", "p2", None),  # his own fork: forks count only for commits
    (C, "start_session", "p4", None),  # deleted project
    (C, "start_session", None, None),  # no project id
    (C, "login", None, None),
    (B, "create_dataset", "p1", None),  # only commits and session starts derive anything
]


def test_derived_actions_worked_by_hand():
    frame = events_frame([event(i, u, a, p) for i, (u, a, p, _) in enumerate(CASES)])
    derived = derived_events(frame, RECORDS)
    expected = [(u, d, p) for u, _, p, d in CASES if d]
    assert list(zip(derived["user_id"], derived["action"], derived["project_id"], strict=True)) == expected
    # each derived event keeps its event's time and gets its own stable id
    assert not set(derived["event_id"]) & set(frame["event_id"])
    again = derived_events(frame, RECORDS)
    assert list(again["event_id"]) == list(derived["event_id"])
    source_times = frame.set_index("event_id")["occurred_at"]
    assert list(derived["occurred_at"]) == [
        source_times[e["event_id"]] for i, e in enumerate(frame.to_dict("records")) if CASES[i][3]
    ]


class FakeSource:
    """A source with fixed events per day and a mutable ownership table (a transfer edits it)."""

    name = "fake"

    def __init__(self, events_by_day: dict[dt.date, list[dict]], owners: dict[str, ProjectRecord | None]):
        self.events_by_day = events_by_day
        self.owners = owners
        self.asked: list[list[str]] = []

    def extract(self, window: TimeWindow) -> SourceResult:
        return SourceResult(source="fake", events=[e for d in window.days() for e in self.events_by_day.get(d, [])])

    def project_owners(self, project_ids: list[str]) -> dict[str, ProjectRecord | None]:
        self.asked.append(list(project_ids))
        return {p: self.owners.get(p) for p in project_ids}


def _deployment() -> Deployment:
    return Deployment(name="dep", start_date=WEEK, sources={"demo": DemoSettings()})


def test_a_transfer_mid_week_counts_by_the_owner_at_the_time(tmp_path):
    storage = LocalStorage(tmp_path / "data")
    tue, thu = DAY, DAY + dt.timedelta(days=2)
    events = {
        tue: [event(1, A, "commit", "p1"), event(2, B, "commit", "p1"), event(3, C, "start_session", "p1")],
        thu: [event(1, A, "commit", "p1", thu), event(2, B, "commit", "p1", thu)],
    }
    source = FakeSource(events, {"p1": ProjectRecord("p1", A)})
    dep = _deployment()
    extract_day(storage, dep, tue, sources_by_type={"fake": source})
    source.owners["p1"] = ProjectRecord("p1", B)  # A transfers p1 to B on Wednesday
    extract_day(storage, dep, thu, sources_by_type={"fake": source})
    # Tuesday extracted again after the transfer: its own snapshot still says A owned p1 then.
    again = extract_day(storage, dep, tue, sources_by_type={"fake": source})
    assert source.asked == [["p1"], ["p1"]]  # the re-extract asked nothing new
    assert read_snapshot(storage, "dep", tue) == {"p1": ProjectRecord("p1", A)}
    assert read_snapshot(storage, "dep", thu) == {"p1": ProjectRecord("p1", B)}
    assert again.sources["fake"]["stats"] == {
        "ownership_projects": 1,
        "ownership_unknown_projects": 0,
        "derived_collaborate": 1,
        "derived_start_shared_session": 1,
    }
    assert again.by_action["collaborate"] == 1 and again.row_count == 5
    derived = read_events("dep", storage=storage)
    derived = derived[derived["action"].isin(["collaborate", "start_shared_session"])]
    assert sorted(zip(derived["occurred_at"].dt.date, derived["user_id"], derived["action"], strict=True)) == sorted(
        [(tue, B, "collaborate"), (tue, C, "start_shared_session"), (thu, A, "collaborate")]
    )
    # The weekly aggregate counts them like any action: A (Thursday) and B (Tuesday) collaborated,
    # C started a shared session; the active users are the same three as without ownership.
    now = dt.datetime(2025, 3, 12, tzinfo=dt.timezone.utc)
    week = aggregate_period(storage, [dep], load_catalog(), "week", WEEK, now)
    got = week.core_actions[week.core_actions["deployment"] == "dep"].set_index("metric")
    assert got.loc["collaborate", "users"] == 2 and got.loc["start_shared_session", "users"] == 1
    assert got.loc["commit", "users"] == 2 and got.loc["collaborate", "active_users"] == 3
    assert got.loc["collaborate", "pct"] == pytest.approx(100 * 2 / 3, abs=0.01)


def test_without_an_ownership_source_nothing_is_derived(tmp_path):
    storage = LocalStorage(tmp_path / "data")

    class Plain:
        name = "fake"

        def extract(self, window):
            return SourceResult(source="fake", events=[event(2, B, "commit", "p1")])

    done = extract_day(storage, _deployment(), DAY, sources_by_type={"fake": Plain()})
    assert done.row_count == 1 and "collaborate" not in done.by_action
    assert not storage.exists(projects_key("dep", DAY))


def test_demo_ownership_is_deterministic_and_has_collaboration():
    settings = DemoSettings(users=2000, seed=3)
    source = DemoSource("demo", settings)
    pop = build_population(settings)
    k = settings.projects_per_user  # 3: slot 0 own, slot 1 the partner's, slot 2 a fork of the partner's
    user = 7
    ids = [str(1000 + user * k + j) for j in range(k)]
    got = source.project_owners([*ids, "999", "12", "not-a-number"])
    assert got[ids[0]].owner == pop.user_keys[user] and got[ids[0]].forked_from is None
    assert got[ids[1]].owner == pop.user_keys[user + 1]
    assert got[ids[2]].owner == pop.user_keys[user] and got[ids[2]].forked_from == str(1000 + (user + 1) * k)
    assert got["999"].owner == pseudonymize_user("00000000-0000-4000-8000-0000000b0700")
    assert got["12"] is None and got["not-a-number"] is None
    assert source.project_owners(ids) == {i: got[i] for i in ids}
    # A day of the demo derives collaboration (about two of every three project slots are shared).
    day = dt.date(2025, 3, 4)
    frame = source.generate_day(day)
    derived = derived_events(frame, source.project_owners(sorted(set(frame["project_id"].dropna()))))
    commits = frame[frame["action"] == "commit"]
    assert 0 < (derived["action"] == "collaborate").sum() < len(commits)
    assert set(derived["action"]) == {"collaborate", "start_shared_session"}


def test_no_names_or_paths_in_the_snapshot(tmp_path):
    storage = LocalStorage(tmp_path / "data")
    source = FakeSource({DAY: [event(2, B, "commit", "p2")]}, RECORDS)
    extract_day(storage, _deployment(), DAY, sources_by_type={"fake": source})
    table = storage.read_parquet(projects_key("dep", DAY))
    assert table.column_names == ["project_id", "owner", "forked_from", "visibility", "found"]
    # p2 and the upstream it was forked from, p1, are both recorded
    assert sorted(table.column("project_id").to_pylist()) == ["p1", "p2"]
    assert all(is_user_key(owner) for owner in table.column("owner").to_pylist())  # user keys, not names
