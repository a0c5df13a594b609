"""Releases as data: the GitHub and GitLab connectors against local simulators, the YAML
list, per-deployment overrides and the deployments.yaml settings."""

import datetime as dt

import pytest

from renku_metrics.core.config import parse_config
from renku_metrics.core.errors import ConfigError
from renku_metrics.core.sources.base import SourceError
from renku_metrics.core.sources.releases import GitHubReleases, GitHubSettings, GitLabReleases, GitLabSettings
from renku_metrics.core.value.releases import (
    ReleasesConfig,
    build_releases,
    collect_releases,
    load_release_list,
    parse_releases_config,
    weeks_ago_date,
)
from renku_metrics_tests.simulators.github_sim import GitHubSimulator
from renku_metrics_tests.simulators.gitlab_sim import GitLabSimulator

UTC = dt.timezone.utc


def at(day: str, hour: int = 12) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


@pytest.fixture
def github():
    with GitHubSimulator() as sim:
        yield sim


def github_source(sim, sleeps=None, **settings):
    s = GitHubSettings.from_mapping({"url": sim.url, **settings}, "test")
    return GitHubReleases("demo", s, {}, sleep=sleeps.append if sleeps is not None else (lambda s: None))


def test_github_pages_by_link_keeps_minor_releases_and_skips_drafts(github):
    # 7 releases: 4 minor ones, a patch, a build tag, a draft; listed over 3 pages of 3.
    github.add_release("2.0.0", at("2025-05-27"), created_at=at("2025-05-20"))
    github.add_release("2.0.1", at("2025-06-02"))
    github.add_release("2.1.0", at("2025-06-10"), created_at=at("2025-06-01"))
    github.add_release("2.1.1-0.450e122", at("2025-06-12"))
    github.add_release("2.2.0", at("2025-06-24"), name="2.2.0: session launchers")
    github.add_release("2.3.0", None, draft=True, created_at=at("2025-07-01"))
    github.add_release("0.70.0", at("2025-05-01"), created_at=at("2025-04-25"))
    got = github_source(github, per_page=3).fetch()
    assert sorted(r.tag for r in got) == ["0.70.0", "2.0.0", "2.1.0", "2.2.0"]
    by_tag = {r.tag: r for r in got}
    # published_at, not created_at (the commit's date)
    assert by_tag["2.1.0"].published_at == at("2025-06-10")
    assert by_tag["2.2.0"].name == "2.2.0: session launchers"
    pages = github.requests_to("/releases")
    assert len(pages) == 3
    assert pages[0].arg("per_page") == "3" and pages[0].arg("page") is None
    assert [p.arg("page") for p in pages[1:]] == ["2", "3"]


def test_github_default_page_size_is_100_and_tag_filter_is_configurable(github):
    for i in range(5):
        github.add_release(f"2.{i}.0", at(f"2025-0{i + 1}-15"))
    github.add_release("2.4.3", at("2025-06-20"))
    got = github_source(github, tag_pattern=r"^2\.[34]\.\d+$").fetch()
    assert sorted(r.tag for r in got) == ["2.3.0", "2.4.0", "2.4.3"]
    assert github.requests_to("/releases")[0].arg("per_page") == "100"


def test_github_waits_for_a_short_rate_limit_reset_before_the_next_page(github):
    for i in range(4):
        github.add_release(f"1.{i}.0", at(f"2025-0{i + 1}-10"))
    github.exhaust(reset_in=30, remaining=1)  # the first page uses the last request of the window
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        github.reset_window()  # time passes: the window rolls over

    s = GitHubSettings.from_mapping({"url": github.url, "per_page": 2}, "test")
    got = GitHubReleases("demo", s, {}, sleep=sleep).fetch()
    assert len(got) == 4
    assert len(waits) == 1 and 25 <= waits[0] <= 31


def test_github_403_over_the_limit_waits_when_short_and_retries(github):
    github.add_release("1.0.0", at("2025-01-10"))
    github.exhaust(reset_in=20)
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        github.reset_window()

    s = GitHubSettings.from_mapping({"url": github.url}, "test")
    got = GitHubReleases("demo", s, {}, sleep=sleep).fetch()
    assert [r.tag for r in got] == ["1.0.0"]
    assert len(waits) == 1 and 15 <= waits[0] <= 22
    assert len(github.requests_to("/releases")) == 2  # refused, then answered after the reset


