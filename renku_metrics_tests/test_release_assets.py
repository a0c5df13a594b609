"""The releases and release_impact assets, materialized against real storage (a local
directory and the moto S3 server), with GitHub simulated and weekly tables written as
the aggregates and the group metrics (storage contract 1) write them."""

import datetime as dt

import pandas as pd
import pytest
from dagster import DagsterInstance

from renku_metrics.core.config import load_config
from renku_metrics.core.layout import metrics_key
from renku_metrics.core.publication import publish_period
from renku_metrics.core.readers import read_release_impact, read_releases
from renku_metrics.core.storage import open_storage
from renku_metrics.definitions import build_defs
from renku_metrics.defs.clock import NOW_TAG
from renku_metrics.defs.metadata import table_rows
from renku_metrics_tests.simulators.github_sim import GitHubSimulator

UTC = dt.timezone.utc
MONDAY = dt.date(2025, 3, 3)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def write_weekly(storage, deployment: str, sessions: list[int], active: list[int]) -> None:
    """active_users_weekly and core_actions_weekly as the aggregates write them: one pair per week,
    published together (a reader accepts a period only when both tables hold it)."""
    for i, (users, act) in enumerate(zip(sessions, active, strict=True)):
        start = MONDAY + dt.timedelta(weeks=i)
        frame = pd.DataFrame(
            {
                "deployment": [deployment, deployment],
                "period": "week",
                "period_start": [start, start],
                "period_end": [start + dt.timedelta(days=6)] * 2,
                "metric": ["start_session", "commit"],
                "title": ["Started a session", "Committed"],
                "status": "active",
                "users": [users, 30 + i % 2],
                "active_users": [act, act],
                "pct": [100 * users / act, 100 * (30 + i % 2) / act],
                "complete": True,
                "coverage_note": None,
                "computed_at": pd.Timestamp("2025-06-01", tz="UTC"),
            }
        )
        active_users = pd.DataFrame(
            {
                "deployment": [deployment],
                "period": "week",
                "period_start": [start],
                "period_end": [start + dt.timedelta(days=6)],
                "active_users": [act],
                "complete": True,
                "coverage_note": None,
                "computed_at": pd.Timestamp("2025-06-01", tz="UTC"),
            }
        )
        publish_period(storage, "week", start, active_users, frame)


