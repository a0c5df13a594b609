"""The schedules' choice of partitions: year boundaries, the exact edges of the
re-extract look-back and the rerun windows, and no second request for a day or
period that already has a queued or running run (PostgreSQL instance)."""

import datetime as dt
import uuid

import pandas as pd
import pytest
from dagster import DagsterRun, DagsterRunStatus, build_schedule_context
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

from renku_metrics.core.storage import open_storage
from renku_metrics.defs.aggregates.schedules import RECHECK_PERIODS, periods_to_aggregate
from renku_metrics.defs.build import build_defs
from renku_metrics.defs.keys import raw_events_asset_key
from renku_metrics.defs.raw_events.schedules import REEXTRACT_DAYS, days_to_extract
from renku_metrics.defs.resources import MetricsStorageResource

from .helpers import ev, extract_days, write_config
from .instances import postgres_instance

UTC = dt.timezone.utc


@pytest.fixture
def pg_instance(postgres_db):
    with postgres_instance(postgres_db) as instance:
        yield instance


def tick(defs, name: str, when: dt.datetime, root: str, instance) -> list[str]:
    schedule = defs.get_repository_def().get_schedule_def(name)
    with build_schedule_context(
        scheduled_execution_time=when,
        resources={"metrics_storage": MetricsStorageResource(root=root)},
        repository_def=defs.get_repository_def(),
        instance=instance,
    ) as context:
        return [r.partition_key for r in schedule.evaluate_tick(context).run_requests]


def two_deployments(tmp_path, start="2026-01-01"):
    events = [ev("2026-12-30T10:00:00+00:00", "u", "login")]
    return write_config(
        tmp_path,
        {"alpha": {"start_date": start, "events": events}, "beta": {"start_date": start, "events": events}},
    )


def test_year_boundary_weekly_and_monthly_ticks(tmp_path, pg_instance, fixture_source):
    config = two_deployments(tmp_path, "2026-06-01")
    root = str(tmp_path / "data")
    defs = build_defs(config=config, storage_root=root)
    # Monday 2027-01-04: the ISO week just ended started on 2026-12-28.
    assert tick(defs, "weekly_metrics_schedule", dt.datetime(2027, 1, 4, 4, tzinfo=UTC), root, pg_instance) == [
        "2026-12-28"
    ]
    # 2027-01-01: the month just ended is December 2026.
    assert tick(defs, "monthly_metrics_schedule", dt.datetime(2027, 1, 1, 5, tzinfo=UTC), root, pg_instance) == [
        "2026-12-01"
    ]
    # The daily tick of 2027-01-01 asks for 2026-12-31 (and the missing days of the look-back).
    daily = tick(defs, "alpha_daily_extract_schedule", dt.datetime(2027, 1, 1, 1, 30, tzinfo=UTC), root, pg_instance)
    assert daily[-1] == "2026-12-31"


def test_reextract_lookback_edges(tmp_path, fixture_source):
    config = two_deployments(tmp_path)
    storage = open_storage(str(tmp_path / "data"))
    alpha = config.deployment("alpha")
    assert REEXTRACT_DAYS == 7
    # Nothing stored: exactly the 7 days before today, the oldest being today - 7.
    days = days_to_extract(storage, alpha, dt.date(2027, 1, 1))
    assert days[0] == dt.date(2026, 12, 25) and days[-1] == dt.date(2026, 12, 31) and len(days) == 7
    # Stored in full: only yesterday, which is always extracted again.
    extract_days(storage, config, "2026-12-25", "2026-12-31")
    assert days_to_extract(storage, alpha, dt.date(2027, 1, 1)) == [dt.date(2026, 12, 31)]
    # Never a day before the deployment's start date.
    late = two_deployments(tmp_path, "2026-12-30").deployment("alpha")
    assert days_to_extract(open_storage(str(tmp_path / "empty")), late, dt.date(2027, 1, 1)) == [
        dt.date(2026, 12, 30),
        dt.date(2026, 12, 31),
    ]


def _store_denominator(storage, period: str, start: dt.date, complete: bool) -> None:
    """Both tables of the period, published as one pair (core.publication), complete or not."""
    from renku_metrics.core.publication import publish_period

    frame = pd.DataFrame({"period_start": [start], "deployment": ["all"], "active_users": [1], "complete": [complete]})
    publish_period(storage, period, start, frame, frame.assign(metric="commit"))


