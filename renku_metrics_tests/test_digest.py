"""The weekly digest: its numbers, its arrows, its sections from the contract tables, its renderers."""

from __future__ import annotations

import base64
import datetime as dt
import re
import shutil

import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.layout import digest_key, metrics_key
from renku_metrics.core.readers import read_active_users, read_metrics
from renku_metrics.core.storage import open_storage
from renku_metrics.core.value.digest import (
    RELEASE_IMPACT_KEY,
    Digest,
    Section,
    beyond_noise,
    build_digest,
    check_no_personal_data,
    to_mattermost,
    to_slack,
)
from renku_metrics.core.value.digest_config import DigestSettings, load_digest_config, parse_digest_config
from renku_metrics.definitions import build_defs
from renku_metrics.defs.clock import NOW_TAG

from .helpers import ev, extract_days, write_config
from .test_assets import QUIET, run_range

FIRST_WEEK = dt.date(2025, 1, 6)
WEEKS = 10
LAST_WEEK = FIRST_WEEK + dt.timedelta(weeks=WEEKS - 1)  # 2025-03-10
RUN_NOW = "2025-03-17T07:00:00+00:00"  # Monday after LAST_WEEK: it is the latest complete week
# alpha: active users per week, and 4 of them commit every week.
ALPHA_ACTIVE = [10, 11, 10, 11, 10, 11, 10, 11, 10, 20]
ALPHA_COMMITTERS = 4


def alpha_events() -> list[dict]:
    events = []
    for i, active in enumerate(ALPHA_ACTIVE):
        monday = FIRST_WEEK + dt.timedelta(weeks=i)
        for j in range(active):
            events.append(ev(f"{monday}T10:00:00Z", f"alpha-user-{j}", "login"))
            if j < ALPHA_COMMITTERS:
                events.append(ev(f"{monday + dt.timedelta(days=1)}T10:00:00Z", f"alpha-user-{j}", "commit"))
    return events


def beta_events() -> list[dict]:
    return [
        ev(f"{FIRST_WEEK + dt.timedelta(weeks=i, days=2)}T09:00:00Z", f"beta-user-{j}", "start_session")
        for i in range(WEEKS)
        for j in range(3)
    ]


def write_digest_config(tmp_path, **settings) -> str:
    path = tmp_path / "digest.yaml"
    base = {"dagster_ui_url": "http://dagster.test", "notebook_url": "http://notebook.test/metrics.ipynb"}
    path.write_text(yaml.safe_dump({**base, **settings}))
    return str(path)


