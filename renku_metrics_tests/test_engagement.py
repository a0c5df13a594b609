"""Engagement views (lifecycle, stickiness, retention) on hand-built activity with known answers.

Calendar (2025): ISO weeks W0 = Mon 2025-01-06 .. W15 = Mon 2025-04-14; t(k) is
the Tuesday of week Wk. Deployment ``alpha`` starts 2025-01-06 and every day
2025-01-06 .. 2025-04-27 is extracted (2025-01-09's source is incomplete);
``beta`` starts Wednesday 2025-02-05, extracted 2025-02-05 .. 2025-04-27.

alpha activity (one login per listed day):
    u1   t(0) .. t(9)            every week W0..W9
    u2   t(0), t(5)              away W1..W4, resurrected in W5
    u3   t(2), t(3), t(5)        new in W2, resurrected in W5
    u4   t(4)                    new in W4, dormant in W5
    g7   t(5)                    ``gitlab:7`` (GitLab-only id), new in W5
    u6   2025-01-08, 2025-03-12  W0 and W9 (resurrected in W9 and in March)
    u7   2025-02-01 (Saturday)   W3, in February but in no full February week
    bot  every t(k) and 2025-03-12, excluded through its Keycloak id
beta activity:
    u1   2025-02-11 (W5)         same person as alpha's u1
    g7   2025-02-12 (W5)         ``gitlab:7`` of another GitLab: not alpha's g7
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import shutil
import warnings

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from renku_metrics import read_lifecycle, read_retention, read_stickiness
from renku_metrics.core import engagement
from renku_metrics.core.activity import record_raw_change
from renku_metrics.core.aggregate import coverage_for
from renku_metrics.core.config import Deployment, MetricsConfig
from renku_metrics.core.events import (
    TimeWindow,
    events_frame,
    make_event_id,
    pseudonymize_user,
    to_arrow,
    validate_events,
)
from renku_metrics.core.layout import day_of_key, manifest_key, metrics_key, raw_events_key
from renku_metrics.core.periods import days_between
from renku_metrics.core.sources.demo import Settings as DemoSettings
from renku_metrics.core.storage import LocalStorage
from renku_metrics.defs.engagement.assets import (
    build_engagement_assets,
    check_lifecycle,
    check_retention,
    check_stickiness,
)
from renku_metrics.defs.resources import MetricsStorageResource

D = dt.date
W = [D(2025, 1, 6) + dt.timedelta(weeks=k) for k in range(16)]  # Mondays W0..W15


def t(k: int) -> dt.date:
    return W[k] + dt.timedelta(days=1)


BOT_KEYCLOAK_ID = "5f0c7a52-0000-4000-8000-00000000b07b"
U = {n: pseudonymize_user(f"keycloak-user-{n}") for n in range(1, 8)}
G7 = "gitlab:7"
BOT = pseudonymize_user(BOT_KEYCLOAK_ID)

ALPHA_ACTIVITY = {
    U[1]: [t(k) for k in range(10)],
    U[2]: [t(0), t(5)],
    U[3]: [t(2), t(3), t(5)],
    U[4]: [t(4)],
    G7: [t(5)],
    U[6]: [D(2025, 1, 8), D(2025, 3, 12)],
    U[7]: [D(2025, 2, 1)],
    BOT: [t(k) for k in range(16)] + [D(2025, 3, 12)],
}
BETA_ACTIVITY = {U[1]: [D(2025, 2, 11)], G7: [D(2025, 2, 12)]}
LAST_DAY = D(2025, 4, 27)
INCOMPLETE_DAY = D(2025, 1, 9)
NOW = dt.datetime(2025, 5, 5, 12, tzinfo=dt.timezone.utc)


def deployment(name: str, start: dt.date, excluded: tuple[str, ...] = ()) -> Deployment:
    return Deployment(name=name, start_date=start, sources={"demo": DemoSettings()}, excluded_users=excluded)


ALPHA = deployment("alpha", W[0], (BOT_KEYCLOAK_ID,))
BETA = deployment("beta", D(2025, 2, 5))


def write_day(storage, name: str, day: dt.date, users: list[str], complete: bool = True) -> None:
    """One extracted day as extract_day stores it: events Parquet, then the manifest."""
    records = [
        {
            "event_id": make_event_id(name, "demo", user, day),
            "deployment": name,
            "occurred_at": dt.datetime.combine(day, dt.time(12), dt.timezone.utc),
            "user_id": user,
            "action": "login",
            "project_id": None,
            "project_visibility": None,
            "source": "demo",
        }
        for user in users
    ]
    valid, rejected = validate_events(events_frame(records), TimeWindow.for_day(day), name)
    assert not rejected
    storage.write_parquet(raw_events_key(name, day), to_arrow(valid))
    storage.write_json(
        manifest_key(name, day),
        {
            "deployment": name,
            "date": day.isoformat(),
            "row_count": len(valid),
            "users": len(set(users)),
            "sources": {
                "demo": {
                    "complete": complete,
                    "coverage_note": "" if complete else "upstream events already expired",
                    "events": len(valid),
                }
            },
        },
    )
    record_raw_change(storage, name, [day])  # as the extract notes every day it writes


def delete_day(storage, name: str, day: dt.date) -> None:
    """A day no longer extracted (its objects removed, the removal noted as the extract notes writes)."""
    storage.delete(manifest_key(name, day))
    storage.delete(raw_events_key(name, day))
    record_raw_change(storage, name, [day])


def write_history(storage, dep: Deployment, activity: dict[str, list[dt.date]], last: dt.date, incomplete=()) -> None:
    by_day: dict[dt.date, list[str]] = {}
    for user, days in activity.items():
        for day in days:
            by_day.setdefault(day, []).append(user)
    day = dep.start_date
    while day <= last:
        write_day(storage, dep.name, day, sorted(by_day.get(day, [])), complete=day not in incomplete)
        day += dt.timedelta(days=1)


@pytest.fixture(scope="module")
def built_history(tmp_path_factory):
    root = tmp_path_factory.mktemp("engagement") / "data"
    store = LocalStorage(root)
    write_history(store, ALPHA, ALPHA_ACTIVITY, LAST_DAY, incomplete={INCOMPLETE_DAY})
    write_history(store, BETA, BETA_ACTIVITY, LAST_DAY)
    return root


@pytest.fixture
def storage(built_history, tmp_path):
    """A fresh copy of the hand-built history for each test (some tests change it)."""
    shutil.copytree(built_history, tmp_path / "data")
    return LocalStorage(tmp_path / "data")


def row(frame: pd.DataFrame, deployment: str, start: dt.date) -> pd.Series:
    rows = frame[(frame["deployment"] == deployment) & (frame["period_start"] == start)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def counts(r: pd.Series) -> tuple[int, ...]:
    return tuple(
        int(r[c]) for c in ("active_users", "new_users", "returning_users", "resurrected_users", "dormant_users")
    )


# --------------------------------------------------------------------------- lifecycle


def test_lifecycle_weekly_states(storage):
    frame = engagement.lifecycle(storage, [ALPHA, BETA], "week", W[:12], NOW)
    # (active, new, returning, resurrected, dormant) of alpha, week by week
    expected = {
        0: (3, 3, 0, 0, 0),  # u1, u2, u6 all new; the bot is excluded
        1: (1, 0, 1, 0, 2),  # u2 and u6 dormant
        2: (2, 1, 1, 0, 0),  # u3 new
        3: (3, 1, 2, 0, 0),  # u7 new (Saturday)
        4: (2, 1, 1, 0, 2),  # u4 new; u3 and u7 dormant
        5: (4, 1, 1, 2, 1),  # g7 new, u1 returning, u2 (gap of 4 weeks) and u3 resurrected, u4 dormant
        9: (2, 0, 1, 1, 0),  # u6 back after 8 weeks
        10: (0, 0, 0, 0, 2),
        11: (0, 0, 0, 0, 0),
    }
    for k, values in expected.items():
        assert counts(row(frame, "alpha", W[k])) == values, k
    w5 = row(frame, "alpha", W[5])
    assert w5["previous_active_users"] == 2 and w5["previous_period_start"] == W[4]
    assert w5["quick_ratio"] == pytest.approx(3.0)  # (1 new + 2 resurrected) / 1 dormant
    assert row(frame, "alpha", W[10])["quick_ratio"] == 0.0
    assert pd.isna(row(frame, "alpha", W[11])["quick_ratio"])
    # beta starts on 2025-02-05: no row before its first week, and u1 is new *on beta* in W5
    assert set(frame.loc[frame["period_start"] == W[3], "deployment"]) == {"alpha", "all"}
    assert counts(row(frame, "beta", W[4])) == (0, 0, 0, 0, 0)
    assert counts(row(frame, "beta", W[5])) == (2, 2, 0, 0, 0)
    # all: u1 is one person on both; the two gitlab:7 are two people, both new
    assert counts(row(frame, "all", W[5])) == (5, 2, 1, 2, 1)
    assert counts(row(frame, "all", W[0])) == (3, 3, 0, 0, 0)
    assert (check_lifecycle(frame, MetricsConfig("x", (ALPHA, BETA)))["states_add_up"][0]) is True


def test_lifecycle_exclusions_applied(storage):
    with_bot = deployment("alpha", W[0])  # same data, no excluded_users
    frame = engagement.lifecycle(storage, [with_bot], "week", [W[0], W[5]], NOW)
    assert counts(row(frame, "alpha", W[0])) == (4, 4, 0, 0, 0)
    assert counts(row(frame, "alpha", W[5])) == (5, 1, 2, 2, 1)  # the bot returning every week


def test_lifecycle_exclusion_belongs_to_its_deployment_only(storage):
    """u1 listed in beta's excluded_users leaves beta only: on alpha and in ``all``
    (through alpha) u1 still counts, as docs/design.md states for every view."""
    beta_without_u1 = deployment("beta", D(2025, 2, 5), (U[1],))
    frame = engagement.lifecycle(storage, [ALPHA, beta_without_u1], "week", W[:8], NOW)
    assert counts(row(frame, "beta", W[5])) == (1, 1, 0, 0, 0)  # g7 only
    assert counts(row(frame, "alpha", W[5])) == (4, 1, 1, 2, 1)
    assert counts(row(frame, "all", W[5])) == (5, 2, 1, 2, 1)  # as without the exclusion


def test_lifecycle_monthly_states(storage):
    months = [D(2025, 1, 1), D(2025, 2, 1), D(2025, 3, 1), D(2025, 4, 1)]
    frame = engagement.lifecycle(storage, [ALPHA, BETA], "month", months, NOW, warmup_weeks=4)
    assert counts(row(frame, "alpha", months[0])) == (4, 4, 0, 0, 0)
    # February: u4, g7, u7 new; u1, u2, u3 returning; u6 dormant
    assert counts(row(frame, "alpha", months[1])) == (6, 3, 3, 0, 1)
    # March: u1 returning, u6 resurrected after skipping February, five dormant
    assert counts(row(frame, "alpha", months[2])) == (2, 0, 1, 1, 5)
    assert counts(row(frame, "alpha", months[3])) == (0, 0, 0, 0, 2)
    march = row(frame, "alpha", months[2])
    assert march["previous_period_start"] == months[1] and march["period_end"] == months[3]
    assert bool(march["history_complete"]) and bool(march["complete"]), march["coverage_note"]
    april = row(frame, "alpha", months[3])
    assert not april["complete"] and "3 of 30 days not extracted" in april["coverage_note"]
    assert not row(frame, "alpha", months[0])["complete"]  # its previous month is before the history


def test_lifecycle_history_edges(storage):
    default = engagement.lifecycle(storage, [ALPHA, BETA], "week", W[:8], NOW)
    assert engagement.HISTORY_WARMUP_WEEKS == 26
    assert not default["history_complete"].any() and not default["complete"].any()
    w0 = row(default, "alpha", W[0])
    assert "previous period 2024-12-30 is before the deployment's history" in w0["coverage_note"]
    assert "only 0 week(s) of history" in w0["coverage_note"]
    assert row(default, "alpha", W[5])["history_weeks"] == 5

    short = engagement.lifecycle(storage, [ALPHA, BETA], "week", W[:8], NOW, warmup_weeks=4)
    # W4's 4-week warm-up (W0..W3) holds the incomplete 2025-01-09: not trusted
    w4 = row(short, "alpha", W[4])
    assert not w4["history_complete"] and not w4["complete"]
    assert "0 day(s) not extracted, 1 day(s) with incomplete sources" in w4["coverage_note"]
    # W5's warm-up (W1..W4) is clean; the older gap is only mentioned
    w5 = row(short, "alpha", W[5])
    assert w5["history_complete"] and w5["complete"], w5["coverage_note"]
    assert (
        "older history before 2025-01-13: 0 day(s) not extracted, 1 day(s) with incomplete sources"
        in w5["coverage_note"]
    )
    # beta's history starts in W4: never trusted that early, and so neither is `all`
    assert not row(short, "beta", W[5])["history_complete"]
    assert not row(short, "all", W[5])["complete"]
    assert row(short, "all", W[5])["history_weeks"] == 0  # beta: 2025-02-05 .. 2025-02-10 is under a week


def test_lifecycle_counts_missing_history_days(storage):
    delete_day(storage, "alpha", D(2025, 2, 4))  # t(4) no longer extracted
    frame = engagement.lifecycle(storage, [ALPHA], "week", [W[5], W[6]], NOW, warmup_weeks=4)
    w5 = row(frame, "alpha", W[5])
    assert counts(w5) == (4, 1, 0, 3, 0)  # without t(4), u1 looks resurrected and u4 never existed
    assert not w5["complete"] and "previous period 2025-02-03: 1 of 7 days not extracted" in w5["coverage_note"]
    w6 = row(frame, "alpha", W[6])
    assert not w6["history_complete"] and "1 day(s) not extracted" in w6["coverage_note"]


def test_lifecycle_of_running_period(storage):
    now = dt.datetime(2025, 2, 12, 8, tzinfo=dt.timezone.utc)  # Wednesday of W5
    frame = engagement.lifecycle(storage, [ALPHA], "week", W[5], now, warmup_weeks=4)
    w5 = row(frame, "alpha", W[5])
    # only days before today are read: Tuesday t(5) is in, nothing after
    assert counts(w5) == (4, 1, 1, 2, 1)
    assert not w5["complete"] and w5["coverage_note"].startswith("period not over yet")


def test_day_index_coverage_matches_aggregate(storage):
    today = NOW.date()
    for dep in (ALPHA, BETA):
        days = engagement.DeploymentDays.load(storage, dep, today)
        for start, end in ((W[0], W[1]), (W[4], W[5]), (D(2025, 4, 1), D(2025, 5, 1)), (D(2024, 12, 30), W[0])):
            mine, theirs = days.coverage(start, end, today), coverage_for(storage, dep, start, end, today)
            assert (mine.days_expected, mine.days_extracted, mine.event_keys, mine.incomplete_sources) == (
                theirs.days_expected,
                theirs.days_extracted,
                theirs.event_keys,
                theirs.incomplete_sources,
            )
            assert mine.note(True) == theirs.note(True)


# --------------------------------------------------------------------------- stickiness


def test_full_weeks_in_month():
    assert engagement.full_weeks_in_month(D(2025, 2, 1)) == [D(2025, 2, 3), D(2025, 2, 10), D(2025, 2, 17)]
    assert engagement.full_weeks_in_month(D(2027, 2, 1)) == [
        D(2027, 2, 1),
        D(2027, 2, 8),
        D(2027, 2, 15),
        D(2027, 2, 22),
    ]
    assert engagement.full_weeks_in_month(D(2025, 9, 1)) == [
        D(2025, 9, 1),
        D(2025, 9, 8),
        D(2025, 9, 15),
        D(2025, 9, 22),
    ]


def test_stickiness_february(storage):
    frame = engagement.stickiness(storage, [ALPHA, BETA], D(2025, 2, 1), NOW)
    alpha = row(frame, "alpha", D(2025, 2, 1))
    # MAU: u1 u2 u3 u4 g7 u7 (bot excluded). Full weeks W4 {u1,u4}, W5 {u1,u2,u3,g7}, W6 {u1};
    # W7 (Feb 24 .. Mar 2) straddles March, so u1's 2025-02-25 only counts for MAU and DAU.
    assert alpha["monthly_active_users"] == 6 and alpha["weeks"] == 3
    assert alpha["mean_weekly_active_users"] == pytest.approx(7 / 3, abs=0.005)
    assert alpha["wau_mau"] == pytest.approx(7 / 3 / 6, abs=5e-5)
    # DAU: Feb 1: 1, Feb 4: 2, Feb 11: 4, Feb 18: 1, Feb 25: 1, zero on the other 23 days
    assert alpha["days"] == 28
    assert alpha["mean_daily_active_users"] == pytest.approx(9 / 28, abs=0.005)
    assert alpha["dau_mau"] == pytest.approx(9 / 28 / 6, abs=5e-5)
    assert alpha["complete"] and alpha["coverage_note"] == ""
    beta = row(frame, "beta", D(2025, 2, 1))
    assert (beta["monthly_active_users"], beta["wau_mau"]) == (2, pytest.approx(1 / 3, abs=5e-5))
    assert not beta["complete"] and "history starts inside" in beta["coverage_note"]
    everyone = row(frame, "all", D(2025, 2, 1))
    # u1 counted once; alpha's and beta's gitlab:7 are two people
    assert everyone["monthly_active_users"] == 7
    assert everyone["wau_mau"] == pytest.approx(8 / 3 / 7, abs=5e-5)
    assert everyone["dau_mau"] == pytest.approx(10 / 28 / 7, abs=5e-5)
    assert not everyone["complete"]
    assert all(passed for passed, _ in check_stickiness(frame, MetricsConfig("x", (ALPHA, BETA))).values())


def test_stickiness_exclusions_and_running_month(storage):
    with_bot = deployment("alpha", W[0])
    feb = row(engagement.stickiness(storage, [with_bot], D(2025, 2, 1), NOW), "alpha", D(2025, 2, 1))
    assert feb["monthly_active_users"] == 7 and feb["mean_weekly_active_users"] == pytest.approx(10 / 3, abs=0.005)

    now = dt.datetime(2025, 2, 19, 9, tzinfo=dt.timezone.utc)
    running = row(engagement.stickiness(storage, [ALPHA], D(2025, 2, 1), now), "alpha", D(2025, 2, 1))
    assert (running["weeks"], running["days"]) == (2, 18)  # W4 and W5 ended; Feb 1..18
    assert running["monthly_active_users"] == 6  # u1 u2 u3 u4 g7 u7 up to Feb 18
    assert running["mean_weekly_active_users"] == pytest.approx(3.0)
    assert not running["complete"] and "period not over yet" in running["coverage_note"]


# --------------------------------------------------------------------------- retention


def retained(r: pd.Series) -> list:
    return [None if pd.isna(r[f"retained_w{k}"]) else int(r[f"retained_w{k}"]) for k in range(1, 9)]


def test_retention_cohorts(storage):
    frame = engagement.retention(storage, [ALPHA, BETA], W[:6], NOW, warmup_weeks=4)
    w0 = row(frame, "alpha", W[0])
    # cohort W0 = u1, u2, u6 (not the bot); u2 comes back in W5, u6 only in W9 (beyond W+8)
    assert w0["cohort_users"] == 3
    assert retained(w0) == [1, 1, 1, 1, 2, 1, 1, 1]
    assert w0["retention_w5"] == pytest.approx(66.67) and w0["retention_w1"] == pytest.approx(33.33)
    w2 = row(frame, "alpha", W[2])
    assert (w2["cohort_users"], retained(w2)) == (1, [1, 0, 1, 0, 0, 0, 0, 0])
    assert row(frame, "alpha", W[3])["cohort_users"] == 1  # u7, active on a Saturday only
    empty = row(frame, "alpha", W[1])
    assert empty["cohort_users"] == 0 and retained(empty) == [0] * 8 and pd.isna(empty["retention_w1"])
    # beta's own cohort W5: u1 and g7 are new on beta, neither comes back
    assert (row(frame, "beta", W[5])["cohort_users"], retained(row(frame, "beta", W[5]))) == (2, [0] * 8)
    # all: beta's u1 is not new (seen on alpha in W0); beta's gitlab:7 is
    assert row(frame, "all", W[5])["cohort_users"] == 2  # alpha's and beta's gitlab:7
    assert row(frame, "all", W[0])["cohort_users"] == 3
    assert all(passed for passed, _ in check_retention(frame, MetricsConfig("x", (ALPHA, BETA))).values())


def test_retention_edge_of_history_and_completeness(storage):
    frame = engagement.retention(storage, [ALPHA, BETA], W[:6], NOW, warmup_weeks=4)
    assert frame["weeks_observed"].eq(8).all()
    # W0: first seen = first week of extraction, not first ever
    w0 = row(frame, "alpha", W[0])
    assert not w0["history_complete"] and not w0["complete"] and "only 0 week(s) of history" in w0["coverage_note"]
    # W4: its warm-up holds the incomplete 2025-01-09
    assert not row(frame, "alpha", W[4])["history_complete"]
    # W5: warm-up clean, W5..W13 ended and extracted: final
    w5 = row(frame, "alpha", W[5])
    assert w5["history_complete"] and w5["complete"], w5["coverage_note"]
    assert w5["observed_until"] == D(2025, 4, 14)
    # beta: no row before its start week; the week holding start_date is at the edge
    assert set(frame.loc[frame["period_start"] == W[3], "deployment"]) == {"alpha", "all"}
    b4 = row(frame, "beta", W[4])
    assert not b4["history_complete"] and "history starts inside" in b4["coverage_note"]
    # default warm-up: nothing in these 16 weeks of history is final
    default = engagement.retention(storage, [ALPHA, BETA], W[:6], NOW)
    assert not default["complete"].any()


def test_retention_future_weeks_are_null(storage):
    now = dt.datetime(2025, 3, 19, 10, tzinfo=dt.timezone.utc)  # Wednesday of W10
    frame = engagement.retention(storage, [ALPHA], [W[0], W[4], W[10]], now, warmup_weeks=4)
    w4 = row(frame, "alpha", W[4])
    # W4+5 = W9 ended on 2025-03-17; W4+6 = W10 has not
    assert retained(w4) == [0, 0, 0, 0, 0, None, None, None]
    assert w4["weeks_observed"] == 5 and pd.isna(w4["retention_w6"]) and w4["retention_w5"] == 0.0
    assert not w4["complete"] and "5 of 8 later weeks observed" in w4["coverage_note"]
    assert retained(row(frame, "alpha", W[0])) == [1, 1, 1, 1, 2, 1, 1, 1]  # W0+8 ended 2025-03-10
    w10 = row(frame, "alpha", W[10])
    assert w10["weeks_observed"] == 0 and retained(w10) == [None] * 8 and w10["cohort_users"] == 0
    assert all(passed for passed, _ in check_retention(frame, MetricsConfig("x", (ALPHA,))).values())


def test_retention_exclusions_applied(storage):
    frame = engagement.retention(storage, [deployment("alpha", W[0])], W[0], NOW)
    assert row(frame, "alpha", W[0])["cohort_users"] == 4
    assert retained(row(frame, "alpha", W[0])) == [2, 2, 2, 2, 3, 2, 2, 2]


# --------------------------------------------------------------------------- checks


def test_checks_catch_inconsistent_rows(storage):
    config = MetricsConfig("x", (ALPHA, BETA))
    life = engagement.lifecycle(storage, [ALPHA, BETA], "week", [W[5]], NOW)
    broken = life.copy()
    broken.loc[broken["deployment"] == "alpha", "new_users"] += 1
    assert check_lifecycle(broken, config)["states_add_up"][0] is False
    assert check_lifecycle(life[life["deployment"] != "beta"], config)["deployments_present"][0] is False
    assert check_lifecycle(pd.concat([life, life.head(1)]), config)["one_row_per_key"][0] is False
    sticky = engagement.stickiness(storage, [ALPHA, BETA], D(2025, 2, 1), NOW)
    sticky.loc[0, "wau_mau"] = 1.5
    assert check_stickiness(sticky, config)["ratios_within_0_1"][0] is False
    kept = engagement.retention(storage, [ALPHA, BETA], [W[0]], dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc))
    assert check_retention(kept, config)["retained_within_cohort"][0] is True
    kept.loc[0, "retained_w8"] = 0  # a value for a week that has not ended
    assert check_retention(kept, config)["retained_within_cohort"][0] is False


# --------------------------------------------------------------------------- Dagster


def test_materialize_engagement_assets(storage):
    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    config = MetricsConfig("test", (ALPHA, BETA))
    assets = build_engagement_assets(config)
    assert [a.key for a in assets["week"]] == [
        AssetKey("lifecycle_weekly"),
        AssetKey("retention_weekly"),
        AssetKey("activation_weekly"),
    ]
    assert [a.key for a in assets["month"]] == [AssetKey("lifecycle_monthly"), AssetKey("stickiness_monthly")]
    resources = {"metrics_storage": MetricsStorageResource(root=storage.root)}
    instance = DagsterInstance.ephemeral()

    week = materialize(assets["week"], partition_key=W[5].isoformat(), resources=resources, instance=instance)
    assert week.success
    checks = {(e.asset_key.path[-1], e.check_name): e.passed for e in week.get_asset_check_evaluations()}
    assert len(checks) == 9 and all(checks.values()), checks
    # retention for W5 also refreshed the earlier cohorts W0..W4 and recorded their materializations
    for k in range(6):
        assert storage.exists(metrics_key("retention_weekly", W[k]))
    recorded = instance.fetch_materializations(AssetKey("retention_weekly"), limit=50).records
    assert {r.partition_key for r in recorded} == {w.isoformat() for w in W[:6]}
    life_meta = next(
        e.event_specific_data.materialization.metadata
        for e in week.get_asset_materialization_events()
        if e.asset_key == AssetKey("lifecycle_weekly")
    )
    assert life_meta["alpha/resurrected_users"].value == 2 and life_meta["all/new_users"].value == 2
    assert life_meta["dagster/row_count"].value == 3

    month = materialize(assets["month"], partition_key="2025-02-01", resources=resources, instance=instance)
    assert month.success and all(e.passed for e in month.get_asset_check_evaluations())
    sticky_meta = next(
        e.event_specific_data.materialization.metadata
        for e in month.get_asset_materialization_events()
        if e.asset_key == AssetKey("stickiness_monthly")
    )
    assert sticky_meta["alpha/wau_mau"].value == pytest.approx(7 / 18, abs=5e-5)

    # the notebook readers see what the assets wrote
    life = read_lifecycle("week", storage=storage)
    assert counts(row(life, "alpha", W[5])) == (4, 1, 1, 2, 1)
    assert isinstance(life["previous_period_start"].iloc[0], dt.date)
    kept = read_retention(storage=storage)
    assert sorted(set(kept["period_start"])) == W[:6]
    assert retained(row(kept, "alpha", W[0])) == [1, 1, 1, 1, 2, 1, 1, 1]
    assert str(kept["retained_w1"].dtype) == "Int64"
    assert read_retention(storage=storage, complete_only=True).empty  # default 26-week warm-up: none final
    sticky = read_stickiness(storage=storage)
    assert row(sticky, "alpha", D(2025, 2, 1))["monthly_active_users"] == 6
    assert len(read_stickiness(storage=storage, complete_only=True)) == 1  # alpha only
    assert read_lifecycle("month", storage=storage)["period_start"].tolist() == [D(2025, 2, 1)] * 3


def test_read_scope_stickiness_period_only_lifecycle_whole_history(storage):
    # A damaged January day: stickiness of February never opens it, lifecycle must (history).
    storage.write_bytes(raw_events_key("alpha", t(1)), b"not parquet")
    feb = engagement.stickiness(storage, [ALPHA], D(2025, 2, 1), NOW)
    assert row(feb, "alpha", D(2025, 2, 1))["monthly_active_users"] == 6
    with pytest.raises(Exception, match="(?i)parquet"):
        engagement.lifecycle(storage, [ALPHA], "month", D(2025, 2, 1), NOW)


def test_active_users_agree_with_the_aggregates(storage):
    from renku_metrics.core.aggregate import aggregate_period
    from renku_metrics.core.catalog import load_catalog

    catalog = load_catalog()
    life = engagement.lifecycle(storage, [ALPHA, BETA], "week", [W[0], W[5], W[9]], NOW)
    sticky = engagement.stickiness(storage, [ALPHA, BETA], [D(2025, 2, 1), D(2025, 3, 1)], NOW)
    for period, start, frame, column in [
        *(("week", w, life, "active_users") for w in (W[0], W[5], W[9])),
        *(("month", m, sticky, "monthly_active_users") for m in (D(2025, 2, 1), D(2025, 3, 1))),
    ]:
        active = aggregate_period(storage, [ALPHA, BETA], catalog, period, start, NOW).active_users
        expected = dict(zip(active["deployment"], active["active_users"], strict=False))
        got = dict(zip(*(frame.loc[frame["period_start"] == start, c] for c in ("deployment", column)), strict=False))
        assert got == expected and expected["all"] > 0, (period, start)


# --------------------------------------------------------------------------- derived state


def _views(storage, deployments, now=NOW) -> list[pd.DataFrame]:
    return [
        engagement.lifecycle(storage, deployments, "week", W[1:12], now, warmup_weeks=4),
        engagement.lifecycle(storage, deployments, "month", [D(2025, 2, 1), D(2025, 3, 1)], now, warmup_weeks=4),
        engagement.stickiness(storage, deployments, [D(2025, 1, 1), D(2025, 2, 1), D(2025, 3, 1)], now),
        engagement.retention(storage, deployments, W[0:8], now, warmup_weeks=4),
    ]


def _fresh(storage, tmp_path, name: str) -> LocalStorage:
    """A copy of the raw data without any derived state: what a first run would see."""
    shutil.copytree(storage.path, tmp_path / name, ignore=shutil.ignore_patterns("state"))
    return LocalStorage(tmp_path / name)


def _assert_same(got: list[pd.DataFrame], expected: list[pd.DataFrame]) -> None:
    for mine, theirs in zip(got, expected, strict=True):
        pd.testing.assert_frame_equal(mine, theirs)


def test_state_kept_incrementally_gives_the_numbers_of_a_fresh_run(storage, tmp_path):
    # Weekly runs as history grows: days after 2025-03-02 are not extracted yet.
    later = [d for d in (D(2025, 3, 3) + dt.timedelta(days=i) for i in range(56)) if d <= LAST_DAY]
    for day in later:
        for dep in ("alpha", "beta"):
            delete_day(storage, dep, day)
    early_now = dt.datetime(2025, 3, 3, 6, tzinfo=dt.timezone.utc)
    _views(storage, [ALPHA, BETA], early_now)
    assert storage.exists("state/first_seen/deployment=alpha/first_seen.parquet")
    # The later days arrive, then the views run again on the same state.
    write_history(storage, ALPHA, {u: [d for d in ds if d in later] for u, ds in ALPHA_ACTIVITY.items()}, LAST_DAY)
    for day in later:
        write_day(storage, "beta", day, [])
    got = _views(storage, [ALPHA, BETA])
    _assert_same(got, _views(_fresh(storage, tmp_path, "fresh"), [ALPHA, BETA]))
    assert row(got[0], "alpha", W[9])["active_users"] == 2  # u1 and u6 (the bot is excluded)


def test_state_follows_a_reextracted_day_and_exclusions(storage, tmp_path):
    _views(storage, [ALPHA, BETA])  # builds the state
    before = engagement.lifecycle(storage, [ALPHA], "week", W[4], NOW, warmup_weeks=4)
    assert row(before, "alpha", W[4])["new_users"] == 1  # u4
    # t(2) re-extracted with u4 in it: u4 is now first seen in W2, so not new in W4.
    write_day(storage, "alpha", t(2), sorted([U[1], U[3], U[4], BOT]))
    after = engagement.lifecycle(storage, [ALPHA], "week", W[4], NOW, warmup_weeks=4)
    assert counts(row(after, "alpha", W[4])) == (2, 0, 1, 1, 2)
    _assert_same(_views(storage, [ALPHA, BETA]), _views(_fresh(storage, tmp_path, "fresh"), [ALPHA, BETA]))
    # Exclusions are applied when reading: a changed list needs no rebuild and counts at once.
    unexcluded = deployment("alpha", W[0])
    got = _views(storage, [unexcluded, BETA])
    _assert_same(got, _views(_fresh(storage, tmp_path, "fresh2"), [unexcluded, BETA]))
    assert row(got[0], "alpha", W[9])["active_users"] == 3  # the bot counts again


def test_damaged_state_is_rebuilt(storage, tmp_path):
    expected = _views(_fresh(storage, tmp_path, "fresh"), [ALPHA, BETA])
    _views(storage, [ALPHA, BETA])
    storage.write_bytes("state/first_seen/deployment=alpha/first_seen.parquet", b"not parquet")
    storage.write_bytes("state/days/deployment=beta/days.json", b"{")
    (week_key,) = [k for k in storage.list_keys("state/user_weeks/deployment=alpha/") if "week=2025-02-03" in k]
    storage.write_bytes(week_key, b"")
    _assert_same(_views(storage, [ALPHA, BETA]), expected)


def copy_days(source, target, days) -> None:
    """Copy the raw days ``days`` of every deployment, noting them as the extract does."""
    wanted = set(days)
    touched: dict[str, set[dt.date]] = {}
    for key in source.list_keys("raw_events/"):
        if day_of_key(key) in wanted:
            target.write_bytes(key, source.read_bytes(key))
            touched.setdefault(key.split("/")[1].removeprefix("deployment="), set()).add(day_of_key(key))
    for name, changed in touched.items():
        record_raw_change(target, name, changed)


def _counting_s3(storage):
    """The S3 storage ``storage``, recording every object it reads (``.read``)."""
    from renku_metrics.core.storage import S3Storage

    class CountingS3(S3Storage):
        def __init__(self, inner: S3Storage) -> None:
            super().__init__(inner.bucket, inner.prefix, inner.client)
            self.read: list[str] = []

        def read_bytes(self, key: str) -> bytes:
            self.read.append(key)
            return super().read_bytes(key)

        @contextlib.contextmanager
        def local_paths(self, keys):
            self.read.extend(keys)
            with super().local_paths(keys) as paths:
                yield paths

    return CountingS3(storage)


def test_weekly_run_on_s3_reads_only_the_new_week_of_raw_data(built_history, tmp_path, s3_endpoint, s3_bucket):
    from renku_metrics.core.storage import open_storage

    s3 = _counting_s3(open_storage(f"s3://{s3_bucket}/metrics", endpoint_url=s3_endpoint))
    local = LocalStorage(built_history)
    new_week = [W[10] + dt.timedelta(days=i) for i in range(7)]
    copy_days(local, s3, days_between(D(2024, 1, 1), W[10]))
    before = dt.datetime(2025, 3, 17, 6, tzinfo=dt.timezone.utc)
    engagement.lifecycle(s3, [ALPHA, BETA], "week", W[9], before, warmup_weeks=4)
    engagement.retention(s3, [ALPHA, BETA], W[1], before, warmup_weeks=4)
    # Week W10 is extracted; the weekly runs of lifecycle and retention follow.
    copy_days(local, s3, new_week)
    s3.read.clear()
    after = dt.datetime(2025, 3, 24, 6, tzinfo=dt.timezone.utc)
    life = engagement.lifecycle(s3, [ALPHA, BETA], "week", W[10], after, warmup_weeks=4)
    ret = engagement.retention(s3, [ALPHA, BETA], W[2], after, warmup_weeks=4)
    raw_read = {k for k in s3.read if k.startswith("raw_events/")}
    assert raw_read, "the new week must be read"
    assert {day_of_key(k) for k in raw_read} <= set(new_week), sorted(raw_read)
    fresh = _fresh(local, tmp_path, "fresh")  # the shared history stays without derived state
    pd.testing.assert_frame_equal(
        life, engagement.lifecycle(fresh, [ALPHA, BETA], "week", W[10], after, warmup_weeks=4)
    )
    pd.testing.assert_frame_equal(ret, engagement.retention(fresh, [ALPHA, BETA], W[2], after, warmup_weeks=4))


def test_retention_of_the_running_cohort_week(storage):
    now = dt.datetime(2025, 1, 22, 9, tzinfo=dt.timezone.utc)  # Wednesday of W2: no later week has begun
    frame = engagement.retention(storage, [ALPHA], W[2], now, warmup_weeks=4)
    w2 = row(frame, "alpha", W[2])
    assert w2["cohort_users"] == 1 and w2["weeks_observed"] == 0  # u3, first seen on Tuesday t(2)
    assert retained(w2) == [None] * 8


# --------------------------------------------------------------------------- user weeks from the weekly aggregate


def test_weekly_aggregate_stores_the_user_weeks_the_engagement_runs_read(
    built_history, tmp_path, s3_endpoint, s3_bucket
):
    """The weekly aggregate's scan stores the week's user sets: the week's lifecycle and retention
    runs that follow read no raw events file, and give the numbers of a fresh computation."""
    import pyarrow.parquet as pq

    from renku_metrics.core.aggregate import aggregate_period
    from renku_metrics.core.catalog import load_catalog
    from renku_metrics.core.layout import user_weeks_key
    from renku_metrics.core.storage import open_storage

    s3 = _counting_s3(open_storage(f"s3://{s3_bucket}/byproduct", endpoint_url=s3_endpoint))
    local = LocalStorage(built_history)
    new_week = [W[10] + dt.timedelta(days=i) for i in range(7)]
    copy_days(local, s3, days_between(D(2024, 1, 1), W[10]))
    before = dt.datetime(2025, 3, 17, 6, tzinfo=dt.timezone.utc)
    engagement.lifecycle(s3, [ALPHA, BETA], "week", W[9], before, warmup_weeks=4)
    copy_days(local, s3, new_week)
    after = dt.datetime(2025, 3, 24, 6, tzinfo=dt.timezone.utc)
    aggregate_period(s3, [ALPHA, BETA], load_catalog(), "week", W[10], after)
    stored = pq.read_table(io.BytesIO(s3.read_bytes(user_weeks_key("alpha", W[10]))))
    assert not s3.exists(user_weeks_key("beta", W[10]))  # beta has no event in W10: no user week
    s3.read.clear()
    life = engagement.lifecycle(s3, [ALPHA, BETA], "week", W[10], after, warmup_weeks=4)
    ret = engagement.retention(s3, [ALPHA, BETA], W[2], after, warmup_weeks=4)
    events_read = [k for k in s3.read if k.endswith("events.parquet")]
    assert events_read == [], events_read
    fresh = _fresh(local, tmp_path, "fresh")
    pd.testing.assert_frame_equal(
        life, engagement.lifecycle(fresh, [ALPHA, BETA], "week", W[10], after, warmup_weeks=4)
    )
    pd.testing.assert_frame_equal(ret, engagement.retention(fresh, [ALPHA, BETA], W[2], after, warmup_weeks=4))
    # The by-product is the user week the engagement state builds from raw events itself.
    rebuilt = pq.read_table(fresh.path / user_weeks_key("alpha", W[10]))
    assert stored.to_pylist() == rebuilt.to_pylist() and stored.num_rows == 1  # the bot: exclusions apply on reading
    assert not fresh.exists(user_weeks_key("beta", W[10]))


def test_user_weeks_of_the_aggregate_go_stale_when_a_day_is_reextracted(storage, tmp_path):
    from renku_metrics.core.aggregate import aggregate_period
    from renku_metrics.core.catalog import load_catalog

    aggregate_period(storage, [ALPHA], load_catalog(), "week", W[2], NOW)
    assert storage.exists("state/user_weeks/deployment=alpha/week=2025-01-20/user_weeks.parquet")
    # t(2) re-extracted with u4 in it after the aggregate ran: u4 is first seen in W2, not new in W4.
    write_day(storage, "alpha", t(2), sorted([U[1], U[3], U[4], BOT]))
    after = engagement.lifecycle(storage, [ALPHA], "week", [W[2], W[4]], NOW, warmup_weeks=4)
    assert counts(row(after, "alpha", W[4])) == (2, 0, 1, 1, 2)
    assert row(after, "alpha", W[2])["new_users"] == 2  # u3 and u4
    pd.testing.assert_frame_equal(
        after,
        engagement.lifecycle(_fresh(storage, tmp_path, "fresh"), [ALPHA], "week", [W[2], W[4]], NOW, warmup_weeks=4),
    )


# --------------------------------------------------------------------------- the raw-change log


class _ListingStorage(LocalStorage):
    """A local storage that records the prefixes it lists versions of."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.listed: list[str] = []

    def list_versions(self, prefix: str) -> dict[str, str]:
        self.listed.append(prefix)
        return super().list_versions(prefix)