def write_groups(storage, deployment: str) -> None:
    """group_metrics_weekly files by storage contract 1."""
    for i in range(9):
        start = MONDAY + dt.timedelta(weeks=i)
        frame = pd.DataFrame(
            {
                "period_start": [start] * 2,
                "period_end": [start + dt.timedelta(days=6)] * 2,
                "deployment": deployment,
                "group": ["ETH Zurich", "Tiny Lab"],
                "group_kind": ["organization", "keycloak_group"],
                "metric": "start_session",
                "members": pd.array([200, None], dtype="Int64"),
                "active_members": pd.array([40, None], dtype="Int64"),
                "users": pd.array([10 + i % 2, None], dtype="Int64"),
                "pct_of_members": [5.0, None],
                "pct_of_active_members": [25.0, None],
                "membership_as_of": start,
                "complete": True,
                "withheld_reason": [None, "below minimum group size"],
            }
        )
        storage.write_frame(metrics_key("group_metrics_weekly", start), frame)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_releases_and_impact_materialize_with_verdicts(tmp_path, where, request, monkeypatch):
    if where == "local":
        root = str(tmp_path / "data")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("s3_endpoint"))
        root = f"s3://{request.getfixturevalue('s3_bucket')}/renku-metrics"
    with GitHubSimulator() as github:
        github.add_release(
            "2.5.0", dt.datetime(2025, 4, 2, 9, tzinfo=UTC), created_at=dt.datetime(2025, 3, 20, tzinfo=UTC)
        )
        github.add_release("2.5.1", dt.datetime(2025, 4, 9, 9, tzinfo=UTC))
        github.add_release("2.6.0", None, draft=True)
        (tmp_path / "releases.yaml").write_text(
            "releases:\n"
            "  - name: '2.5.0'\n"
            "    sentence: Faster session start\n"
            "    expected_effect: {metric: start_session, direction: up, size: 10}\n"
        )
        (tmp_path / "deployments.yaml").write_text(
            "deployments:\n"
            "  - name: demo\n"
            "    start_date: 2025-03-01\n"
            "    sources: {demo: {users: 50}}\n"
            f"    releases: {{github: {{url: '{github.url}'}}, file: releases.yaml}}\n"
        )
        config = load_config(tmp_path / "deployments.yaml", env={})
        storage = open_storage(root)
        # 4 weeks at 30%, the release week (2025-03-31), 4 weeks at 45%
        write_weekly(storage, "demo", [36, 35, 37, 36, 40, 54, 55, 53, 54], [120] * 9)
        write_groups(storage, "demo")
        defs = build_defs(config=config, storage_root=root)
        result = defs.resolve_job_def("releases_daily").execute_in_process(
            instance=DagsterInstance.ephemeral(), tags={NOW_TAG: "2025-06-02T06:00:00Z"}, run_config=QUIET
        )
    assert result.success
    releases = read_releases(storage=root)
    assert releases[["release", "date", "source", "description"]].values.tolist() == [
        ["2.5.0", dt.date(2025, 4, 2), "github", "Faster session start"]
    ]
    impact = read_release_impact(release="2.5.0", deployment="demo", storage=root)
    share = impact[(impact["metric"] == "start_session") & (impact["measure"] == "pct") & impact["group"].isna()].iloc[
        0
    ]
    assert share["verdict"] == "up" and share["diff"] == pytest.approx(15.0)
    assert bool(share["as_expected"]) is True
    commits = impact[(impact["metric"] == "commit") & (impact["measure"] == "pct")].iloc[0]
    assert commits["verdict"] == "no_change"
    eth = impact[(impact["group"] == "ETH Zurich") & (impact["measure"] == "pct")].iloc[0]
    assert eth["before"] == pytest.approx(100 * 42 / 160)  # weeks 0-3: 10, 11, 10, 11 of 40 each
    assert "Tiny Lab" not in set(impact["group"].dropna())  # withheld: no counts
    events = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
    }
    meta = events["release_impact"]
    assert meta["verdicts/up"].value >= 2 and meta["groups_included"].value is True
    shown = table_rows(meta["verdict_table"])
    assert {"release": "2.5.0", "metric": "start_session", "measure": "pct", "verdict": "up"}.items() <= shown[
        [i for i, r in enumerate(shown) if r["metric"] == "start_session" and r["measure"] == "pct"][0]
    ].items()
    assert events["releases"]["dagster/row_count"].value == 1
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("verdicts_well_formed", True)]


def test_without_releases_configured_the_tables_are_empty(tmp_path):
    root = str(tmp_path / "data")
    (tmp_path / "deployments.yaml").write_text(
        "deployments:\n  - {name: demo, start_date: 2025-03-01, sources: {demo: {users: 50}}}\n"
    )
    defs = build_defs(config=load_config(tmp_path / "deployments.yaml", env={}), storage_root=root)
    result = defs.resolve_job_def("releases_daily").execute_in_process(
        instance=DagsterInstance.ephemeral(), run_config=QUIET
    )
    assert result.success
    assert read_releases(storage=root).empty and read_release_impact(storage=root).empty


def test_the_verdict_check_catches_malformed_tables():
    from renku_metrics.defs.releases.checks import verdict_problems

    good = {
        "release": "r1",
        "deployment": "d",
        "metric": "commit",
        "measure": "pct",
        "group": None,
        "verdict": "no_change",
        "model_low": -1.0,
        "model_high": 2.0,
        "p_adjusted": 0.5,
        "confounded_by": None,
    }
    assert verdict_problems(pd.DataFrame([good])) == []
    assert verdict_problems(pd.DataFrame([good, good])) == [
        "2 rows share a (release, deployment, metric, measure, group)"
    ]
    assert verdict_problems(pd.DataFrame([{**good, "verdict": "maybe"}])) == ["unknown verdicts: maybe"]
    assert verdict_problems(pd.DataFrame([{**good, "model_low": None}])) == [
        "a judged row lacks its model interval or adjusted p-value"
    ]
    assert verdict_problems(pd.DataFrame([{**good, "verdict": "confounded"}])) == [
        "a confounded row does not name the other release"
    ]
