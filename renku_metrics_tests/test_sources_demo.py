import datetime as dt

import pandas as pd

from renku_metrics.core.events import ACTIONS, TimeWindow, pseudonymize_user, validate_events
from renku_metrics.core.sources.demo import DEMO_BOT_KEYCLOAK_ID, Settings, Source, season_factor


def year(settings=Settings()):
    start = dt.date(2025, 1, 1)
    window = TimeWindow(TimeWindow.for_day(start).start, TimeWindow.for_day(dt.date(2026, 1, 1)).start)
    return Source("demo", settings).extract(window).frame, window


def test_same_seed_and_day_give_same_events_and_days_are_independent():
    source = Source("demo", Settings(seed=3))
    day = dt.date(2025, 5, 6)
    a = source.generate_day(day)
    b = Source("demo", Settings(seed=3)).generate_day(day)
    pd.testing.assert_frame_equal(a, b)
    # Generating other days first does not change this day's events.
    source.generate_day(dt.date(2025, 5, 5))
    pd.testing.assert_frame_equal(source.generate_day(day), a)
    assert not Source("demo", Settings(seed=4)).generate_day(day).equals(a)


def test_a_year_is_valid_and_looks_like_a_platform():
    frame, window = year()
    good, rejected = validate_events(frame, window, "demo")
    assert not rejected and len(good) == len(frame)
    counts = frame["action"].value_counts()
    assert set(counts.index) == set(ACTIONS)
    # Logins far more frequent than commits; datasets and workflows rarer still.
    assert counts["login"] > 3 * counts["commit"]
    assert counts["commit"] > 10 * counts["create_dataset"]
    assert counts["commit"] > 10 * counts["run_workflow"]
    daily = frame.groupby(frame["occurred_at"].dt.date)["user_id"].nunique()
    days = pd.Series(daily.index.map(lambda d: d.weekday() < 5), index=daily.index)
    assert daily[days].mean() > 2 * daily[~days].mean()  # weekday/weekend rhythm
    # Heavy tail: the most active 10% of users produce far more than 10% of events.
    per_user = frame.groupby("user_id").size().sort_values(ascending=False)
    assert per_user.head(len(per_user) // 10).sum() > 0.35 * per_user.sum()
    # Private and public projects, and the service account among committers.
    visibility = frame["project_visibility"].value_counts()
    assert visibility["private"] > 0 and visibility["public"] > 0
    bot = pseudonymize_user(DEMO_BOT_KEYCLOAK_ID)
    assert (frame.loc[frame["user_id"] == bot, "action"] == "commit").all()
    assert (frame["user_id"] == bot).sum() > 200
    # Sign-ups and churn: the set of active users changes across the year.
    first_q = set(frame.loc[frame["occurred_at"] < "2025-04-01", "user_id"])
    last_q = set(frame.loc[frame["occurred_at"] >= "2025-10-01", "user_id"])
    assert len(last_q - first_q) > 50 and len(first_q - last_q) > 50


def test_semester_rhythm():
    assert (
        season_factor(dt.date(2025, 3, 12)) > season_factor(dt.date(2025, 7, 16)) > season_factor(dt.date(2025, 12, 31))
    )
    assert season_factor(dt.date(2025, 3, 15)) < season_factor(dt.date(2025, 3, 12))  # Saturday


def test_window_shorter_than_a_day_is_filtered():
    start = dt.datetime(2025, 3, 4, 12, tzinfo=dt.timezone.utc)
    result = Source("demo", Settings()).extract(TimeWindow(start, start + dt.timedelta(hours=1)))
    assert len(result.frame) > 0
    assert result.frame["occurred_at"].between(start, start + dt.timedelta(hours=1), inclusive="left").all()