def test_day_index_lists_only_the_days_the_change_log_names(storage):
    from renku_metrics.core.activity import load_day_index

    # No derived state yet. The notes written with the hand-built history are read by the first use's
    # full listing anyway; removed, they stand for notes older than CHANGE_MARGIN (re-read until then).
    shutil.rmtree(storage.path / "state", ignore_errors=True)
    counted = _ListingStorage(storage.path)
    first = load_day_index(counted, ALPHA)  # no index yet: one listing of the whole history
    assert counted.listed == ["raw_events/deployment=alpha/"]
    counted.listed.clear()
    assert load_day_index(counted, ALPHA) == first and counted.listed == []  # nothing changed: no listing
    write_day(counted, "alpha", t(2), [U[1], U[4]])  # re-extracted, noted in the change log
    updated = load_day_index(counted, ALPHA)
    assert counted.listed == ["raw_events/deployment=alpha/date=2025-01-"]  # only that day's month
    assert updated[t(2)][0] != first[t(2)][0]
    assert {d: r for d, r in updated.items() if d != t(2)} == {d: r for d, r in first.items() if d != t(2)}
    # The same as an index built from scratch by listing everything.
    shutil.rmtree(storage.path / "state")
    assert updated == load_day_index(storage, ALPHA)


def test_a_change_noted_late_is_still_seen(storage):
    """A note whose stamp lies before the index's last use (a writer's clock behind, or a note that
    became visible late) is read again at the next use, as long as it is within CHANGE_MARGIN."""
    from renku_metrics.core.activity import CHANGE_MARGIN, list_day_versions, load_day_index

    load_day_index(storage, ALPHA)
    write_day(storage, "alpha", t(3), [U[2]])
    late = dt.datetime.now(dt.timezone.utc) - CHANGE_MARGIN / 2
    # Only a late note for this change: remove the one write_day made on time.
    for key in storage.list_keys("state/raw_changes/deployment=alpha/"):
        if f"_{t(3).isoformat()}_" in key:
            storage.delete(key)
    record_raw_change(storage, "alpha", [t(3)], at=late)
    index = load_day_index(storage, ALPHA)
    assert index[t(3)][0] == list_day_versions(storage, "alpha", [t(3)])[t(3)]


def test_the_extract_notes_every_day_it_rewrites(tmp_path):
    """extract_day notes the day it writes and the later days it takes repeated records from:
    an index kept up to date from the notes equals one built by listing everything."""
    from renku_metrics.core.activity import load_day_index
    from renku_metrics.core.extract import extract_day

    root = tmp_path / "data"
    store = LocalStorage(root)
    dep = deployment("gamma", D(2025, 1, 6))
    days = [D(2025, 1, 6) + dt.timedelta(days=i) for i in range(10)]
    for day in days[3:]:
        extract_day(store, dep, day, env={})
    before = load_day_index(store, dep)
    for day in days[:4]:  # earlier days extracted late (a backfill), and one day again
        extract_day(store, dep, day, env={})
    kept = load_day_index(store, dep)
    assert set(kept) == set(days) and kept[days[3]][0] != before[days[3]][0]
    shutil.rmtree(root / "state")
    assert kept == load_day_index(store, dep)
