"""Metric semantics on hand-built events with known answers."""

from __future__ import annotations

import datetime as dt

import pytest

from renku_metrics.core.aggregate import aggregate_period
from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.events import pseudonymize_user
from renku_metrics.core.periods import period_bounds
from renku_metrics.core.storage import LocalStorage

from .helpers import NOW, ev, extract_days, write_config

CATALOG = load_catalog()


def cell(result, deployment, metric=None, column=None):
    frame = result.core_actions if metric else result.active_users
    column = column or ("users" if metric else "active_users")
    rows = frame[frame["deployment"] == deployment]
    if metric:
        rows = rows[rows["metric"] == metric]
    assert len(rows) == 1, rows
    return rows.iloc[0][column]


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "data")


def test_week_boundary_sunday_vs_monday(tmp_path, storage, fixture_source):
    # 2025-03-09 is a Sunday, 2025-03-10 a Monday.
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-01",
                "events": [
                    ev("2025-03-09T23:59:59.999999+00:00", "u-sunday", "commit"),
                    ev("2025-03-10T00:00:00+00:00", "u-monday", "commit"),
                    ev("2025-03-10T00:00:00+00:00", "u-monday", "login"),
                ],
            }
        },
    )
    extract_days(storage, config, "2025-03-01", "2025-03-16")
    earlier = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    later = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 10), NOW)
    assert cell(earlier, "alpha", "commit") == 1
    assert cell(earlier, "alpha") == 1
    assert cell(later, "alpha", "commit") == 1
    assert cell(later, "alpha", "commit", "pct") == 100.0
    assert cell(later, "alpha", "start_session") == 0
    assert cell(later, "alpha", "start_session", "pct") == 0.0


def test_month_edges(tmp_path, storage, fixture_source):
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-01-01",
                "events": [
                    ev("2025-01-31T23:59:59+00:00", "u1", "start_session"),
                    ev("2025-02-01T00:00:00+00:00", "u2", "start_session"),
                    ev("2025-02-28T23:59:59+00:00", "u3", "create_dataset"),
                    ev("2025-03-01T00:00:00+00:00", "u4", "login"),
                ],
            }
        },
    )
    extract_days(storage, config, "2025-01-01", "2025-03-02")
    jan = aggregate_period(storage, config.deployments, CATALOG, "month", dt.date(2025, 1, 1), NOW)
    feb = aggregate_period(storage, config.deployments, CATALOG, "month", dt.date(2025, 2, 1), NOW)
    assert cell(jan, "alpha") == 1 and cell(jan, "alpha", "start_session") == 1
    assert cell(feb, "alpha") == 2
    assert cell(feb, "alpha", "start_session") == 1
    assert cell(feb, "alpha", "create_dataset") == 1
    assert cell(feb, "alpha", "create_dataset", "pct") == 50.0
    assert period_bounds("month", dt.date(2025, 2, 1)) == (dt.date(2025, 2, 1), dt.date(2025, 3, 1))
    assert period_bounds("month", dt.date(2024, 2, 1))[1] == dt.date(2024, 3, 1)  # leap year: 29 days


def test_user_active_in_two_deployments_and_all_rollup(tmp_path, storage, fixture_source):
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-03",
                "events": [
                    ev("2025-03-04T10:00:00+00:00", "shared", "commit"),
                    ev("2025-03-04T10:00:00+00:00", "only-alpha", "login"),
                    {"occurred_at": "2025-03-05T10:00:00+00:00", "user_id": "gitlab:7", "action": "commit"},
                ],
            },
            "beta": {
                "start_date": "2025-03-03",
                "events": [
                    ev("2025-03-05T10:00:00+00:00", "shared", "start_session"),
                    {"occurred_at": "2025-03-05T10:00:00+00:00", "user_id": "gitlab:7", "action": "commit"},
                ],
            },
        },
    )
    extract_days(storage, config, "2025-03-03", "2025-03-09")
    week = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    assert cell(week, "alpha") == 3
    assert cell(week, "beta") == 2
    # "shared" is one person (same Keycloak id); gitlab:7 on two GitLabs are two.
    assert cell(week, "all") == 4
    assert cell(week, "all", "commit") == 3
    assert cell(week, "all", "start_session") == 1
    assert cell(week, "all", "commit", "pct") == 75.0