@pytest.fixture(scope="module")
def stored_weeks_once(tmp_path_factory):
    """10 weeks of extracted days and weekly aggregates for alpha and beta (beta's 2025-03-12
    read incompletely), built once per module; tests get their own copy (``stored_weeks``)."""
    from renku_metrics.core import sources

    tmp_path = tmp_path_factory.mktemp("weeks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sources.SOURCE_MODULES, "fixture", "renku_metrics_tests.fixture_source")
        config = write_config(
            tmp_path,
            {
                "alpha": {"start_date": str(FIRST_WEEK), "events": alpha_events(), "launched_on_start_date": True},
                "beta": {
                    "start_date": str(FIRST_WEEK),
                    "events": beta_events(),
                    "launched_on_start_date": True,
                    "incomplete_on_day": "2025-03-12",
                },
            },
        )
        root = str(tmp_path / "data")
        storage = open_storage(root)
        extract_days(storage, config, str(FIRST_WEEK), "2025-03-16")
        defs = build_defs(
            config=config, storage_root=root, env={"RENKU_METRICS_DIGEST_CONFIG": write_digest_config(tmp_path)}
        )
        assert run_range(defs, "weekly_metrics", str(FIRST_WEEK), str(LAST_WEEK), DagsterInstance.ephemeral()).success
    return config, root


@pytest.fixture
def stored_weeks(stored_weeks_once, tmp_path, fixture_source):
    """(config, root of a private copy of the stored weeks)."""
    config, root = stored_weeks_once
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    return config, str(copy)


def run_digest(defs, week: dt.date, instance, now: str = RUN_NOW, run_config: dict | None = None, raise_on_error=True):
    return defs.resolve_job_def("weekly_digest_job").execute_in_process(
        instance=instance,
        partition_key=week.isoformat(),
        tags={NOW_TAG: now},
        run_config={**QUIET, **(run_config or {})},
        raise_on_error=raise_on_error,
    )


def usage_rows(markdown: str, deployment: str) -> dict[str, list[str]]:
    """The rows of a deployment's usage table in the digest's Markdown: label -> cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {deployment} | this week |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_beyond_noise_rule_by_hand():
    # Changes before the last: +1, -1, +1, -1, +1 (sample sd 1.095...); the last change +10 is beyond 2 sd.
    assert beyond_noise([10, 11, 10, 11, 10, 11, 20], 6) == "↑"
    assert beyond_noise([10, 11, 10, 11, 10, 11, 9], 6) == ""  # -2 is within 2 * 1.095
    assert beyond_noise([10, 11, 10, 11, 10, 11, 8], 6) == "↓"  # -3 is beyond
    assert beyond_noise([10, 11, 10, 20], 3) == ""  # only 2 earlier changes: no arrow
    assert beyond_noise([5, 5, 5, 5, 5, 5], 5) == ""  # no change
    assert beyond_noise([5, 5, 5, 5, 5, 6], 5) == "↑"  # any change after none at all
    # Only the previous 8 changes count: a wild change 9 weeks back is forgotten.
    series = [0, 100, 100, 101, 100, 101, 100, 101, 100, 101, 100, 104]
    assert beyond_noise(series, 11) == "↑"


def test_digest_numbers_equal_read_metrics(stored_weeks, tmp_path):
    config, root = stored_weeks
    defs = build_defs(
        config=config, storage_root=root, env={"RENKU_METRICS_DIGEST_CONFIG": write_digest_config(tmp_path)}
    )
    result = run_digest(defs, LAST_WEEK, DagsterInstance.ephemeral())
    assert result.success
    storage = open_storage(root)
    markdown = storage.read_bytes(digest_key(LAST_WEEK, "digest.md")).decode()
    page = storage.read_bytes(digest_key(LAST_WEEK, "digest.html")).decode()
    png = storage.read_bytes(digest_key(LAST_WEEK, "digest.png"))
    assert png.startswith(b"\x89PNG") and "![Share of active users per core action](digest.png)" in markdown
    assert '<img src="digest.png"' in page

    metrics = read_metrics("week", storage=root)
    active = read_active_users("week", storage=root)
    for deployment in ("alpha", "beta", "all"):
        rows = usage_rows(markdown, deployment)
        a = active[active["deployment"] == deployment].set_index("period_start")["active_users"]
        assert rows["active users"][0] == str(a[LAST_WEEK])
        assert rows["active users"][1] == str(a[LAST_WEEK - dt.timedelta(weeks=1)])
        previous4 = [a[LAST_WEEK - dt.timedelta(weeks=k)] for k in range(1, 5)]
        assert rows["active users"][2] == f"{sum(previous4) / 4:.1f}"
        week = metrics[(metrics["deployment"] == deployment) & (metrics["period_start"] == LAST_WEEK)]
        for r in week.itertuples():
            assert rows[r.metric][0] == f"{r.users} ({r.pct:.1f}%)", (deployment, r.metric)
    # By hand: alpha 20 active (10 last week, 10.5 on average), 4 committers = 20.0% (40.0% last week).
    alpha = usage_rows(markdown, "alpha")
    assert alpha["active users"] == ["20", "10", "10.5", "↑"]
    assert alpha["commit"] == ["4 (20.0%)", "4 (40.0%)", "4.0 (38.2%)", "↓"]
    assert alpha["create_dataset"][3] == ""  # 0% every week: no arrow
    # beta's Wednesday was read incompletely: a data problem with what to do, and a provisional table.
    assert "**beta**: a source did not read its whole day: 2025-03-12 fixture" in markdown
    assert "What to do: rerun the day's extract" in markdown
    assert "**alpha**" not in markdown.split("**Data problems**")[1]
    assert "_provisional:" in markdown
    # Absent value-loop tables: said so, no crash.
    assert "No target status stored yet" in markdown and "No release impact stored yet" in markdown
    assert f"[This digest in Dagster](http://dagster.test/assets/weekly_digest?partition={LAST_WEEK})" in markdown
    assert "[The metrics notebook](http://notebook.test/metrics.ipynb)" in markdown
    # The asset's page shows the digest with its chart inline, and the headline numbers.
    event = next(e for e in result.get_asset_materialization_events() if e.partition == str(LAST_WEEK))
    meta = event.materialization.metadata
    inline = re.search(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", meta["digest"].value)
    assert inline and base64.b64decode(inline.group(1)) == png
    assert meta["week/alpha/active_users"].value == 20
    assert meta["week/alpha/commit/pct"].value == pytest.approx(20.0)
    assert meta["data_problems"].value == 1
    assert meta["deliveries"].value == "no channel configured"
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == "delivered" and check.passed
    # No user key in anything stored.
    for text in (markdown, page):
        check_no_personal_data(text, "digest")


def _target_rows(week: dt.date, status: dict[str, str]) -> pd.DataFrame:
    rows = []
    for target, st in status.items():
        group = "/SDSC/Tiny Team" if target == "tiny_group_share" else None
        rows.append(
            {
                "target": target,
                "metric": "commit",
                "measure": "pct",
                "group": group,
                "deployment": "alpha",
                "period": "week",
                "period_start": week,
                "value": 31.5,
                "baseline": 20.0,
                "goal": 30.0,
                "expected": 28.0,
                "projected": 33.0,
                "status": st,
                "start": dt.date(2025, 1, 1),
                "by": dt.date(2025, 3, 31) if target == "commit_share" else dt.date(2025, 12, 31),
                "owner": "team:renku-product",
                "why": "funders",
                "evaluated_week": week,
            }
        )
    return pd.DataFrame(rows)


def _impact_rows() -> pd.DataFrame:
    base = {
        "deployment": "alpha",
        "group": None,
        "before": 30.0,
        "after": 36.0,
        "model_low": 1.0,
        "model_high": 11.0,
        "p_value": 0.01,
        "p_adjusted": 0.03,
        "confounded_by": None,
        "explanation": "one sentence",
        "computed_at": pd.Timestamp("2025-03-17T05:00:00Z"),
    }
    # 2.5.0 went live in the week of 2025-02-10: after-window 02-17..03-10 ends with LAST_WEEK.
    return pd.DataFrame(
        [
            {
                **base,
                "release": "2.5.0",
                "metric": "commit",
                "measure": "pct",
                "release_date": dt.date(2025, 2, 12),
                "diff": 6.0,
                "ci_low": 1.5,
                "ci_high": 10.5,
                "verdict": "up",
                "as_expected": True,
            },
            {
                **base,
                "release": "2.5.0",
                "metric": "start_session",
                "measure": "pct",
                "release_date": dt.date(2025, 2, 12),
                "diff": 1.0,
                "ci_low": -4.0,
                "ci_high": 6.0,
                "verdict": "no_change",
                "as_expected": None,
            },
            {
                **base,
                "release": "2.5.0",
                "metric": "commit",
                "measure": "pct",
                "group": "/SDSC/Tiny Team",
                "release_date": dt.date(2025, 2, 12),
                "diff": 30.0,
                "ci_low": 1.0,
                "ci_high": 50.0,
                "verdict": "up",
                "as_expected": None,
            },
            {
                **base,
                "release": "2.6.0",
                "metric": "commit",
                "measure": "pct",
                "release_date": dt.date(2025, 3, 12),
                "diff": None,
                "ci_low": None,
                "ci_high": None,
                "verdict": "too_early",
                "as_expected": None,
            },
        ]
    )


def test_targets_and_releases_from_the_contract_tables(stored_weeks):
    config, root = stored_weeks
    storage = open_storage(root)
    previous = LAST_WEEK - dt.timedelta(weeks=1)
    storage.write_frame(
        metrics_key("target_status", previous),
        _target_rows(previous, {"commit_share": "on_track", "steady": "on_track", "tiny_group_share": "on_track"}),
    )
    storage.write_frame(
        metrics_key("target_status", LAST_WEEK),
        _target_rows(LAST_WEEK, {"commit_share": "off_track", "steady": "on_track", "tiny_group_share": "missed"}),
    )
    # The tiny group is below the minimum size this week: it must not be named anywhere.
    storage.write_frame(
        metrics_key("group_metrics_weekly", LAST_WEEK),
        pd.DataFrame([{"group": "/SDSC/Tiny Team", "deployment": "alpha", "withheld_reason": "below 5 members"}]),
    )
    storage.write_frame(RELEASE_IMPACT_KEY, _impact_rows())
    digest = build_digest(
        storage,
        LAST_WEEK,
        list(config.deployments),
        DigestSettings(deadline_near_days=28),
        dt.datetime.fromisoformat(RUN_NOW),
        chart=False,
    )
    targets = next(s for s in digest.sections if s.title == "Targets")
    assert targets.bullets[0] == "**commit_share** (commit 30%, alpha): on_track → **off_track**, now 31.5%"
    # commit_share is due 2025-03-31, 14 days after the week's end: near. steady (December): not near.
    assert (
        targets.bullets[1]
        == "Deadline near: **commit_share** (commit 30%, alpha): due 2025-03-31, off_track, now 31.5%, owner team:renku-product"
    )
    assert len(targets.bullets) == 2
    releases = next(s for s in digest.sections if s.title == "Releases")
    assert releases.bullets == [
        "**2.5.0** on alpha: commit pct **up** +6.0 points (95% interval +1.5 to +10.5), as expected; "
        "no detectable change in 1 other measure.",
        "**2.6.0** went live on alpha 2025-03-12: its verdict comes with the digest of the week of 2025-04-07.",
    ]
    rendered = to_mattermost(digest)["text"] + str(to_slack(digest))
    assert "Tiny Team" not in rendered


def test_digest_of_a_week_without_aggregates_says_so(stored_weeks):
    config, root = stored_weeks
    week = LAST_WEEK + dt.timedelta(weeks=1)
    digest = build_digest(
        open_storage(root),
        week,
        list(config.deployments),
        DigestSettings(),
        dt.datetime(2025, 3, 25, tzinfo=dt.timezone.utc),
    )
    usage = digest.sections[0]
    assert usage.paragraphs == [f"No weekly aggregates stored for the week of {week}."]
    problems = digest.sections[-1].bullets
    assert (
        f"**alpha**: no weekly aggregate for this week. What to do: materialize weekly_metrics for {week}." in problems
    )
    # 2025-03-17..03-24 were never extracted: named, with what to do.
    assert any(b.startswith("**alpha**: 7 day(s) not extracted (2025-03-17,") for b in problems)


def test_slack_payload_stays_within_slack_limits():
    long = "x" * 200
    digest = Digest(
        week=LAST_WEEK,
        title="t",
        sections=[Section(f"s{i}", bullets=[f"{long} {j}" for j in range(40)]) for i in range(30)],
        links=[("Dagster", "http://dagster.test/a")],
        headline={},
    )
    payload = to_slack(digest)
    assert len(payload["blocks"]) == 50
    sections = [b for b in payload["blocks"] if b["type"] == "section"]
    assert all(len(b["text"]["text"]) <= 3000 for b in sections)
    assert "<http://dagster.test/a|Dagster>" in payload["blocks"][-1]["text"]["text"]
    # Mattermost gets Markdown (bold with **), Slack its own markup (bold with *).
    small = Digest(LAST_WEEK, "t", [Section("Usage", bullets=["**alpha** up"])], [], {})
    assert "- **alpha** up" in to_mattermost(small)["text"]
    assert "• *alpha* up" in str(to_slack(small)["blocks"])


def test_personal_data_is_refused():
    with pytest.raises(ValueError, match="an e-mail address"):
        check_no_personal_data("owner jane.doe@example.org", "digest")
    with pytest.raises(ValueError, match="a user key"):
        check_no_personal_data("user 0123456789abcdef0123456789abcdef", "digest")
    check_no_personal_data("commit 4 (20.0%)", "digest")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"channels": [{"name": "s", "type": "slack", "webhook_url_env": "https://hooks.slack.com/x"}]},
            "digest.yaml: channel 's': webhook_url_env must name an environment variable",
        ),
        (
            {"channels": [{"name": "m", "type": "email", "host": "h", "sender": "a@b.ch", "recipients": []}]},
            "digest.yaml: channel 'm': recipients must be a non-empty list of e-mail addresses",
        ),
        ({"channels": [{"name": "x", "type": "teams"}]}, "digest.yaml: channel 'x': type must be one of"),
        (
            {"channels": [{"name": "s", "type": "slack", "webhook_url_env": "A", "channel": "c"}]},
            "digest.yaml: channel 's': channel and username are Mattermost keys",
        ),
        ({"chanels": []}, "digest.yaml: unknown key 'chanels'"),
        ({"dagster_ui_url": "dagster.local"}, "digest.yaml: dagster_ui_url must be an http(s) URL"),
        (
            {
                "channels": [
                    {"name": "a", "type": "slack", "webhook_url_env": "A"},
                    {"name": "a", "type": "mattermost", "webhook_url_env": "B"},
                ]
            },
            "digest.yaml: channel 'a': name given twice",
        ),
    ],
)
def test_config_errors_are_one_line(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_digest_config(raw, "digest.yaml")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_shipped_config_sends_nowhere(tmp_path):
    settings = load_digest_config(env={})
    assert settings.channels == () and settings.path == "digest.yaml"
    with pytest.raises(ConfigError, match="digest configuration not found"):
        load_digest_config(env={"RENKU_METRICS_DIGEST_CONFIG": str(tmp_path / "missing.yaml")})


def test_schedule_requests_the_week_just_ended_once_its_aggregates_are_stored(stored_weeks, tmp_path):
    from dagster import build_schedule_context

    from renku_metrics.defs.resources import MetricsStorageResource

    config, root = stored_weeks
    defs = build_defs(
        config=config, storage_root=root, env={"RENKU_METRICS_DIGEST_CONFIG": write_digest_config(tmp_path)}
    )
    schedule = defs.get_repository_def().get_schedule_def("weekly_digest_schedule")

    def tick(when: dt.datetime):
        with build_schedule_context(
            scheduled_execution_time=when,
            resources={"metrics_storage": MetricsStorageResource(root=root)},
            repository_def=defs.get_repository_def(),
            instance=DagsterInstance.ephemeral(),
        ) as context:
            return schedule.evaluate_tick(context)

    done = tick(dt.datetime(2025, 3, 17, 6, 30, tzinfo=dt.timezone.utc))
    assert [(r.partition_key, r.run_key) for r in done.run_requests] == [("2025-03-10", "weekly_digest:2025-03-10")]
    # A week later the aggregates of 2025-03-17 are not stored yet: skipped, saying why.
    later = tick(dt.datetime(2025, 3, 24, 6, 30, tzinfo=dt.timezone.utc))
    assert not later.run_requests and "2025-03-17 are not stored yet" in later.skip_message


def test_a_verdict_is_due_when_the_deployments_own_after_window_ends():
    """The digest announces a verdict in the last week of the after-window that the release
    impact itself uses: the deployment's releases.impact, not a second setting of its own."""
    from renku_metrics.core.config import Deployment
    from renku_metrics.core.value.digest import _verdict_due
    from renku_metrics.core.value.releases import ImpactSettings, ReleasesConfig

    def deployment(**impact) -> Deployment:
        return Deployment("d", dt.date(2025, 1, 1), {}, releases=ReleasesConfig(impact=ImpactSettings(**impact)))

    # Release week W; skipped; after-window W+1..W+4 (default): due in W+4.
    assert _verdict_due(deployment()) == dt.timedelta(weeks=4)
    assert _verdict_due(None) == dt.timedelta(weeks=4)  # a deployment without releases: the defaults
    # The demo's 3 weeks a side: W+1..W+3.
    assert _verdict_due(deployment(weeks_after=3)) == dt.timedelta(weeks=3)
    # The release week counted in the after-window: W..W+3.
    assert _verdict_due(deployment(skip_release_week=False)) == dt.timedelta(weeks=3)
