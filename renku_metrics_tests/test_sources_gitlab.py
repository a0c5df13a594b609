"""The GitLab connector against the GitLab simulator, and the commit message classifier."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections import Counter

import pytest

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import EVENT_COLUMNS, TimeWindow, events_frame, validate_events
from renku_metrics.core.sources import source_module
from renku_metrics.core.sources.base import SourceError
from renku_metrics.core.sources.gitlab import CREATE_DATASET, RUN_WORKFLOW, Settings, Source, classify_commit_message
from renku_metrics_tests.simulators import parse_iso
from renku_metrics_tests.simulators.gitlab_sim import GitLabSimulator

UTC = dt.timezone.utc
D = dt.date(2024, 5, 14)
START = dt.datetime(2024, 5, 14, tzinfo=UTC)
WINDOW = TimeWindow.for_day(D)
MS = dt.timedelta(milliseconds=1)
TOKEN_ENV = "TEST_GITLAB_TOKEN"

ALICE, BOB, CAROL, ROBOT, CI, GONE, DAVE = 1, 2, 3, 4, 5, 6, 7


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def at(hours: float = 0, days: int = 0) -> dt.datetime:
    return START + dt.timedelta(days=days, hours=hours)


SIM_NOW = START + dt.timedelta(days=1, hours=2)  # every test runs at this moment, whatever today is


@pytest.fixture
def gitlab():
    sim = GitLabSimulator(now=lambda: SIM_NOW)
    sim.add_user(ALICE, "alice", extern_uid="kc-alice")
    sim.add_user(BOB, "bob", extern_uid="kc-bob")
    sim.add_user(CAROL, "carol")  # no Keycloak identity
    sim.add_user(ROBOT, "project_10_bot", bot=True)
    sim.add_user(CI, "ci-runner", extern_uid="kc-ci")
    sim.add_user(DAVE, "dave", extern_uid="gh-dave", provider="github")
    # GONE (6) has no user record: a deleted account.
    with sim:
        yield sim


def make_source(sim: GitLabSimulator, now=None, **overrides) -> Source:
    values = dict(url=sim.url, token_env=TOKEN_ENV, backoff_seconds=0.001, max_backoff_seconds=0.005)
    values.update(overrides)
    return Source("testdep", Settings(**values), {TOKEN_ENV: sim.token}, now=now or (lambda: SIM_NOW))


def actions(result) -> Counter:
    return Counter(e["action"] for e in result.events)


# -- classification -------------------------------------------------------------------


@pytest.mark.parametrize(
    "message,expected",
    [
        ("renku dataset create my-dataset", CREATE_DATASET),
        ("renku dataset create my-dataset\n\nrenku-transaction: 2ff1f09bd9424270ac27f80f759b5388", CREATE_DATASET),
        ("renku dataset import --name flight-data https://www.doi.org/10.7910/DVN/WTZS4K", CREATE_DATASET),
        ("renku dataset add --create my-ds data/file.csv", CREATE_DATASET),
        ("renku dataset add -c my-ds https://example.org/file.csv", CREATE_DATASET),
        ("renku dataset add -cf my-ds file.csv", CREATE_DATASET),
        ("renku dataset add my-ds file.csv", None),
        ("renku dataset ls", None),
        ("renku --path ../project dataset create ds", CREATE_DATASET),
        ("renku --no-external-storage dataset create ds", CREATE_DATASET),
        ("/opt/conda/bin/renku dataset create ds", CREATE_DATASET),
        ("renkulab.io: dataset create my-slug", CREATE_DATASET),
        ("renkulab.io: dataset import of https://zenodo.org/record/3363060", CREATE_DATASET),
        ("renku-ci-ui-2620.dev.renku.ch: dataset create x", CREATE_DATASET),
        ("renkulab.io: dataset add my-slug", None),
        ("renkulab.io: init Flights tutorial", None),
        ("renku run python train.py --epochs 3", RUN_WORKFLOW),
        ("renku run --name train python train.py\n\nrenku-transaction: abc", RUN_WORKFLOW),
        ("renku workflow execute my-plan", RUN_WORKFLOW),
        ("renku workflow iterate my-plan --map lr=[0.1,0.2]", RUN_WORKFLOW),
        ("renku rerun output/model.pkl", RUN_WORKFLOW),
        ("renku update --all", RUN_WORKFLOW),
        ("renku workflow ls", None),
        ("renku workflow edit my-plan", None),
        ("renku save -m 'update data'", None),
        ("renku migrate", None),
        ("fix: dataset create crashes on empty name", None),
        ("Update README.md", None),
        ("Merge branch 'main'\n\nrenku run python x.py", None),
        ("  renku run python x.py  ", RUN_WORKFLOW),
        ("renkurun python x.py", None),
        ("", None),
        (None, None),
    ],
)
def test_classify_commit_message(message, expected):
    assert classify_commit_message(message) == expected


def test_classify_web_ui_prefix_checks_the_configured_domain():
    assert classify_commit_message("renkulab.io: dataset create ds", renku_domain="renkulab.io") == CREATE_DATASET
    assert classify_commit_message("RenkuLab.io: dataset create ds", renku_domain="renkulab.io") == CREATE_DATASET
    assert classify_commit_message("dev.renku.ch: dataset create ds", renku_domain="renkulab.io") is None
    assert classify_commit_message("gitlab.renkulab.io: dataset create ds", renku_domain="renkulab.io") is None
    # The CLI forms do not depend on the domain.
    assert classify_commit_message("renku dataset create ds", renku_domain="renkulab.io") == CREATE_DATASET


# -- settings -------------------------------------------------------------------------


def test_settings_keys_and_defaults():
    settings = source_module("gitlab").Settings.from_mapping(
        {"url": "https://gitlab.renkulab.io", "token_env": "GL", "exclude_users": ["ci-runner", "renku-bot"]},
        "deployments.yaml: deployment 'x': sources.gitlab",
    )
    assert settings.identity_provider == "oauth2_generic"
    assert settings.exclude_users == ("ci-runner", "renku-bot")
    assert settings.renku_domain is None and settings.activity_margin_hours == 2.0
    assert settings.page_size == 100 and settings.max_concurrency == 4
    assert settings.secret_env_vars() == {"token_env": "GL"}
    with pytest.raises(ConfigError, match=r"activity_margin_hours: must be more than 1"):
        Settings.from_mapping({"url": "https://g", "token_env": "GL", "activity_margin_hours": 1}, "sources.gitlab")
    with pytest.raises(ConfigError, match=r"page_size"):
        Settings.from_mapping({"url": "https://g", "token_env": "GL", "page_size": 500}, "sources.gitlab")
    with pytest.raises(ConfigError, match=r"renku_domain"):
        Settings.from_mapping(
            {"url": "https://g", "token_env": "GL", "renku_domain": "https://renkulab.io/"}, "sources.gitlab"
        )
    with pytest.raises(ConfigError, match="TEST_NOT_SET is not set"):
        Source("d", Settings(url="https://g", token_env="TEST_NOT_SET"), {})


# -- commits and classified actions -------------------------------------------------------


def test_commits_and_renku_actions_of_a_push(gitlab):
    gitlab.add_project(10, visibility="public", last_activity_at=at(days=-30))
    gitlab.push(10, ALICE, at(-48), ["Initial commit"])  # two days before: not in the window
    push = gitlab.push(10, ALICE, at(10), ["renku dataset create ds", "renku run python a.py", "Fix typo"])

    result = make_source(gitlab).extract(WINDOW)

    assert actions(result) == {"commit": 3, CREATE_DATASET: 1, RUN_WORKFLOW: 1}
    for event in result.events:
        assert set(event) == set(EVENT_COLUMNS)
        assert event["user_id"] == md5("kc-alice")
        assert event["occurred_at"] == parse_iso(push["created_at"]) == at(10)  # the push time
        assert event["project_id"] == "10" and event["project_visibility"] == "public"
        assert event["source"] == "gitlab" and event["deployment"] == "testdep"
    assert len({e["event_id"] for e in result.events}) == 5
    assert result.complete and result.stats["commits"] == 3 and result.stats["unmapped_authors"] == 0
    # Several commits: read exactly the pushed range.
    (commits_request,) = gitlab.requests_to("/repository/commits")
    assert commits_request.query["ref_name"] == [
        f"{push['push_data']['commit_from']}..{push['push_data']['commit_to']}"
    ]
    valid, rejected = validate_events(events_frame(result.events), WINDOW, "testdep")
    assert len(valid) == 5 and rejected == []


def test_single_commit_push_needs_no_commits_request(gitlab):
    gitlab.add_project(10, visibility="internal")
    gitlab.push(10, ALICE, at(-30), ["Initial commit"])
    gitlab.push(10, ALICE, at(9), ["renkulab.io: dataset import of https://zenodo.org/record/1"])
    gitlab.push(10, BOB, at(11), ["renku workflow iterate plan --map x=[1,2]"])

    result = make_source(gitlab, renku_domain="renkulab.io").extract(WINDOW)

    assert actions(result) == {"commit": 2, CREATE_DATASET: 1, RUN_WORKFLOW: 1}
    assert {e["user_id"] for e in result.events if e["action"] == RUN_WORKFLOW} == {md5("kc-bob")}
    assert {e["project_visibility"] for e in result.events} == {"internal"}
    assert gitlab.requests_to("/repository/commits") == []


def test_web_ui_commits_of_another_domain_are_plain_commits(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, ALICE, at(9), ["dev.renku.ch: dataset create ds"])
    result = make_source(gitlab, renku_domain="renkulab.io").extract(WINDOW)
    assert actions(result) == {"commit": 1}


def test_push_events_at_the_day_bounds(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, ALICE, START - MS, ["late yesterday"])  # 23:59:59.999 the day before
    gitlab.push(10, ALICE, START, ["midnight"])  # 00:00:00.000
    gitlab.push(10, ALICE, START + dt.timedelta(days=1) - MS, ["last moment"])  # 23:59:59.999
    gitlab.push(10, ALICE, START + dt.timedelta(days=1), ["tomorrow"])  # 00:00:00.000 the next day

    result = make_source(gitlab).extract(WINDOW)

    times = sorted(e["occurred_at"] for e in result.events)
    assert times == [START, dt.datetime(2024, 5, 14, 23, 59, 59, 999000, tzinfo=UTC)]
    (events_request,) = gitlab.requests_to("/projects/10/events")
    # Day D is after=D-1&before=D+1 (exclusive), widened by the one-day margin.
    assert events_request.query["after"] == ["2024-05-12"] and events_request.query["before"] == ["2024-05-16"]
    assert events_request.query["action"] == ["pushed"] and events_request.query["sort"] == ["asc"]


def test_bulk_push_loses_no_commits(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, BOB, at(days=-40), ["old history 1", "old history 2"])  # master, long before
    bulk = gitlab.bulk_push(
        10,
        ALICE,
        at(15),
        {
            "feature-a": ["a1", "a2"],
            "feature-b": ["b1", ("renku workflow execute plan", at(15.5))],  # committer clock 30 min ahead
            "feature-c": ["renku dataset create c", "c2"],
            "feature-d": ["d1", "d2"],
        },
    )
    assert bulk["push_data"]["commit_count"] == 0 and bulk["push_data"]["ref"] is None

    result = make_source(gitlab).extract(WINDOW)

    assert actions(result) == {"commit": 8, RUN_WORKFLOW: 1, CREATE_DATASET: 1}
    assert {e["user_id"] for e in result.events} == {md5("kc-alice")}
    assert result.stats["bulk_pushes"] == 1 and result.stats["commits"] == 8
    (commits_request,) = gitlab.requests_to("/repository/commits")
    assert commits_request.query["all"] == ["true"]
    assert commits_request.query["since"] == ["2024-04-14T15:00:00Z"]
    assert commits_request.query["until"] == ["2024-05-14T16:00:00Z"]


def test_new_branch_counts_only_its_own_commits_and_first_push_counts_all(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, BOB, at(days=-3), ["m1", "m2"])  # the default branch, before the window
    gitlab.push(10, ALICE, at(8), ["f1", "renku run python f.py", "f3"], branch="feature", base="master")
    gitlab.add_project(20, default_branch="main")
    gitlab.push(20, BOB, at(9), ["first", "second", "third", "fourth"], branch="main")  # an empty repo's first push

    result = make_source(gitlab).extract(WINDOW)

    by_project = Counter((e["project_id"], e["action"]) for e in result.events)
    assert by_project == {("10", "commit"): 3, ("10", RUN_WORKFLOW): 1, ("20", "commit"): 4}
    # New branches are read from their head, as many commits as GitLab counted.
    reads = {r.path: r.query for r in gitlab.requests_to("/repository/commits")}
    assert reads["/api/v4/projects/10/repository/commits"]["ref_name"] == [gitlab.repos[10].branches["feature"]]
    assert reads["/api/v4/projects/10/repository/commits"]["per_page"] == ["3"]
    assert reads["/api/v4/projects/20/repository/commits"]["ref_name"] == [gitlab.repos[20].branches["main"]]


def test_commits_are_deduplicated_by_sha_within_a_project(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, BOB, at(days=-2), ["base"])
    gitlab.push(10, ALICE, at(9), ["feature work", "renku dataset create ds"], branch="feature", base="master")
    head = gitlab.repos[10].branches["feature"]
    gitlab.move_branch(10, BOB, at(12), "master", head)  # a fast-forward merge brings the same commits again

    result = make_source(gitlab).extract(WINDOW)

    assert actions(result) == {"commit": 2, CREATE_DATASET: 1}
    assert {e["user_id"] for e in result.events} == {md5("kc-alice")}  # the first push wins
    assert {e["occurred_at"] for e in result.events} == {at(9)}


def test_deleted_branches_and_deleted_projects_add_nothing(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, ALICE, at(days=-2), ["base"])
    gitlab.push(10, ALICE, at(days=-2, hours=1), ["x"], branch="old", base="master")
    gitlab.delete_branch(10, ALICE, at(9), "old")
    gitlab.add_project(11)
    gitlab.push(11, ALICE, at(10), ["gone soon"])
    gitlab.gone_projects.add(11)

    result = make_source(gitlab).extract(WINDOW)

    assert result.events == []
    assert result.stats["push_events"] == 1 and result.stats["projects_missing"] == 1
    # A deleted project (gone from /projects/:id too) is not a gap: the day is complete.
    assert result.complete and len(gitlab.requests_to("/api/v4/projects/11")) == 2


# -- authors ----------------------------------------------------------------------------


def test_unmapped_bots_and_excluded_users(gitlab):
    gitlab.add_project(10, visibility="private")
    gitlab.push(10, ALICE, at(1), ["alice's commit"])
    gitlab.push(10, CAROL, at(2), ["carol's commit"])
    gitlab.push(10, ROBOT, at(3), ["bot commit", "another"])
    gitlab.push(10, CI, at(4), ["renku run by ci", "ci 2"])
    gitlab.push(10, GONE, at(5), ["commit of a deleted account"])
    gitlab.push(10, DAVE, at(6), ["dave's commit"])

    result = make_source(gitlab, exclude_users=("CI-Runner",), max_retries=1).extract(WINDOW)

    users = Counter(e["user_id"] for e in result.events)
    assert users == {md5("kc-alice"): 1, "gitlab:3": 1, "gitlab:6": 1, "gitlab:7": 1}
    assert result.stats["unmapped_authors"] == 3  # carol, the deleted account, dave (other provider)
    # An author whose record cannot be read (404 twice) may have had an identity: the day is incomplete.
    assert result.stats["user_lookups_failed"] == 1 and not result.complete
    assert "user 6 could not be looked up (HTTP 404); kept as gitlab:6" in result.coverage_note
    assert result.stats["bot_authors"] == 1 and result.stats["excluded_authors"] == 1
    assert result.stats["skipped_pushes"] == 2
    assert actions(result) == {"commit": 4}
    # The excluded user is recognised from the event alone; the bot needs its user record.
    looked_up = {r.path for r in gitlab.requests_to("/api/v4/users/")}
    assert "/api/v4/users/5" not in looked_up and "/api/v4/users/4" in looked_up
    # The bot's and CI's commits were never fetched.
    assert gitlab.requests_to("/repository/commits") == []
    valid, rejected = validate_events(events_frame(result.events), WINDOW, "testdep")
    assert len(valid) == 4 and rejected == []


def test_identity_provider_is_configurable(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, DAVE, at(6), ["dave's commit"])
    result = make_source(gitlab, identity_provider="github").extract(WINDOW)
    assert [e["user_id"] for e in result.events] == [md5("gh-dave")]


def test_user_records_are_looked_up_once_per_run(gitlab):
    gitlab.add_project(10)
    gitlab.add_project(11)
    for hour in range(1, 6):
        gitlab.push(10, ALICE, at(hour), [f"c{hour}"])
        gitlab.push(11, ALICE, at(hour, 0), [f"d{hour}"])
    result = make_source(gitlab).extract(WINDOW)
    assert len(result.events) == 10
    assert len(gitlab.requests_to("/api/v4/users/")) == 1


# -- projects ---------------------------------------------------------------------------


def test_lagging_last_activity_is_covered_by_the_margin(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, ALICE, at(-0.75), ["before the window"])  # sets last_activity_at to 23:15
    gitlab.push(10, ALICE, at(0.1), ["in the window"])  # within the hour: last_activity_at stays
    assert parse_iso(gitlab.projects[10]["last_activity_at"]) < START

    result = make_source(gitlab).extract(WINDOW)

    assert len(result.events) == 1
    (listing,) = gitlab.requests_to("/api/v4/projects")[:1]
    assert listing.query["last_activity_after"] == ["2024-05-13T22:00:00Z"]
    assert listing.query["pagination"] == ["keyset"] and listing.query["order_by"] == ["id"]


def test_many_projects_over_keyset_pages_with_bounded_concurrency(gitlab):
    for pid in range(1, 12):
        gitlab.add_project(pid)
        gitlab.push(pid, ALICE, at(pid), [f"commit in {pid}"])
    gitlab.add_project(99, last_activity_at=at(days=-10))  # inactive: not listed
    gitlab.inject("delay", times=11, path_contains="/events", delay=0.1)

    result = make_source(gitlab, page_size=4, max_concurrency=3).extract(WINDOW)

    assert sorted(int(e["project_id"]) for e in result.events) == list(range(1, 12))
    assert result.stats["projects_with_activity"] == 11
    assert len([r for r in gitlab.requests if r.path == "/api/v4/projects"]) == 3  # 4 + 4 + 3
    assert gitlab.requests_to("/projects/99/") == []
    assert 2 <= gitlab.max_in_flight <= 3


def test_push_events_over_several_pages(gitlab):
    gitlab.add_project(10)
    for i in range(7):
        gitlab.push(10, ALICE, at(1 + i), [f"c{i}"])
    result = make_source(gitlab, page_size=3).extract(WINDOW)
    assert result.stats["push_events"] == 7 and len(result.events) == 7
    assert len(gitlab.requests_to("/projects/10/events")) == 3


# -- failures -----------------------------------------------------------------------------


def test_rate_limits_and_5xx_bursts_are_survived(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, ALICE, at(1), ["a", "b"])
    gitlab.inject("rate_limit", times=1, retry_after=1, path_contains="/events")
    gitlab.inject("status", times=2, status=502, path_contains="/users/")
    gitlab.inject("status", times=1, status=500, path_contains="/repository/commits")
    gitlab.inject("truncate", times=1, path_contains="/api/v4/projects")

    result = make_source(gitlab).extract(WINDOW)

    assert actions(result) == {"commit": 2}
    assert result.stats["http_rate_limited"] == 1 and result.stats["http_retries"] == 5


def test_persistently_truncated_json_names_the_path_not_the_token(gitlab, caplog):
    gitlab.add_project(10)
    gitlab.push(10, ALICE, at(1), ["a", "b"])
    gitlab.inject("truncate", times=100, path_contains="/repository/commits")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SourceError) as info:
            make_source(gitlab, max_retries=2).extract(WINDOW)
    message = str(info.value)
    assert "deployment 'testdep', source 'gitlab': GET /api/v4/projects/10/repository/commits failed" in message
    assert "invalid or truncated JSON" in message and "ref_name" not in message
    assert gitlab.token not in message and gitlab.token not in caplog.text


def test_wrong_token_is_reported_without_the_token(gitlab, caplog):
    wrong = "glpat-wrong-token-value-123"
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SourceError) as info:
            Source("testdep", Settings(url=gitlab.url, token_env=TOKEN_ENV), {TOKEN_ENV: wrong}).extract(WINDOW)
    message = str(info.value)
    assert "GET /api/v4/projects failed: HTTP 401" in message
    assert wrong not in message and wrong not in caplog.text


def test_windows_beyond_gitlab_event_retention_are_incomplete(gitlab):
    old = TimeWindow.for_day(dt.date(2020, 5, 14))
    result = make_source(gitlab, now=lambda: START).extract(old)
    assert result.complete is False and "3 years" in result.coverage_note
    assert make_source(gitlab, now=lambda: START).extract(WINDOW).complete


# -- privacy ----------------------------------------------------------------------------


def test_no_personal_data_in_events_rejects_or_stats(gitlab):
    gitlab.add_project(10, path="alice/private-thesis")
    gitlab.push(10, ALICE, at(1), ["one", "two"])
    gitlab.add_raw_event(
        {
            "project_id": 10,
            "action_name": "pushed to",
            "created_at": "2024-05-14T05:00:00.000Z",
            "author": {"name": "Evelyn Exampleton", "username": "evelyn_x"},
            "author_username": "evelyn_x",
            "push_data": {"commit_count": 1, "commit_title": "secret title"},
        }
    )

    result = make_source(gitlab).extract(WINDOW)

    assert actions(result) == {"commit": 2}
    assert [r.reason for r in result.rejected] == ["push event without author_id"]
    assert result.rejected[0].record["push_data"] == {"commit_count": 1}
    dumped = json.dumps([dataclasses.asdict(r) for r in result.rejected]) + json.dumps(result.events, default=str)
    dumped += json.dumps(result.stats)
    for personal in ("Evelyn", "evelyn_x", "alice", "Jane", "example.org", "private-thesis", "secret title"):
        assert personal not in dumped


# -- stray 404s and failures after the first page ------------------------------------------------


def _paged_project(gitlab, pushes: int = 7) -> None:
    """Project 10 with ``pushes`` single-commit pushes by ALICE and one 6-commit push by BOB."""
    gitlab.add_project(10)
    gitlab.push(10, BOB, at(days=-2), ["base"])
    for i in range(pushes):
        gitlab.push(10, ALICE, at(1 + i), [f"c{i}"])
    gitlab.push(10, BOB, at(20), [f"b{i}" for i in range(6)])


def _reference(gitlab) -> list[dict]:
    return sorted(make_source(gitlab, page_size=3).extract(WINDOW).events, key=lambda e: e["event_id"])


@pytest.mark.parametrize(
    "path,query",
    [("/projects/10/events", {"page": "2"}), ("/repository/commits", {"page": "2"}), ("/api/v4/users/", None)],
)
def test_transient_404s_are_retried_to_a_complete_and_correct_day(gitlab, path, query):
    _paged_project(gitlab)
    expected = _reference(gitlab)
    assert len(expected) == 13
    gitlab.inject("status", times=2, status=404, path_contains=path, query=query)

    result = make_source(gitlab, page_size=3).extract(WINDOW)

    assert result.complete, result.coverage_note
    assert sorted(result.events, key=lambda e: e["event_id"]) == expected
    assert all(f.times == 0 for f in gitlab.faults)  # the 404s were really served


@pytest.mark.parametrize(
    "path,query,note",
    [
        ("/projects/10/events", {"page": "2"}, "push events of project 10 not fully read (HTTP 404 on page 2)"),
        ("/repository/commits", {"page": "2"}, "in project 10 not fully read (HTTP 404 on page 2)"),
        ("/repository/commits", {"page": "2"}, "not fully read (HTTP 502 on page 2)"),
        ("/api/v4/users/1", None, "user 1 could not be looked up (HTTP 404); kept as gitlab:1"),
    ],
)
def test_persistent_failures_after_the_first_page_make_the_day_incomplete_and_noted(gitlab, path, query, note):
    _paged_project(gitlab)
    status = 502 if "502" in note else 404
    gitlab.inject("status", times=1000, status=status, path_contains=path, query=query)

    result = make_source(gitlab, page_size=3, max_retries=2).extract(WINDOW)

    assert not result.complete and note in result.coverage_note
    assert result.stats["listings_incomplete"] == 1
    assert "upstream failures after retries" in result.coverage_note


def test_a_failed_user_lookup_is_not_cached_for_the_run(gitlab):
    _paged_project(gitlab, pushes=1)
    source = make_source(gitlab, max_retries=1)
    gitlab.inject("status", times=2, status=404, path_contains="/api/v4/users/1")
    first = source.extract(WINDOW)
    assert not first.complete and {e["user_id"] for e in first.events} >= {"gitlab:1"}
    second = source.extract(WINDOW)  # same run, upstream healthy again
    assert second.complete, second.coverage_note
    assert {e["user_id"] for e in second.events} == {md5("kc-alice"), md5("kc-bob")}


def test_a_stray_404_on_an_existing_projects_events_is_read_again(gitlab):
    _paged_project(gitlab)
    expected = _reference(gitlab)
    gitlab.inject("status", times=1, status=404, path_contains="/projects/10/events", query={"page": "1"})
    result = make_source(gitlab, page_size=3).extract(WINDOW)
    assert result.complete and result.stats["projects_missing"] == 0
    assert sorted(result.events, key=lambda e: e["event_id"]) == expected


def test_a_project_whose_events_keep_failing_although_it_exists_is_noted(gitlab):
    _paged_project(gitlab)
    gitlab.inject("status", times=1000, status=404, path_contains="/projects/10/events")
    result = make_source(gitlab, page_size=3, max_retries=1).extract(WINDOW)
    assert not result.complete and result.stats["projects_missing"] == 0
    assert "push events of project 10 not fully read (HTTP 404" in result.coverage_note


def test_http_counters_are_per_window(gitlab):
    _paged_project(gitlab, pushes=1)
    source = make_source(gitlab)
    first = source.extract(WINDOW).stats["http_requests"]
    second = source.extract(WINDOW).stats["http_requests"]
    assert first == 5 and second == 3  # per window: the second finds both user records cached


def test_a_new_branch_head_answering_404_is_retried_then_noted(gitlab):
    gitlab.add_project(10)
    gitlab.push(10, BOB, at(days=-3), ["m1"])
    gitlab.push(10, ALICE, at(8), ["f1", "f2", "f3"], branch="feature", base="master")
    expected = sorted(make_source(gitlab).extract(WINDOW).events, key=lambda e: e["event_id"])
    assert len(expected) == 3

    gitlab.inject("status", times=2, status=404, path_contains="/repository/commits")
    result = make_source(gitlab).extract(WINDOW)
    assert result.complete and sorted(result.events, key=lambda e: e["event_id"]) == expected

    gitlab.inject("status", times=1000, status=404, path_contains="/repository/commits")
    result = make_source(gitlab, max_retries=1).extract(WINDOW)
    assert not result.complete and result.events == []
    assert "commits of push event" in result.coverage_note and "(HTTP 404)" in result.coverage_note


# -- project ownership ------------------------------------------------------------


def test_project_owners_from_the_projects_api(gitlab):
    from renku_metrics.core.ownership import ProjectRecord

    gitlab.add_project(30, owner_id=ALICE, visibility="public")  # alice's personal namespace
    gitlab.add_project(31, creator_id=BOB)  # a group project bob created
    gitlab.add_project(32, owner_id=CAROL, forked_from=30)  # carol's fork (carol has no Keycloak identity)
    gitlab.add_project(33, owner_id=BOB)
    gitlab.gone_projects.add(33)  # deleted: 404
    source = make_source(gitlab, project_ownership=True)
    got = source.project_owners(["30", "31", "32", "33", "not-gitlab"])
    assert got == {
        "30": ProjectRecord("30", md5("kc-alice"), None, "public"),
        "31": ProjectRecord("31", md5("kc-bob"), None, "private"),
        "32": ProjectRecord("32", "gitlab:3", "30", "private"),
        "33": None,
        "not-gitlab": None,
    }
    # A transfer into bob's namespace: the next lookup names bob.
    gitlab.set_namespace(30, BOB)
    assert source.project_owners(["30"])["30"].owner == md5("kc-bob")
    # Into a group: the creator (alice) is the owner again.
    gitlab.set_namespace(30, None)
    assert source.project_owners(["30"])["30"].owner == md5("kc-alice")
    # Off by default: nothing is asked.
    before = len(gitlab.requests)
    assert make_source(gitlab).project_owners(["30"]) == {"30": None}
    assert len(gitlab.requests) == before


def test_collaboration_through_the_extract_with_a_transfer_and_a_fork(gitlab, tmp_path):
    """Day D: bob commits to alice's project 40 and to his fork 41 of it, carol (who owns nothing
    and has no Keycloak identity) commits to 40, alice to her own 40. Then alice transfers 40 to
    bob. Day D+2: alice commits to 40 (now bob's), bob to 40 and to 41 (a fork of his own project)."""
    from renku_metrics.core.config import Deployment
    from renku_metrics.core.extract import extract_day
    from renku_metrics.core.readers import read_events
    from renku_metrics.core.storage import LocalStorage

    gitlab.add_project(40, owner_id=ALICE, last_activity_at=at(days=-30))
    gitlab.add_project(41, owner_id=BOB, forked_from=40, last_activity_at=at(days=-30))
    gitlab.push(40, ALICE, at(9), ["Start"])
    gitlab.push(40, BOB, at(10), ["Bob's fix"])
    gitlab.push(41, BOB, at(11), ["Bob's fork work"])
    gitlab.push(40, CAROL, at(12), ["Carol's fix"])
    storage = LocalStorage(tmp_path / "data")
    dep = Deployment(name="testdep", start_date=D, sources={})
    source = make_source(gitlab, project_ownership=True, now=lambda: at(days=3))
    first = extract_day(storage, dep, D, sources_by_type={"gitlab": source}, now=at(26))
    gitlab.set_namespace(40, BOB)  # the transfer, on D+1
    later = D + dt.timedelta(days=2)
    gitlab.push(40, ALICE, at(9, days=2), ["Alice, now a guest"])
    gitlab.push(40, BOB, at(10, days=2), ["Bob on his project"])
    gitlab.push(41, BOB, at(11, days=2), ["Bob on his fork"])
    extract_day(storage, dep, later, sources_by_type={"gitlab": source}, now=at(2, days=3))
    extract_day(storage, dep, D, sources_by_type={"gitlab": source}, now=at(3, days=3))  # D again

    events = read_events("testdep", storage=storage)
    derived = events[events["action"] == "collaborate"]
    got = sorted(zip(derived["occurred_at"].dt.date, derived["user_id"], derived["project_id"], strict=True))
    assert got == sorted(
        [
            (D, md5("kc-bob"), "40"),  # alice's project then
            (D, md5("kc-bob"), "41"),  # his own fork of alice's project
            (D, "gitlab:3", "40"),  # carol owns nothing
            (later, md5("kc-alice"), "40"),  # bob's project by then
        ]
    )
    assert first.sources["gitlab"]["stats"]["derived_collaborate"] == 3
    assert first.sources["gitlab"]["stats"]["ownership_projects"] == 2
    assert (events["action"] == "commit").sum() == 7