def test_login_only_user_counts_in_denominator_only(tmp_path, storage, fixture_source):
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-03",
                "events": [
                    ev("2025-03-04T08:00:00+00:00", "reader", "login"),
                    ev("2025-03-04T09:00:00+00:00", "worker", "login"),
                    ev("2025-03-04T09:05:00+00:00", "worker", "run_workflow"),
                ],
            }
        },
    )
    extract_days(storage, config, "2025-03-03", "2025-03-09")
    week = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    assert cell(week, "alpha") == 2
    assert cell(week, "alpha", "run_workflow") == 1
    assert cell(week, "alpha", "run_workflow", "pct") == 50.0
    assert cell(week, "alpha", "commit") == 0


def test_duplicate_events_count_once(tmp_path, storage, fixture_source):
    same = ev("2025-03-04T10:00:00+00:00", "u1", "commit", id="push-1")
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-03",
                "events": [same, same, ev("2025-03-04T11:00:00+00:00", "u1", "commit")],
            }
        },
    )
    extract_days(storage, config, "2025-03-03", "2025-03-09")
    stored = storage.read_parquet("raw_events/deployment=alpha/date=2025-03-04/events.parquet")
    assert stored.num_rows == 2  # the duplicated upstream record is stored once
    week = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    assert cell(week, "alpha", "commit") == 1


def test_empty_days_and_nobody_active(tmp_path, storage, fixture_source):
    config = write_config(tmp_path, {"alpha": {"start_date": "2025-03-03", "events": []}})
    extract_days(storage, config, "2025-03-03", "2025-03-09")
    week = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    assert cell(week, "alpha") == 0
    assert cell(week, "alpha", "commit") == 0
    assert cell(week, "alpha", "commit", "pct") is None or cell(week, "alpha", "commit", "pct") != cell(
        week, "alpha", "commit", "pct"
    )  # null (NaN) when nobody was active
    assert bool(cell(week, "alpha", "commit", "complete")) is True


def test_completeness(tmp_path, storage, fixture_source):
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-03",
                "events": [ev("2025-03-04T10:00:00+00:00", "u1", "login")],
                "incomplete_on_day": "2025-03-12",
            },
            "late": {"start_date": "2025-03-05", "events": []},
        },
    )
    extract_days(storage, config, "2025-03-03", "2025-03-08")  # Sunday 03-09 not extracted
    week1 = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    assert not cell(week1, "alpha", column="complete")
    assert "1 of 7 days not extracted" in cell(week1, "alpha", column="coverage_note")
    assert "history starts inside" in cell(week1, "late", column="coverage_note")
    extract_days(storage, config, "2025-03-09", "2025-03-16")
    week1 = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    assert cell(week1, "alpha", column="complete")
    assert not cell(week1, "all", column="complete")  # "late" only started mid-week
    week2 = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 10), NOW)
    assert not cell(week2, "alpha", column="complete")
    assert "expired" in cell(week2, "alpha", column="coverage_note")
    assert cell(week2, "late", column="complete")
    # A period that has not ended is never complete.
    during = dt.datetime(2025, 3, 15, 12, tzinfo=dt.timezone.utc)
    running = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 10), during)
    assert not cell(running, "late", column="complete")
    assert "not over" in cell(running, "late", column="coverage_note")


def test_excluded_users_left_out_at_aggregation(tmp_path, storage, fixture_source):
    bot = "service-account-1"
    events = [ev("2025-03-04T10:00:00+00:00", bot, "commit"), ev("2025-03-04T10:00:00+00:00", "human", "commit")]
    config = write_config(tmp_path, {"alpha": {"start_date": "2025-03-03", "events": events}})
    extract_days(storage, config, "2025-03-03", "2025-03-09")
    before = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    assert cell(before, "alpha", "commit") == 2
    # Changing the list corrects history without re-extraction; ids may be Keycloak ids or stored keys.
    for exclusion in (bot, pseudonymize_user(bot)):
        config = write_config(
            tmp_path, {"alpha": {"start_date": "2025-03-03", "events": events, "excluded_users": [exclusion]}}
        )
        after = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
        assert cell(after, "alpha", "commit") == 1
        assert cell(after, "alpha") == 1
        assert after.excluded_users["alpha"] == 1