def test_rerun_windows_edges(tmp_path, fixture_source):
    """4 weeks before the week just ended is rechecked, 5 weeks before is not;
    likewise 2 and 3 months."""
    config = two_deployments(tmp_path, "2026-08-01")
    storage = open_storage(str(tmp_path / "data"))
    extract_days(storage, config, "2026-09-01", "2027-01-03")  # every day complete
    assert RECHECK_PERIODS == {"week": 4, "month": 2}
    # Weeks: just ended 2026-12-28; the window reaches back to 2026-11-30 (4 weeks earlier).
    for start in ("2026-11-23", "2026-11-30"):
        _store_denominator(storage, "week", dt.date.fromisoformat(start), complete=False)
    for start in ("2026-12-07", "2026-12-14", "2026-12-21"):
        _store_denominator(storage, "week", dt.date.fromisoformat(start), complete=True)
    weeks = periods_to_aggregate(storage, config, "week", dt.date(2027, 1, 4))
    assert [d.isoformat() for d in weeks] == ["2026-11-30", "2026-12-28"]
    # Months: just ended 2026-12; the window reaches back to 2026-10 (2 months earlier).
    for start in ("2026-09-01", "2026-10-01"):
        _store_denominator(storage, "month", dt.date.fromisoformat(start), complete=False)
    _store_denominator(storage, "month", dt.date(2026, 11, 1), complete=True)
    months = periods_to_aggregate(storage, config, "month", dt.date(2027, 1, 1))
    assert [d.isoformat() for d in months] == ["2026-10-01", "2026-12-01"]


def _add_run(instance, job_name, status, tags, asset_key=None):
    """A run record as the webserver or a schedule would have created it (a queued run
    names the code location it came from)."""
    location = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("renku_metrics"), "__repository__")
    instance.add_run(
        DagsterRun(
            job_name=job_name,
            run_id=str(uuid.uuid4()),
            status=status,
            tags=tags,
            asset_selection=frozenset({asset_key}) if asset_key else None,
            remote_job_origin=RemoteJobOrigin(location, job_name),
        )
    )


def test_daily_schedule_skips_days_already_queued_or_running(tmp_path, pg_instance, fixture_source):
    config = two_deployments(tmp_path)
    root = str(tmp_path / "data")
    defs = build_defs(config=config, storage_root=root)
    when = dt.datetime(2027, 1, 1, 1, 30, tzinfo=UTC)
    everything = [f"2026-12-{d}" for d in range(25, 32)]
    assert tick(defs, "alpha_daily_extract_schedule", when, root, pg_instance) == everything
    alpha = raw_events_asset_key("alpha")
    # Yesterday's run of the previous tick still waits in the queue (blocked extract).
    _add_run(pg_instance, "alpha_daily_extract", DagsterRunStatus.QUEUED, {"dagster/partition": "2026-12-31"})
    # A UI backfill of alpha running over 12-25..12-27 as one run.
    _add_run(
        pg_instance,
        "__ASSET_JOB",
        DagsterRunStatus.STARTED,
        {"dagster/asset_partition_range_start": "2026-12-25", "dagster/asset_partition_range_end": "2026-12-27"},
        asset_key=alpha,
    )
    # Finished runs and other deployments' runs do not count.
    _add_run(pg_instance, "alpha_daily_extract", DagsterRunStatus.FAILURE, {"dagster/partition": "2026-12-28"})
    _add_run(pg_instance, "alpha_daily_extract", DagsterRunStatus.SUCCESS, {"dagster/partition": "2026-12-29"})
    _add_run(pg_instance, "beta_daily_extract", DagsterRunStatus.QUEUED, {"dagster/partition": "2026-12-30"})
    assert tick(defs, "alpha_daily_extract_schedule", when, root, pg_instance) == [
        "2026-12-28",
        "2026-12-29",
        "2026-12-30",
    ]
    assert tick(defs, "beta_daily_extract_schedule", when, root, pg_instance) == [
        d for d in everything if d != "2026-12-30"
    ]


def test_period_schedules_skip_periods_already_queued_or_running(tmp_path, pg_instance, fixture_source):
    config = two_deployments(tmp_path, "2026-06-01")
    root = str(tmp_path / "data")
    defs = build_defs(config=config, storage_root=root)
    monday = dt.datetime(2027, 1, 4, 4, tzinfo=UTC)
    _add_run(pg_instance, "weekly_metrics", DagsterRunStatus.STARTING, {"dagster/partition": "2026-12-28"})
    assert tick(defs, "weekly_metrics_schedule", monday, root, pg_instance) == []
    # A monthly run of another period does not block December.
    _add_run(pg_instance, "monthly_metrics", DagsterRunStatus.QUEUED, {"dagster/partition": "2026-11-01"})
    first = dt.datetime(2027, 1, 1, 5, tzinfo=UTC)
    assert tick(defs, "monthly_metrics_schedule", first, root, pg_instance) == ["2026-12-01"]
    _add_run(pg_instance, "monthly_metrics", DagsterRunStatus.NOT_STARTED, {"dagster/partition": "2026-12-01"})
    assert tick(defs, "monthly_metrics_schedule", first, root, pg_instance) == []
