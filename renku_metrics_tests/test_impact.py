"""Release impact: intervals, Benjamini-Hochberg, and the verdict rules at their edges,
on synthetic weekly series with hand-computed numbers; plus a small simulation of the
false-alarm rate and power (renku_metrics_tests/bench_impact.py measures them at scale)."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from renku_metrics.core.value.impact import (
    benjamini_hochberg,
    newcombe,
    release_impact,
    weekly_series,
    wilson,
)
from renku_metrics.core.value.releases import CalendarSettings, ImpactSettings, releases_frame

MONDAY = dt.date(2025, 3, 3)  # lecture weeks all through the windows below
TODAY = dt.date(2025, 9, 1)
SETTINGS = {"d": (ImpactSettings(), CalendarSettings())}


def weeks(n: int, start: dt.date = MONDAY) -> list[dt.date]:
    return [start + dt.timedelta(weeks=i) for i in range(n)]


def metrics_frame(starts, users, active, metric="start_session", deployment="d") -> pd.DataFrame:
    """A frame shaped like read_metrics("week")."""
    return pd.DataFrame(
        {
            "deployment": deployment,
            "period_start": starts,
            "metric": metric,
            "users": users,
            "active_users": active,
            "pct": [100 * u / a for u, a in zip(users, active, strict=True)],
            "complete": True,
        }
    )


def release(name: str, date: dt.date, deployment: str = "d", **expected) -> dict:
    return {"release": name, "deployment": deployment, "date": date, "source": "yaml", **expected}


def judge(releases: list[dict], weekly: pd.DataFrame, today: dt.date = TODAY, settings=SETTINGS) -> pd.DataFrame:
    return release_impact(releases_frame(releases), weekly_series(weekly), settings, today)


def row(frame, release_name="r1", metric="start_session", measure="pct"):
    hit = frame[(frame["release"] == release_name) & (frame["metric"] == metric) & (frame["measure"] == measure)]
    assert len(hit) == 1
    return hit.iloc[0]


# Weeks 0-3 before, week 4 the release week, weeks 5-8 after.
RELEASE_DAY = MONDAY + dt.timedelta(weeks=4, days=2)
ACTIVE = [120] * 9


def test_wilson_and_newcombe_match_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 vs 48/80,
    # hybrid score interval (method 10) 0.0524 to 0.3339.
    low, high = newcombe(48, 80, 56, 70)
    assert round(low, 4) == 0.0524 and round(high, 4) == 0.3339
    # Wilson for 81/263 (Newcombe's single-proportion example): 0.2553 to 0.3662.
    lo, hi = wilson(81, 263)
    assert round(lo, 4) == 0.2553 and round(hi, 4) == 0.3662


def test_benjamini_hochberg_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4/rank: 0.02, 0.02, 0.04, 0.04 (already monotone)
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # step-up: 0.9 * 2/2 = 0.9, 0.8 * 2/1 = 1.6 -> min(1.6, 0.9) = 0.9
    assert benjamini_hochberg([0.8, 0.9]) == pytest.approx([0.9, 0.9])


def test_a_planted_change_of_known_size_is_up():
    users = [36, 35, 37, 36, 40, 54, 55, 53, 54]  # 144/480 = 30% before, 216/480 = 45% after
    frame = judge([release("r1", RELEASE_DAY)], metrics_frame(weeks(9), users, ACTIVE))
    r = row(frame)
    assert r["verdict"] == "up"
    assert r["before"] == pytest.approx(30.0) and r["after"] == pytest.approx(45.0) and r["diff"] == pytest.approx(15.0)
    low, high = newcombe(144, 480, 216, 480)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((100 * low, 100 * high))
    assert 0 < r["model_low"] < 15 < r["model_high"]
    assert r["p_adjusted"] < 0.05 and r["p_adjusted"] >= r["p_value"]
    assert "went up by 15.0 points" in r["explanation"]
    users_row = row(frame, measure="users")
    assert users_row["verdict"] == "up" and users_row["diff"] == pytest.approx(54 - 36)
    assert row(frame, metric="active_users", measure="users")["diff"] == 0  # 120 every week


def test_no_change_is_no_change_with_its_interval():
    users = [36, 34, 38, 35, 40, 37, 35, 34, 37]  # 143/480 before, 143/480 after
    frame = judge([release("r1", RELEASE_DAY)], metrics_frame(weeks(9), users, ACTIVE))
    r = row(frame)
    assert r["verdict"] == "no_change"
    assert r["diff"] == pytest.approx(0.0)
    assert r["model_low"] < 0 < r["model_high"]
    assert r["explanation"].startswith("No detectable change in start_session share of active users, could be ")
    assert f"{r['model_low']:+.1f} to {r['model_high']:+.1f} points" in r["explanation"]


def test_a_second_release_inside_a_window_is_confounded():
    users = [36, 35, 37, 36, 40, 54, 55, 53, 54, 54, 54, 54, 54]
    second = MONDAY + dt.timedelta(weeks=7, days=1)  # in r1's after-window
    frame = judge(
        [release("r1", RELEASE_DAY), release("r2", second)],
        metrics_frame(weeks(13), users, [120] * 13),
    )
    r = row(frame)
    assert r["verdict"] == "confounded"
    assert r["confounded_by"] == f"r2 ({second})"
    assert "release r2" in r["explanation"]
    assert row(frame, "r2")["confounded_by"] == f"r1 ({RELEASE_DAY})"
    assert r["diff"] == pytest.approx(15.0)  # the headline is still shown


def test_a_release_just_outside_the_windows_is_not_confounding():
    users = [36] * 4 + [40] + [54] * 4 + [54] * 6
    second = MONDAY + dt.timedelta(weeks=9)  # the week after r1's after-window
    frame = judge([release("r1", RELEASE_DAY), release("r2", second)], metrics_frame(weeks(15), users, [120] * 15))
    assert row(frame)["verdict"] == "up"
    assert row(frame)["confounded_by"] is None


def test_an_incomplete_after_window_is_too_early():
    users = [36, 35, 37, 36, 40, 54, 55, 53, 54]
    last_after = weeks(9)[-1]
    frame = judge(
        [release("r1", RELEASE_DAY)], metrics_frame(weeks(9), users, ACTIVE), today=last_after + dt.timedelta(days=6)
    )
    r = row(frame)
    assert r["verdict"] == "too_early"
    assert str(last_after + dt.timedelta(days=7)) in r["explanation"]
    assert r["before"] == pytest.approx(30.0) and pd.isna(r["after"]) and pd.isna(r["diff"])
    # the day the last after week is over, the verdict appears by itself
    frame = judge(
        [release("r1", RELEASE_DAY)], metrics_frame(weeks(9), users, ACTIVE), today=last_after + dt.timedelta(days=7)
    )
    assert row(frame)["verdict"] == "up"


def test_fewer_than_three_complete_weeks_on_a_side_is_not_enough_data():
    starts = weeks(9)[2:]  # only 2 weeks before the release week are stored
    users = [37, 36, 40, 54, 55, 53, 54]
    frame = judge([release("r1", RELEASE_DAY)], metrics_frame(starts, users, [120] * 7))
    r = row(frame)
    assert r["verdict"] == "not_enough_data"
    assert "2 complete week(s) before" in r["explanation"]
    # an incomplete stored week does not count either
    weekly = metrics_frame(weeks(9), [36, 35, 37, 36, 40, 54, 55, 53, 54], ACTIVE)
    weekly.loc[weekly["period_start"].isin(weeks(9)[5:7]), "complete"] = False
    assert row(judge([release("r1", RELEASE_DAY)], weekly))["verdict"] == "not_enough_data"


def test_too_few_active_users_is_not_enough_data():
    frame = judge([release("r1", RELEASE_DAY)], metrics_frame(weeks(9), [3, 4, 3, 4, 4, 6, 5, 6, 5], [12] * 9))
    r = row(frame)
    assert r["verdict"] == "not_enough_data"
    assert "12.0 active users a week on a side (20 needed)" in r["explanation"]


def test_declared_expectation_is_checked():
    users = [36, 35, 37, 36, 40, 54, 55, 53, 54]
    rel = release(
        "r1",
        RELEASE_DAY,
        expected_metric="start_session",
        expected_measure="pct",
        expected_direction="down",
        expected_size=5.0,
    )
    frame = judge([rel], metrics_frame(weeks(9), users, ACTIVE))
    r = row(frame)
    assert r["as_expected"] is False or r["as_expected"] == False  # noqa: E712 (pandas boolean)
    assert "Expected down by about 5 points: not as expected." in r["explanation"]
    assert pd.isna(row(frame, measure="users")["as_expected"])


def test_a_seasonal_drop_in_the_year_before_is_used_as_control():
    # Every year the share falls from 30% to 20% at this time; this year it falls the same:
    # with the control the release is not blamed for the season.
    last_year = [36, 35, 37, 36, 30, 24, 25, 23, 24]
    this_year = [36, 37, 35, 36, 30, 24, 23, 25, 24]
    starts = weeks(9, MONDAY - dt.timedelta(weeks=52)) + weeks(9)
    frame = judge([release("r1", RELEASE_DAY)], metrics_frame(starts, last_year + this_year, [120] * 18))
    r = row(frame)
    assert r["diff"] == pytest.approx(-10.0)
    assert r["verdict"] == "no_change"
    # without the control year the same weeks are a clear drop
    alone = judge([release("r1", RELEASE_DAY)], metrics_frame(weeks(9), this_year, ACTIVE))
    assert row(alone)["verdict"] == "down"


def test_group_metrics_are_judged_when_group_files_exist():
    weekly = metrics_frame(weeks(9), [36, 35, 37, 36, 40, 54, 55, 53, 54], ACTIVE)
    groups = pd.DataFrame(
        {
            "period_start": weeks(9),
            "deployment": "d",
            "group": "ETH Zurich",
            "metric": "start_session",
            "users": [10, 11, 10, 9, 10, 10, 11, 9, 10],
            "active_members": [40] * 9,
            "complete": True,
        }
    )
    frame = release_impact(releases_frame([release("r1", RELEASE_DAY)]), weekly_series(weekly, groups), SETTINGS, TODAY)
    g = frame[(frame["group"] == "ETH Zurich") & (frame["measure"] == "pct")].iloc[0]
    assert g["before"] == pytest.approx(100 * 40 / 160) and g["verdict"] == "no_change"


def simulate(reps: int, effect_points: float, seed: int, active_mean: int = 120, share: float = 0.30, sd: float = 0.15):
    """Share of repetitions called up or down: weekly shares vary beyond binomial noise
    (logit-normal with sd ``sd``), active users Poisson around ``active_mean``."""
    rng = np.random.default_rng(seed)
    calls = 0
    for _ in range(reps):
        active = rng.poisson(active_mean, 9)
        logit = np.log(share / (1 - share)) + rng.normal(0, sd, 9)
        p = 1 / (1 + np.exp(-logit))
        p[5:] = np.clip(p[5:] + effect_points / 100, 0, 1)
        users = rng.binomial(active, p)
        frame = judge([release("r1", RELEASE_DAY)], metrics_frame(weeks(9), users.tolist(), active.tolist()))
        calls += row(frame)["verdict"] in ("up", "down")
    return calls / reps


def test_simulated_false_alarms_and_power():
    # 100 repetitions each (expected about 5% and 75%: see bench_impact.py, 2,000 each);
    # the bounds leave room for the sampling error of 100 repetitions.
    assert simulate(100, 0.0, seed=1) <= 0.12
    assert simulate(100, 15.0, seed=2) >= 0.55


def test_the_release_week_can_be_counted_in_the_after_window():
    users = [36, 35, 37, 36, 54, 55, 53, 54, 60]
    skipped = row(judge([release("r1", RELEASE_DAY)], metrics_frame(weeks(9), users, ACTIVE)))
    assert skipped["after"] == pytest.approx(100 * (55 + 53 + 54 + 60) / 480)
    kept = {"d": (ImpactSettings(skip_release_week=False), CalendarSettings())}
    counted = row(judge([release("r1", RELEASE_DAY)], metrics_frame(weeks(9), users, ACTIVE), settings=kept))
    assert counted["after"] == pytest.approx(100 * (54 + 55 + 53 + 54) / 480)