def test_exclusion_belongs_to_its_deployment_only(tmp_path, storage, fixture_source):
    """docs/design.md: *each deployment's* excluded_users are left out. A person listed on
    alpha (an internal test account there) who really works on beta still counts on beta
    and, through beta, in ``all``; the exclusion must not join on the user alone."""
    events_alpha = [
        ev("2025-03-04T10:00:00+00:00", "dual", "commit"),
        ev("2025-03-04T11:00:00+00:00", "ann", "login"),
    ]
    events_beta = [
        ev("2025-03-05T10:00:00+00:00", "dual", "start_session"),
        ev("2025-03-05T11:00:00+00:00", "ben", "commit"),
    ]
    deployments = {
        "alpha": {"start_date": "2025-03-03", "events": events_alpha, "excluded_users": ["dual"]},
        "beta": {"start_date": "2025-03-03", "events": events_beta},
    }
    config = write_config(tmp_path, deployments)
    extract_days(storage, config, "2025-03-03", "2025-03-09")
    week = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    # alpha: ann only (dual excluded there); beta: dual and ben.
    assert (cell(week, "alpha"), cell(week, "alpha", "commit")) == (1, 0)
    assert (cell(week, "beta"), cell(week, "beta", "start_session"), cell(week, "beta", "commit")) == (2, 1, 1)
    assert (week.excluded_users["alpha"], week.excluded_users["beta"]) == (1, 0)
    # all: ann, dual (via beta), ben. dual's alpha commit stays out; ben's beta commit counts.
    assert cell(week, "all") == 3
    assert cell(week, "all", "commit") == 1
    assert cell(week, "all", "start_session") == 1
    assert cell(week, "all", "commit", "pct") == 33.33  # stored rounded to two decimals


def test_record_repeated_on_a_later_day_counts_once_on_its_first_day(tmp_path, storage, fixture_source):
    # A commit pushed on Tuesday by alice, then fast-forwarded onto master by dave on
    # Thursday: the connector sees the same upstream record (same id) twice.
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-03",
                "events": [
                    ev("2025-03-04T10:00:00+00:00", "alice", "commit", id="sha-1"),
                    ev("2025-03-06T10:00:00+00:00", "dave", "commit", id="sha-1"),
                    ev("2025-03-06T10:00:00+00:00", "dave", "login"),
                ],
            }
        },
    )
    extract_days(storage, config, "2025-03-03", "2025-03-09")
    manifest = storage.read_json("raw_events/deployment=alpha/date=2025-03-06/_manifest.json")
    assert manifest["repeated_from_earlier_days"] == 1
    week = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    assert cell(week, "alpha", "commit") == 1  # alice only
    assert cell(week, "alpha") == 2  # dave is still active through his login
    # Re-extracting the later day keeps it deduplicated; re-extracting the first keeps alice.
    extract_days(storage, config, "2025-03-06", "2025-03-06")
    extract_days(storage, config, "2025-03-04", "2025-03-04")
    week = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
    assert cell(week, "alpha", "commit") == 1


def test_deployment_launched_on_start_date_has_complete_history(tmp_path, storage, fixture_source):
    from renku_metrics.core.engagement import lifecycle

    events = [
        ev("2025-03-05T10:00:00+00:00", "first-user", "login"),
        ev("2025-03-12T10:00:00+00:00", "first-user", "login"),
    ]
    spec = {"start_date": "2025-03-05", "events": events}  # a Wednesday
    for launched in (False, True):
        config = write_config(tmp_path, {"alpha": {**spec, "launched_on_start_date": launched}})
        extract_days(storage, config, "2025-03-05", "2025-03-16")
        week = aggregate_period(storage, config.deployments, CATALOG, "week", dt.date(2025, 3, 3), NOW)
        # Nobody could have been active before the launch: the straddling week is final.
        assert bool(cell(week, "alpha", column="complete")) is launched
        rows = lifecycle(storage, config.deployments, "week", [dt.date(2025, 3, 10)], NOW)
        row = rows[rows["deployment"] == "alpha"].iloc[0]
        assert bool(row["history_complete"]) is launched
        assert row["returning_users"] == 1