def test_github_long_rate_limit_fails_naming_the_reset_time(github):
    github.add_release("1.0.0", at("2025-01-10"))
    github.exhaust(reset_in=2400)
    s = GitHubSettings.from_mapping({"url": github.url}, "test")
    with pytest.raises(SourceError) as err:
        GitHubReleases("demo", s, {}, sleep=lambda s: pytest.fail("must not sleep")).fetch()
    reset = dt.datetime.fromtimestamp(github.reset_at, UTC).strftime("%Y-%m-%d %H:%M")
    assert "HTTP 403 (rate limited)" in str(err.value)
    assert reset in str(err.value)
    assert "deployment 'demo'" in str(err.value) and "/repos/SwissDataScienceCenter/renku/releases" in str(err.value)


def test_github_long_wait_between_pages_fails_naming_the_reset_time(github):
    for i in range(3):
        github.add_release(f"1.{i}.0", at(f"2025-0{i + 1}-10"))
    github.exhaust(reset_in=3000, remaining=1)
    s = GitHubSettings.from_mapping({"url": github.url, "per_page": 2}, "test")
    with pytest.raises(SourceError) as err:
        GitHubReleases("demo", s, {}, sleep=lambda s: pytest.fail("must not sleep")).fetch()
    reset = dt.datetime.fromtimestamp(github.reset_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert f"until {reset} UTC" in str(err.value)
    assert len(github.requests_to("/releases")) == 1


@pytest.mark.parametrize("status", [429, 403])
def test_github_secondary_limit_honours_retry_after(github, status):
    github.add_release("1.0.0", at("2025-01-10"))
    github.secondary_limit(retry_after=7, status=status)
    waits = []
    s = GitHubSettings.from_mapping({"url": github.url}, "test")
    got = GitHubReleases("demo", s, {}, sleep=waits.append).fetch()
    assert [r.tag for r in got] == ["1.0.0"]
    assert len(waits) == 1 and 7 <= waits[0] <= 8


def test_github_token_is_sent_and_a_wrong_one_fails_clearly():
    with GitHubSimulator(token="ghp_right") as sim:
        sim.add_release("1.0.0", at("2025-01-10"))
        s = GitHubSettings.from_mapping({"url": sim.url, "token_env": "GH_TOKEN"}, "test")
        got = GitHubReleases("demo", s, {"GH_TOKEN": "ghp_right"}).fetch()
        assert [r.tag for r in got] == ["1.0.0"]
        assert sim.requests[-1].header("Authorization") == "Bearer ghp_right"
        assert sim.limit(True) == 5000
        with pytest.raises(SourceError, match="HTTP 401") as err:
            GitHubReleases("demo", s, {"GH_TOKEN": "ghp_wrong"}).fetch()
        assert "ghp_wrong" not in str(err.value)
        with pytest.raises(ConfigError, match="GH_TOKEN is not set"):
            GitHubReleases("demo", s, {})


def test_gitlab_releases_use_released_at_and_page(tmp_path):
    with GitLabSimulator(token="glpat-releases-0001") as sim:
        sim.add_project(7, path="renku/platform")
        sim.add_release(7, "3.0.0", at("2025-02-03"))
        sim.add_release(7, "3.1.0", at("2025-03-03"))
        sim.add_release(7, "3.1.1", at("2025-03-10"))
        sim.add_release(7, "3.2.0", at("2025-04-07"))
        s = GitLabSettings.from_mapping(
            {"url": sim.url, "project": "renku/platform", "token_env": "GL", "per_page": 2}, "test"
        )
        got = GitLabReleases("demo", s, {"GL": "glpat-releases-0001"}).fetch()
        assert sorted((r.tag, r.published_at) for r in got) == [
            ("3.0.0", at("2025-02-03")),
            ("3.1.0", at("2025-03-03")),
            ("3.2.0", at("2025-04-07")),
        ]
        assert all(r.source == "gitlab" for r in got)
        assert len(sim.requests_to("/releases")) == 2  # 4 releases, 2 a page


RELEASE_LIST = """
releases:
  - name: "2.1.0"
    sentence: Session launchers
    go_live: {demo_small: 2025-06-23}
    expected_effect: {metric: start_session, measure: pct, direction: up, size: 5}
  - name: winter-cleanup
    date: 2025-07-02
    deployments: [demo]
    sentence: Old projects archived
  - name: relative
    weeks_ago: 2
"""


def test_yaml_list_enriches_and_redates_forge_releases(tmp_path, github):
    github.add_release("2.1.0", at("2025-06-10"))
    github.add_release("2.2.0", at("2025-06-24"))
    path = tmp_path / "releases.yaml"
    path.write_text(RELEASE_LIST)
    config = parse_releases_config({"github": {"url": github.url}, "file": "releases.yaml"}, "x", tmp_path)
    today = dt.date(2025, 7, 20)  # a Sunday: the current week starts 2025-07-14
    frame, counts = collect_releases({"demo": config, "demo_small": config}, {}, today, sleep=lambda s: None)
    rows = {(r.deployment, r.release): r for r in frame.itertuples()}
    assert rows[("demo", "2.1.0")].date == dt.date(2025, 6, 10)  # published date
    assert rows[("demo_small", "2.1.0")].date == dt.date(2025, 6, 23)  # go_live override
    assert rows[("demo_small", "2.1.0")].published_at == at("2025-06-10")
    assert rows[("demo", "2.1.0")].description == "Session launchers"
    assert rows[("demo", "2.1.0")].expected_metric == "start_session"
    assert rows[("demo", "2.1.0")].expected_size == 5.0
    assert rows[("demo", "2.1.0")].source == "github"
    assert rows[("demo", "winter-cleanup")].source == "yaml"
    assert ("demo_small", "winter-cleanup") not in rows
    assert rows[("demo", "relative")].date == dt.date(2025, 7, 2)  # Wednesday two weeks before
    assert counts["demo"] == {"github": 2, "gitlab": 0, "listed": 3, "releases": 4}
    assert frame.columns.tolist()[:4] == ["release", "deployment", "date", "published_at"]


def test_weeks_ago_is_the_wednesday_n_weeks_back():
    assert weeks_ago_date(0, dt.date(2025, 7, 14)) == dt.date(2025, 7, 16)
    assert weeks_ago_date(3, dt.date(2025, 7, 20)) == dt.date(2025, 6, 25)


@pytest.mark.parametrize(
    "text, message",
    [
        ("releases:\n  - {name: a, date: 2025-13-01}\n", "release 'a'.date: expected a date YYYY-MM-DD"),
        ("releases:\n  - {name: a, colour: red}\n", "release 'a': unknown key 'colour'"),
        (
            "releases:\n  - {name: a, date: 2025-01-01, expected_effect: {metric: x, direction: sideways}}\n",
            "release 'a': expected_effect.direction",
        ),
        ("releases:\n  - {name: a, date: 2025-01-01}\n  - {name: a, date: 2025-02-01}\n", "listed twice"),
        ("releases:\n  - {name: a, date: 2025-01-01, weeks_ago: 2}\n", "date or weeks_ago, not both"),
        ("items: []\n", "single top-level key 'releases'"),
    ],
)
def test_bad_release_lists_fail_in_one_line(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_release_list(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_listed_release_without_any_date_is_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("releases:\n  - {name: lonely}\n")
    config = ReleasesConfig(file=path)
    with pytest.raises(ConfigError, match="release 'lonely': no date for deployment 'demo'"):
        build_releases("demo", config, [], load_release_list(path), dt.date(2025, 1, 1))


def test_deployments_yaml_releases_settings_are_validated(tmp_path):
    def load(releases):
        raw = {
            "deployments": [{"name": "d", "start_date": "2025-01-01", "sources": {"demo": {}}, "releases": releases}]
        }
        return parse_config(raw, str(tmp_path / "deployments.yaml"))

    config = load({"github": {"token_env": "GH"}, "file": "rel.yaml", "impact": {"weeks_before": 3, "weeks_after": 3}})
    releases = config.deployments[0].releases
    assert releases.github.repo == "SwissDataScienceCenter/renku"
    assert releases.github.tag_pattern == r"^\d+\.\d+\.0$"
    assert releases.file == tmp_path / "rel.yaml"
    assert releases.impact.weeks_before == 3 and releases.impact.min_weeks == 3
    for bad, message in [
        ({"githb": {}}, "deployment 'd': releases: unknown key 'githb'"),
        ({"github": {"repo": "norepo"}}, "releases.github.repo: expected owner/name"),
        ({"github": {"tag_pattern": "(["}}, "releases.github.tag_pattern: not a valid regular expression"),
        ({"github": {"per_page": 500}}, "releases.github.per_page: must be 1..100"),
        ({"impact": {}}, "name at least one of github, gitlab or file"),
        ({"file": "r.yaml", "calendar": {"lectures": ["02-30..05-01"]}}, "releases.calendar.lectures"),
        ({"file": "r.yaml", "impact": {"weeks_after": 2}}, "releases.impact.min_weeks"),
    ]:
        with pytest.raises(ConfigError) as err:
            load(bad)
        assert message in str(err.value), (bad, str(err.value))


def test_default_calendar_knows_lectures_exams_and_breaks():
    from renku_metrics.core.value.releases import CalendarSettings

    cal = CalendarSettings()
    assert cal.term(dt.date(2025, 3, 10)) == "lecture"
    assert cal.term(dt.date(2025, 6, 16)) == "exams"
    assert cal.term(dt.date(2025, 7, 21)) == "break"  # summer
    assert cal.term(dt.date(2025, 12, 22)) == "break"  # Christmas
    assert cal.term(dt.date(2025, 12, 29)) == "break"
    assert cal.term(dt.date(2026, 1, 19)) == "exams"
    wrapped = CalendarSettings.from_mapping({"lectures": ["12-01..01-31"], "exams": []}, "x")
    assert wrapped.term(dt.date(2025, 12, 29)) == "lecture" and wrapped.term(dt.date(2026, 3, 2)) == "break"


def test_demo_plants_a_session_boost_from_its_release_day_on():
    from renku_metrics.core.periods import weeks_ago_date
    from renku_metrics.core.sources.demo import Settings, Source

    plain = Source("demo", Settings(seed=3, users=3000))
    boosted = Source("demo", Settings(seed=3, users=3000, session_boost=1.6, session_boost_weeks_ago=2))
    boost_day = weeks_ago_date(2, dt.datetime.now(UTC).date())
    before = boost_day - dt.timedelta(days=1)
    after = [boost_day + dt.timedelta(days=i) for i in range(5)]
    pd_testing = __import__("pandas").testing
    pd_testing.assert_frame_equal(plain.generate_day(before), boosted.generate_day(before))

    def starters(source, days):
        return sum((f["action"] == "start_session").sum() for f in map(source.generate_day, days))

    # the same active users each day (same seed and draws); each starts a session 1.6 times as often
    assert starters(boosted, after) > 1.3 * starters(plain, after) > 0


def test_the_demo_boost_leaves_every_other_action_as_it_was():
    from renku_metrics.core.periods import weeks_ago_date
    from renku_metrics.core.sources.demo import Settings, Source

    plain = Source("demo", Settings(seed=3, users=3000))
    boosted = Source("demo", Settings(seed=3, users=3000, session_boost=2.5, session_boost_weeks_ago=2))
    day = weeks_ago_date(2, dt.datetime.now(UTC).date()) + dt.timedelta(days=1)
    a, b = plain.generate_day(day), boosted.generate_day(day)
    others = ["user_id", "action", "project_id", "occurred_at"]
    a_rest = a[a["action"] != "start_session"][others].sort_values(others).reset_index(drop=True)
    b_rest = b[b["action"] != "start_session"][others].sort_values(others).reset_index(drop=True)
    __import__("pandas").testing.assert_frame_equal(a_rest, b_rest)
    assert set(a.loc[a["action"] == "start_session", "user_id"]) < set(b.loc[b["action"] == "start_session", "user_id"])


def test_github_unknown_repository_fails_naming_it(github):
    s = GitHubSettings.from_mapping({"url": github.url, "repo": "someone/elsewhere"}, "test")
    with pytest.raises(SourceError) as err:
        GitHubReleases("demo", s, {}).fetch()
    assert "HTTP 404" in str(err.value) and "/repos/someone/elsewhere/releases" in str(err.value)
    assert "deployment 'demo'" in str(err.value)
