"""Targets: the file's validation, status at its edges against hand-computed values,
group targets from group-metrics files written by hand, the check, and the asset
materialized against real storage."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd
import pytest
from dagster import AssetCheckSeverity, AssetKey, AssetRecordsFilter, DagsterInstance, materialize

from renku_metrics import read_target_status
from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.config import load_config
from renku_metrics.core.layout import metrics_key
from renku_metrics.core.storage import open_storage
from renku_metrics.core.value.targets import (
    TARGETS_FILE,
    Series,
    Target,
    TargetError,
    evaluate_target,
    load_targets,
    parse_targets,
    target_status,
    write_status,
)
from renku_metrics.defs.resources import MetricsStorageResource
from renku_metrics.defs.targets.assets import KEY, build_target_status_asset
from renku_metrics.defs.targets.checks import target_check_result

D = dt.date


def target(**changes) -> Target:
    base = dict(
        id="t",
        metric="commit",
        measure="users",
        deployment="all",
        group=None,
        period="week",
        comparison=">=",
        value=20.0,
        start=D(2026, 1, 5),  # a Monday: its week is period 0
        by=D(2026, 2, 2),  # the Monday four weeks later: its week is period 4
        owner="renku-product",
        why="Because.",
    )
    base.update(changes)
    return Target(**base)


WEEKS = [D(2026, 1, 5) + dt.timedelta(weeks=i) for i in range(8)]  # 01-05 .. 02-23


def series(*values, reasons=None) -> Series:
    """Weekly values from 2026-01-05; None leaves a week without a value."""
    return Series({WEEKS[i]: v for i, v in enumerate(values) if v is not None}, reasons or {}, "not aggregated")


def by_period(rows: list[dict]) -> dict[dt.date, dict]:
    return {r["period_start"]: r for r in rows}


# --- status at its edges ---------------------------------------------------------------


def test_exactly_on_the_expected_path_is_on_track_and_behind_it_off_track():
    # Baseline 10 at week 0, goal 20 at week 4: expected 12.5 at week 1, 15 at week 2.
    rows = by_period(evaluate_target(target(), series(10, 12.5, 14), through=WEEKS[3]))
    assert [r["status"] for r in rows.values()] == ["on_track", "on_track", "off_track"]
    assert rows[WEEKS[0]]["expected"] == 10 and rows[WEEKS[0]]["baseline"] == 10
    assert rows[WEEKS[1]]["expected"] == 12.5
    assert rows[WEEKS[1]]["projected"] is None  # two values: too few for a trend
    assert rows[WEEKS[2]]["expected"] == 15
    # Least squares through (0, 10), (1, 12.5), (2, 14): slope 2, mean 12.1667 at x=1 -> 18.1667 at x=4.
    assert rows[WEEKS[2]]["projected"] == pytest.approx(12.5 - 1 / 3 + 2 * 3)
    assert all(r["goal"] == 20 for r in rows.values())


def test_behind_the_path_on_track_only_when_the_trend_reaches_the_goal():
    goal_30 = target(value=30.0)
    # Expected at week 2: 8 + 22 * 2/4 = 19. (0, 8), (1, 15), (2, 18): slope 5, mean 13.6667 at x=1
    # -> 13.6667 + 5 * 3 = 28.6667 at week 4, short of 30: off track.
    rows = by_period(evaluate_target(goal_30, series(8, 15, 18), through=WEEKS[3]))
    assert rows[WEEKS[2]]["expected"] == 19
    assert rows[WEEKS[2]]["projected"] == pytest.approx(28.66667, abs=1e-4)
    assert rows[WEEKS[2]]["status"] == "off_track"
    # (0, 8), (1, 17), (2, 18.9): slope 5.45, mean 14.6333 -> 30.9833 >= 30: behind the path, on track by the trend.
    rows = by_period(evaluate_target(goal_30, series(8, 17, 18.9), through=WEEKS[3]))
    assert rows[WEEKS[2]]["projected"] == pytest.approx(30.98333, abs=1e-4)
    assert rows[WEEKS[2]]["status"] == "on_track" and "trend reaches" in rows[WEEKS[2]]["reason"]


def test_the_trend_uses_the_last_six_periods():
    # Weeks 0..7: 0, 0, then 30 six times; the deadline is week 13. Over the last six weeks the
    # line is flat at 30 (all eight would slope upwards), short of 40; but 30 is ahead of the
    # path from 0 to 40, expected 40 * 7/13 = 21.54 at week 7: on track.
    long = dataclasses.replace(target(value=40.0), by=D(2026, 4, 6))
    rows = by_period(evaluate_target(long, series(0, 0, 30, 30, 30, 30, 30, 30), through=WEEKS[7] + dt.timedelta(7)))
    assert rows[WEEKS[7]]["projected"] == pytest.approx(30.0)
    assert rows[WEEKS[7]]["expected"] == pytest.approx(40 * 7 / 13)
    assert rows[WEEKS[7]]["status"] == "on_track" and "ahead of the expected" in rows[WEEKS[7]]["reason"]


def test_met_as_soon_as_the_latest_period_satisfies_it_and_not_after_it_drops():
    rows = by_period(evaluate_target(target(), series(10, 21, 13), through=WEEKS[3]))
    assert rows[WEEKS[1]]["status"] == "met"
    # Week 2 drops to 13 < expected 15; trend (0,10),(1,21),(2,13): slope 1.5, mean 14.6667 -> 19.1667: off track.
    assert rows[WEEKS[2]]["status"] == "off_track"


def test_deadline_mid_week_is_decided_by_its_whole_week():
    wednesday = target(by=D(2026, 2, 4))  # in the week of 02-02 (period 4)
    # Evaluated through 02-02 (the week of 01-26 has ended, 02-02 has not): not decided yet.
    before = evaluate_target(wednesday, series(10, 12.5, 15, 16, 19), through=D(2026, 2, 2))
    assert before[-1]["period_start"] == WEEKS[3] and before[-1]["status"] == "off_track"
    # Week 3 expected 17.5; trend (0..3) 10, 12.5, 15, 16: slope 2.05, mean 13.375 at 1.5 -> 18.5 < 20.
    assert before[-1]["expected"] == 17.5 and before[-1]["projected"] == pytest.approx(18.5)
    # Once the deadline's week has ended, 19 in that week decides: missed.
    after = by_period(evaluate_target(wednesday, series(10, 12.5, 15, 16, 19), through=D(2026, 2, 9)))
    assert after[WEEKS[4]]["status"] == "missed" and after[WEEKS[4]]["expected"] == 20
    assert after[WEEKS[4]]["projected"] is None
    met = by_period(evaluate_target(wednesday, series(10, 12.5, 15, 16, 20), through=D(2026, 2, 9)))
    assert met[WEEKS[4]]["status"] == "met"


def test_after_the_deadline_the_verdict_is_final():
    # 19 in the deadline's week: missed, and stays missed although week 5 reaches 25.
    rows = by_period(evaluate_target(target(), series(10, 12, 14, 16, 19, 25, 30), through=WEEKS[7]))
    assert [rows[w]["status"] for w in WEEKS[4:7]] == ["missed", "missed", "missed"]
    assert rows[WEEKS[5]]["value"] == 25 and rows[WEEKS[5]]["expected"] == 20
    # Met in the deadline's week: met stays, also when later weeks drop.
    rows = by_period(evaluate_target(target(), series(10, 12, 14, 16, 21, 3, 2), through=WEEKS[7]))
    assert [rows[w]["status"] for w in WEEKS[4:7]] == ["met", "met", "met"]
    # Met before the deadline but not in its week: missed.
    rows = by_period(evaluate_target(target(), series(10, 12, 22, 16, 18), through=WEEKS[5]))
    assert rows[WEEKS[2]]["status"] == "met"
    assert rows[WEEKS[4]]["status"] == "missed"
    # Week 3: 16 < expected 17.5, but (0..3) 10, 12, 22, 16 slope 2.8, mean 15 at 1.5 -> 22 by week 4.
    assert rows[WEEKS[3]]["status"] == "on_track" and rows[WEEKS[3]]["projected"] == pytest.approx(22.0)
    # The deadline's week has no value: the latest value before it decides.
    rows = by_period(evaluate_target(target(), series(10, 12, 14, 21, None, 5), through=WEEKS[6]))
    assert rows[WEEKS[4]]["status"] == "met" and rows[WEEKS[5]]["status"] == "met"
    assert rows[WEEKS[4]]["value"] is None and str(WEEKS[3]) in rows[WEEKS[5]]["reason"]


def test_no_data():
    rows = evaluate_target(target(), Series({}, {}, "no core_actions_weekly stored"), through=WEEKS[3])
    assert [r["status"] for r in rows] == ["no_data"] * 3
    assert all(r["reason"] == "no core_actions_weekly stored" and r["expected"] is None for r in rows)
    # A provisional week has no value; its reason is kept.
    rows = by_period(
        evaluate_target(target(), series(10, None, 15, reasons={WEEKS[1]: "provisional: x"}), through=WEEKS[3])
    )
    assert rows[WEEKS[1]]["status"] == "no_data" and rows[WEEKS[1]]["reason"] == "provisional: x"
    assert rows[WEEKS[2]]["status"] == "on_track"  # 15 == expected 15
    # Past the deadline without any value: no verdict.
    rows = evaluate_target(target(), Series({}, {}, "none"), through=WEEKS[6])
    assert rows[-1]["status"] == "no_data" and "deadline passed" in rows[-1]["reason"]
    # Not started: its first week has not ended.
    rows = evaluate_target(target(), series(10), through=D(2026, 1, 11))
    assert len(rows) == 1 and rows[0]["status"] == "no_data" and rows[0]["reason"].startswith("not started")


def test_baseline_when_start_has_no_data_is_the_first_later_value():
    rows = by_period(evaluate_target(target(), series(None, 12, 16), through=WEEKS[3]))
    assert rows[WEEKS[0]]["status"] == "no_data" and rows[WEEKS[0]]["expected"] is None
    # Path from 12 at week 1 to 20 at week 4: 12 + 8 * 1/3 at week 2.
    assert rows[WEEKS[1]]["baseline"] == 12 and rows[WEEKS[1]]["expected"] == 12
    assert rows[WEEKS[2]]["expected"] == pytest.approx(14.6667, abs=1e-4)
    assert rows[WEEKS[2]]["status"] == "on_track"


def test_at_most_targets():
    down = target(measure="pct", comparison="<=", value=10.0)
    # Baseline 20, goal 10 at week 4: expected 17.5 at week 1 and 15 at week 2.
    rows = by_period(evaluate_target(down, series(20, 17, 16, 9), through=WEEKS[4]))
    assert rows[WEEKS[1]]["status"] == "on_track"  # 17 <= 17.5
    # 16 > 15: behind; trend (0,20),(1,17),(2,16): slope -2, mean 17.6667 at x=1 -> 11.6667 > 10.
    assert rows[WEEKS[2]]["projected"] == pytest.approx(11.6667, abs=1e-4)
    assert rows[WEEKS[2]]["status"] == "off_track"
    assert rows[WEEKS[3]]["status"] == "met"


def test_monthly_periods_and_a_mid_month_deadline():
    monthly = target(period="month", start=D(2026, 1, 20), by=D(2026, 4, 15), value=40.0, measure="pct")
    values = Series({D(2026, 1, 1): 10.0, D(2026, 2, 1): 20.0, D(2026, 3, 1): 25.0, D(2026, 4, 1): 41.0}, {}, "")
    # Through 2026-04-30: April has not ended, so March is the latest: expected 10 + 30 * 2/3 = 30 -> behind;
    # trend (0,10),(1,20),(2,25): slope 7.5, mean 18.3333 at x=1 -> 18.3333 + 15 = 33.3333 < 40: off track.
    rows = evaluate_target(monthly, values, through=D(2026, 4, 30))
    assert [r["period_start"] for r in rows] == [D(2026, 1, 1), D(2026, 2, 1), D(2026, 3, 1)]
    assert rows[-1]["expected"] == 30 and rows[-1]["status"] == "off_track"
    assert rows[-1]["projected"] == pytest.approx(33.3333, abs=1e-4)
    rows = evaluate_target(monthly, values, through=D(2026, 5, 1))
    assert rows[-1]["period_start"] == D(2026, 4, 1) and rows[-1]["status"] == "met"


# --- stored values: aggregates and group metrics written by hand -------------------------


def core_rows(start: dt.date, period: str, values: dict[tuple[str, str], tuple[int, int]], complete=True):
    rows = []
    end = start + dt.timedelta(days=7) if period == "week" else (start + dt.timedelta(days=32)).replace(day=1)
    for (deployment, metric), (users, active) in values.items():
        rows.append(
            {
                "deployment": deployment,
                "period": period,
                "period_start": start,
                "period_end": end,
                "metric": metric,
                "title": metric,
                "status": "active",
                "users": users,
                "active_users": active,
                "pct": round(100.0 * users / active, 2) if active else None,
                "complete": complete,
                "coverage_note": "" if complete else "period not over",
                "computed_at": pd.Timestamp("2026-03-01", tz="UTC"),
            }
        )
    return pd.DataFrame(rows)


def group_rows(start: dt.date, rows: list[dict]) -> pd.DataFrame:
    """group_metrics_monthly rows in the stored layout (contract of the groups part)."""
    end = (start + dt.timedelta(days=32)).replace(day=1)
    out = []
    for r in rows:
        members, active, users = r.get("members"), r.get("active_members"), r.get("users")
        withheld = r.get("withheld_reason")
        out.append(
            {
                "period_start": start,
                "period_end": end,
                "deployment": r.get("deployment", "demo"),
                "group": r["group"],
                "group_kind": "keycloak_group",
                "metric": r.get("metric", "start_session"),
                "members": members,
                "active_members": active,
                "users": users,
                "pct_of_members": None if withheld else 100.0 * users / members,
                "pct_of_active_members": None if withheld else 100.0 * users / active,
                "membership_as_of": start,
                "complete": r.get("complete", True),
                "withheld_reason": withheld,
            }
        )
    frame = pd.DataFrame(out)
    for col in ("members", "active_members", "users"):
        frame[col] = frame[col].astype("Int64")
    return frame


ACADEMIC = "/SDSC/Academic Team"


def test_pct_of_members_from_group_metrics_files(tmp_path):
    storage = open_storage(str(tmp_path / "data"))
    team = target(
        id="academic",
        metric="start_session",
        measure="pct_of_members",
        deployment="demo",
        group=ACADEMIC,
        period="month",
        value=50.0,
        start=D(2026, 1, 1),
        by=D(2026, 6, 30),  # June: period 5
    )
    months = {
        D(2026, 1, 1): [{"group": ACADEMIC, "members": 40, "active_members": 20, "users": 8}],
        D(2026, 2, 1): [
            {"group": ACADEMIC, "members": 40, "active_members": 20, "users": 12},
            {
                "group": "/SDSC/Tiny",
                "members": None,
                "active_members": None,
                "users": None,
                "withheld_reason": "below 5",
            },
        ],
        D(2026, 3, 1): [{"group": ACADEMIC, "members": 41, "active_members": 20, "users": 20, "complete": False}],
    }
    for start, rows in months.items():
        storage.write_frame(metrics_key("group_metrics_monthly", start), group_rows(start, rows))
    frame = target_status(storage, [team], D(2026, 3, 30))  # the week of 03-30 ends 04-06: March has ended
    assert list(frame["period_start"]) == [D(2026, 1, 1), D(2026, 2, 1), D(2026, 3, 1)]
    # January 8/40 = 20% is the baseline; February: expected 20 + 30 * 1/5 = 26, 12/40 = 30% is ahead.
    assert list(frame["value"].iloc[:2]) == [20.0, 30.0]
    assert list(frame["expected"].iloc[:2]) == [20.0, 26.0]
    assert list(frame["status"]) == ["on_track", "on_track", "no_data"]
    assert frame["reason"].iloc[2].startswith("provisional")
    assert set(frame["group"]) == {ACADEMIC} and set(frame["evaluated_week"]) == {D(2026, 3, 30)}
    # pct of a group is of its active members: 12/20 = 60% in February.
    active = target_status(storage, [dataclasses.replace(team, measure="pct")], D(2026, 3, 30))
    assert active["value"].iloc[1] == 60.0
    # A group below the minimum size: its counts are withheld, the reason says so.
    tiny = target_status(storage, [dataclasses.replace(team, group="/SDSC/Tiny")], D(2026, 3, 30))
    assert tiny["status"].iloc[1] == "no_data" and tiny["reason"].iloc[1] == "withheld: below 5"
    # A group nobody measures, and no group metrics at all: no_data with the reason, never a crash.
    unknown = target_status(storage, [dataclasses.replace(team, group="/Nobody")], D(2026, 3, 30))
    assert set(unknown["status"]) == {"no_data"} and "'/Nobody'" in unknown["reason"].iloc[0]
    empty = target_status(open_storage(str(tmp_path / "empty")), [team], D(2026, 3, 30))
    assert set(empty["status"]) == {"no_data"}
    assert "no group metrics stored (group_metrics_monthly is empty)" in empty["reason"].iloc[0]


def test_users_and_pct_from_the_aggregates_and_an_unknown_deployment(tmp_path):
    storage = open_storage(str(tmp_path / "data"))
    for i, (users, active) in enumerate([(10, 50), (13, 50), (20, 40)]):
        start = WEEKS[i]
        storage.write_frame(
            metrics_key("core_actions_weekly", start),
            core_rows(start, "week", {("all", "commit"): (users, active), ("alpha", "commit"): (1, 2)}),
        )
    pct = target(id="share", measure="pct", value=40.0)
    frame = target_status(storage, [target(), pct, target(id="other", deployment="beta")], WEEKS[2], ["alpha"])
    users = frame[frame["target"] == "t"].reset_index()
    assert list(users["value"]) == [10.0, 13.0, 20.0] and list(users["status"]) == ["on_track", "on_track", "met"]
    shares = frame[frame["target"] == "share"]
    assert list(shares["value"]) == [20.0, 26.0, 50.0]
    beta = frame[frame["target"] == "other"]
    assert set(beta["status"]) == {"no_data"} and "deployment 'beta' is not configured" in beta["reason"].iloc[0]


# --- the targets file -------------------------------------------------------------------


def entry(**changes) -> dict:
    item = {
        "id": "sessions",
        "metric": "start_session",
        "measure": "pct",
        "period": "month",
        "comparison": ">=",
        "value": 40,
        "start": "2026-01-01",
        "by": "2026-12-31",
        "owner": "renku-product",
        "why": "Sessions are where the work happens.",
    }
    item.update(changes)
    return {k: v for k, v in item.items() if v is not None}


METRICS = [m.id for m in load_catalog().computed()]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colour": "red"}, "targets.yaml: target 'sessions': unknown key 'colour' (allowed: "),
        ({"why": None}, "targets.yaml: target 'sessions': missing required key 'why'"),
        ({"measure": "share"}, "target 'sessions': key 'measure' must be one of ('users', 'pct', 'pct_of_members')"),
        ({"comparison": ">"}, "target 'sessions': key 'comparison' must be one of"),
        ({"period": "year"}, "target 'sessions': key 'period' must be one of"),
        ({"value": 130}, "target 'sessions': key 'value' is a percentage, must be <= 100, got 130"),
        ({"value": -1}, "target 'sessions': key 'value' must be a non-negative number"),
        ({"start": "soon"}, "target 'sessions': key 'start' must be a date YYYY-MM-DD, got 'soon'"),
        ({"by": "2026-01-20"}, "target 'sessions': key 'by' (2026-01-20) must fall in a later month than 'start'"),
        ({"metric": "clone"}, "target 'sessions': key 'metric' names unknown metric 'clone' (known: active_users,"),
        ({"measure": "pct_of_members"}, "target 'sessions': key 'group' is required with measure 'pct_of_members'"),
        ({"metric": "active_users"}, "target 'sessions': key 'measure': pct of active users of 'active_users'"),
        ({"group": ""}, "target 'sessions': key 'group' must be a non-empty group name"),
        ({"id": "Bad Id"}, "targets.yaml: target 'Bad Id': key 'id' must match"),
    ],
)
def test_invalid_entries_name_file_entry_and_key(changes, message):
    with pytest.raises(TargetError) as info:
        parse_targets({"targets": [entry(**changes)]}, "targets.yaml", metrics=METRICS)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(TargetError, match="duplicate id 'sessions'"):
        parse_targets({"targets": [entry(), entry()]}, "targets.yaml")
    with pytest.raises(TargetError, match="expected a top-level 'targets' list"):
        parse_targets({"target": []}, "targets.yaml")
    bad = tmp_path / "t.yaml"
    bad.write_text("targets: [")
    with pytest.raises(TargetError, match="t.yaml: not valid YAML"):
        load_targets(bad)
    # An unquoted impossible date stays text and reaches validation, which names the entry and key.
    dates = tmp_path / "dates.yaml"
    dates.write_text(TARGETS_FILE.read_text().replace("by: 2027-06-30", "by: 2027-13-30", 1))
    with pytest.raises(TargetError, match="target 'academic_team_sessions': key 'by' must be a date"):
        load_targets(dates)
    with pytest.raises(TargetError, match="not found"):
        load_targets(tmp_path / "missing.yaml")
    # $RENKU_METRICS_TARGETS names another file.
    other = tmp_path / "other.yaml"
    other.write_text("targets: []\n")
    assert load_targets(env={"RENKU_METRICS_TARGETS": str(other)}) == ()


def test_shipped_targets_have_the_pitch_example_and_the_commit_targets():
    targets = {t.id: t for t in load_targets(metrics=METRICS, env={})}
    academic = targets["academic_team_sessions"]
    assert (academic.measure, academic.group, academic.deployment, academic.period, academic.metric) == (
        "pct_of_members",
        ACADEMIC,
        "demo",
        "month",
        "start_session",
    )
    commit = {(t.measure, t.period, t.value, t.by) for t in targets.values() if t.metric == "commit"}
    assert commit == {("pct", "month", 30.0, D(2027, 6, 30)), ("users", "week", 100.0, D(2027, 3, 31))}
    assert all(t.owner and t.why for t in targets.values())


def test_shipped_targets_deployments_exist():
    names = {d.name for d in load_config(TARGETS_FILE.parents[2] / "deployments.yaml", env={}).deployments}
    assert {t.deployment for t in load_targets(env={})} <= names | {"all"}


# --- the check and the asset --------------------------------------------------------------


def test_check_warns_when_off_track_or_missed_and_shows_the_trajectory():
    t = target()
    for values, through, status, passed in (
        ((10, 12.5, 14), WEEKS[3], "off_track", False),
        ((10, 12.5, 15), WEEKS[3], "on_track", True),
        ((10, 12, 14, 16, 19), WEEKS[5], "missed", False),
        ((10, 12, 14, 16, 21), WEEKS[5], "met", True),
        ((), WEEKS[3], "no_data", True),
    ):
        rows = pd.DataFrame(evaluate_target(t, series(*values), through=through))
        result = target_check_result(KEY, t, rows)
        assert result.metadata["status"].value == status
        assert result.passed is passed and result.severity == AssetCheckSeverity.WARN
        trajectory = result.metadata["trajectory"].value
        assert trajectory.count("\n") == len(rows) + 1  # header, separator, one line per period
        assert f"| {rows['period_start'].iloc[-1]} |" in trajectory


def test_materialize_target_status_against_local_storage(tmp_path):
    root = tmp_path / "data"
    storage = open_storage(str(root))
    config_file = tmp_path / "deployments.yaml"
    config_file.write_text("deployments:\n  - {name: alpha, start_date: 2026-01-05, sources: {demo: {users: 10}}}\n")
    config = load_config(config_file, env={})
    for i, users in enumerate([10, 12.5, 14]):
        storage.write_frame(
            metrics_key("core_actions_weekly", WEEKS[i]),
            core_rows(WEEKS[i], "week", {("all", "commit"): (users, 100), ("alpha", "commit"): (users, 100)}),
        )
    team = target(id="team", group=ACADEMIC, measure="pct_of_members", period="month", by=D(2026, 6, 30))
    asset_def = build_target_status_asset(config, (target(), team), [])
    instance = DagsterInstance.ephemeral()
    result = materialize(
        [asset_def],
        partition_key=WEEKS[2].isoformat(),
        resources={"metrics_storage": MetricsStorageResource(root=str(root))},
        instance=instance,
    )
    assert result.success
    stored = read_target_status(storage=str(root))
    assert list(stored[stored["target"] == "t"]["status"]) == ["on_track", "on_track", "off_track"]
    assert set(stored["evaluated_week"]) == {WEEKS[2]}
    # No month has ended by the end of the week of 01-19, and there are no group metrics: no_data, not a crash.
    assert list(stored[stored["target"] == "team"]["status"]) == ["no_data"]
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["target_t"].passed and checks["target_t"].severity == AssetCheckSeverity.WARN
    assert checks["target_team"].passed
    meta = instance.fetch_materializations(AssetKey("target_status"), limit=1).records[0].asset_materialization.metadata
    assert meta["targets_off_track"].value == 1 and meta["targets_no_data"].value == 1
    assert meta["dagster/row_count"].value == 4
    # A rerun of the partition replaces its file, never appends.
    assert materialize(
        [asset_def],
        partition_key=WEEKS[2].isoformat(),
        resources={"metrics_storage": MetricsStorageResource(root=str(root))},
        instance=instance,
    ).success
    assert len(read_target_status(storage=str(root))) == 4
    assert len(read_target_status("team", storage=str(root))) == 1
    # A run over a range of weeks (as a backfill launches it) stores every week with its own metadata.
    from renku_metrics.defs.demo_run import partition_range_tags

    assert materialize(
        [asset_def],
        tags=partition_range_tags(WEEKS[0].isoformat(), WEEKS[1].isoformat()),
        resources={"metrics_storage": MetricsStorageResource(root=str(root))},
        instance=instance,
    ).success
    stored = read_target_status("t", storage=str(root))
    assert stored.groupby("evaluated_week").size().to_dict() == {WEEKS[0]: 1, WEEKS[1]: 2, WEEKS[2]: 3}
    for week, rows in ((WEEKS[0], 2), (WEEKS[1], 3)):
        record = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=KEY, asset_partitions=[week.isoformat()]), limit=1
        ).records[0]
        assert record.asset_materialization.metadata["dagster/row_count"].value == rows


def test_target_status_on_s3(s3_endpoint, s3_bucket):
    storage = open_storage(f"s3://{s3_bucket}/metrics-root", endpoint_url=s3_endpoint)
    for i, users in enumerate([10, 13]):
        storage.write_frame(
            metrics_key("core_actions_weekly", WEEKS[i]), core_rows(WEEKS[i], "week", {("all", "commit"): (users, 50)})
        )
    frame = target_status(storage, [target()], WEEKS[1])
    assert write_status(storage, WEEKS[1], frame) == "metrics/target_status/period=2026-01-12/target_status.parquet"
    stored = read_target_status(storage=storage)
    assert list(stored["value"]) == [10.0, 13.0] and list(stored["status"]) == ["on_track", "on_track"]
    assert list(stored["expected"]) == [10.0, 12.5]


def test_report_shows_targets_with_weeks_left_and_a_chart_per_group_target():
    from renku_metrics.defs.report.assets import targets_section

    team = target(id="team", group=ACADEMIC, deployment="demo", measure="pct_of_members", value=50.0)
    rows = [
        *[{**r, "evaluated_week": WEEKS[2]} for r in evaluate_target(target(), series(10, 12.5, 14), WEEKS[3])],
        *[{**r, "evaluated_week": WEEKS[1]} for r in evaluate_target(team, series(20, 40), WEEKS[2])],
    ]
    frame = pd.DataFrame(rows)
    lines, charts, meta = targets_section(frame)
    table = "\n".join(lines)
    # Week of 01-19 ends 01-26; the deadline 02-02 is 1 whole week later. The team's (evaluated the week
    # before, ending 01-19): 2 weeks left; expected 20 + 30 * 1/4 = 27.5, 40 is ahead.
    assert "| t | all | week 2026-01-19 | off_track | 14 | 15 | >= 20 | 2026-02-02 | 1 | renku-product |" in table
    assert f"| team | {ACADEMIC} (demo) | week 2026-01-12 | on_track | 40 | 27.5 | >= 50 | 2026-02-02 | 2 |" in table
    assert list(charts) == ["target_team"] and charts["target_team"].startswith(b"\x89PNG")
    assert "targets" in meta
    lines, charts, meta = targets_section(pd.DataFrame())
    assert "No target status stored yet" in "\n".join(lines) and charts == {}


def test_sensor_requests_the_last_ended_week_after_new_aggregates(tmp_path):
    from dagster import AssetMaterialization, build_sensor_context

    from renku_metrics.definitions import build_defs

    config_file = tmp_path / "deployments.yaml"
    config_file.write_text("deployments:\n  - {name: alpha, start_date: 2026-01-05, sources: {demo: {users: 10}}}\n")
    defs = build_defs(config=load_config(config_file, env={}), storage_root=str(tmp_path), env={})
    sensor = defs.resolve_sensor_def("target_status_sensor")
    instance = DagsterInstance.ephemeral()
    assert sensor.evaluate_tick(build_sensor_context(instance=instance)).run_requests == []
    instance.report_runless_asset_event(AssetMaterialization("core_actions_monthly", partition="2026-01-01"))
    repo = defs.get_repository_def()
    first = sensor.evaluate_tick(build_sensor_context(instance=instance, repository_def=repo))
    today = dt.datetime.now(dt.timezone.utc).date()
    last_ended_week = today - dt.timedelta(days=today.weekday() + 7)
    assert [r.partition_key for r in first.run_requests] == [last_ended_week.isoformat()]
    again = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=first.cursor, repository_def=repo))
    assert again.run_requests == []


def test_no_targets_and_weeks_without_group_targets_store_a_typed_table(tmp_path):
    storage = open_storage(str(tmp_path / "data"))
    write_status(storage, WEEKS[0], target_status(storage, [], WEEKS[0]))
    write_status(storage, WEEKS[1], target_status(storage, [target()], WEEKS[1]))
    schema = storage.read_parquet(metrics_key("target_status", WEEKS[1])).schema
    assert str(schema.field("group").type) == "string" and str(schema.field("period_start").type) == "date32[day]"
    stored = read_target_status(storage=storage)
    assert len(stored) == 2 and set(stored["evaluated_week"]) == {WEEKS[1]}