def test_aggregate_periods_equals_aggregate_period_per_period(tmp_path):
    """The one-scan range computation gives exactly aggregate_period's frames for every period."""
    import dataclasses

    import pandas as pd

    from renku_metrics.core.aggregate import aggregate_periods
    from renku_metrics.core.layout import manifest_key
    from renku_metrics.core.periods import period_starts_between

    from .bench_data import bench_deployments, generate

    storage = LocalStorage(tmp_path / "data")
    generate(tmp_path / "data", events=60_000, deployments=3, days=75, start=dt.date(2025, 1, 6))
    first, second, third = bench_deployments(3, dt.date(2025, 1, 6))
    deployments = [
        # two excluded users (one by Keycloak id, one by stored key); history from the start
        dataclasses.replace(first, excluded_users=("bench-user-3", pseudonymize_user("bench-user-5"))),
        # history starts mid-week and mid-month; not launched then
        dataclasses.replace(second, start_date=dt.date(2025, 2, 5), launched_on_start_date=False),
        third,
    ]
    storage.delete(manifest_key("bench2", dt.date(2025, 2, 11)))  # a day not extracted
    now = dt.datetime(2025, 3, 12, 9, tzinfo=dt.timezone.utc)  # inside the data: later days are unread
    for period, first_start in (("week", dt.date(2025, 1, 6)), ("month", dt.date(2025, 1, 1))):
        starts = period_starts_between(period, first_start, dt.date(2025, 3, 24))
        ranged = aggregate_periods(
            storage, deployments, CATALOG, period, starts, now, memory_limit="256MB", periods_per_scan=4
        )
        assert sorted(ranged) == starts
        for start in starts:
            single = aggregate_period(storage, deployments, CATALOG, period, start, now)
            pd.testing.assert_frame_equal(ranged[start].core_actions, single.core_actions)
            pd.testing.assert_frame_equal(ranged[start].active_users, single.active_users)
            assert ranged[start].excluded_users == single.excluded_users
        some = ranged[starts[2]].active_users.set_index("deployment")
        assert some.loc["bench0", "excluded_users"] > 0 and some.loc["all", "active_users"] > 0
    # Non-contiguous periods: only their own files are read.
    gap = aggregate_periods(storage, deployments, CATALOG, "week", [dt.date(2025, 1, 13), dt.date(2025, 3, 3)], now)
    for start, result in gap.items():
        single = aggregate_period(storage, deployments, CATALOG, "week", start, now)
        pd.testing.assert_frame_equal(result.core_actions, single.core_actions)


def test_full_history_recompute_writes_what_the_assets_write(tmp_path):
    import pandas as pd

    from renku_metrics.core.config import MetricsConfig
    from renku_metrics.core.layout import metrics_key
    from renku_metrics.core.recompute import recompute

    from .bench_data import bench_deployments, generate

    storage = LocalStorage(tmp_path / "data")
    generate(tmp_path / "data", events=10_000, deployments=2, days=40, start=dt.date(2025, 1, 6))
    config = MetricsConfig(path="bench", deployments=tuple(bench_deployments(2, dt.date(2025, 1, 6))))
    now = dt.datetime(2025, 2, 20, tzinfo=dt.timezone.utc)
    weeks = recompute(storage, config, CATALOG, "week", now=now)
    assert weeks[0] == dt.date(2025, 1, 6) and weeks[-1] == dt.date(2025, 2, 17) and len(weeks) == 7
    for start in weeks:
        single = aggregate_period(storage, config.deployments, CATALOG, "week", start, now)
        stored = storage.read_parquet(metrics_key("core_actions_weekly", start)).to_pandas()
        stored["period_start"] = pd.to_datetime(stored["period_start"]).dt.date
        stored["period_end"] = pd.to_datetime(stored["period_end"]).dt.date
        active = storage.read_parquet(metrics_key("active_users_weekly", start)).to_pandas()
        # Both tables published as one pair (core.publication).
        assert stored["publication_id"].nunique() == 1
        assert set(active["publication_id"]) == set(stored["publication_id"])
        stored = stored.drop(columns=["publication_id"])
        pd.testing.assert_frame_equal(stored, single.core_actions, check_dtype=False)
        assert active["active_users"].tolist() == single.active_users["active_users"].tolist()
