"""What the UI shows per partition: each partition its own numbers, whether a run covers
one period or a backfill's range; one step for a period's denominator and core
actions; coverage checks that fail."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import AssetKey, AssetRecordsFilter, AssetSelection, DagsterInstance

from renku_metrics.core.readers import read_active_users, read_metrics
from renku_metrics.definitions import build_defs
from renku_metrics.defs.metadata import PERIODS_PER_BACKFILL_RUN, table_rows

from .helpers import ev, write_config
from .test_assets import QUIET, demo_config, run_range

WEEKS = ["2025-03-03", "2025-03-10", "2025-03-17"]


def latest_metadata(instance, key, partition):
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition]), limit=1
    ).records
    assert records, (key, partition)
    return records[0].asset_materialization.metadata


def test_aggregate_and_engagement_assets_backfill_a_quarter_per_run():
    defs = build_defs()
    graph = defs.resolve_asset_graph()
    assert PERIODS_PER_BACKFILL_RUN == {"week": 13, "month": 3}
    for key, period in (
        ("active_users_weekly", "week"),
        ("core_actions_weekly", "week"),
        ("lifecycle_weekly", "week"),
        ("retention_weekly", "week"),
        ("core_actions_monthly", "month"),
        ("lifecycle_monthly", "month"),
        ("stickiness_monthly", "month"),
    ):
        policy = graph.get(AssetKey(key)).backfill_policy
        assert policy.max_partitions_per_run == PERIODS_PER_BACKFILL_RUN[period], key


@pytest.mark.parametrize("runs", ["one range run", "one run per week"])
def test_every_partition_gets_its_own_numbers(tmp_path, runs):
    root = str(tmp_path / "data")
    defs = build_defs(config=demo_config(tmp_path), storage_root=root)
    instance = DagsterInstance.ephemeral()
    for name in ("demo", "demo_small"):
        assert run_range(defs, f"{name}_daily_extract", "2025-03-03", "2025-03-23", instance).success
    if runs == "one range run":  # what a UI backfill of these three weeks launches
        assert run_range(defs, "weekly_metrics", WEEKS[0], WEEKS[-1], instance).success
        assert len(instance.get_runs()) == 3
    else:  # what the weekly schedule launches, week after week
        job = defs.resolve_job_def("weekly_metrics")
        for week in WEEKS:
            assert job.execute_in_process(instance=instance, partition_key=week, run_config=QUIET).success

    metrics = read_metrics("week", storage=root)
    active = read_active_users("week", storage=root)
    for week in WEEKS:
        day = dt.date.fromisoformat(week)
        core = latest_metadata(instance, "core_actions_weekly", week)
        rows = metrics[metrics["period_start"] == day]
        assert core["period"].value == week
        table = table_rows(core["table"])
        assert {r["period"] for r in table} == {week}
        assert {r["deployment"] for r in table} == {"demo", "demo_small", "all"}
        cells = {r["deployment"]: r for r in table}
        for r in rows.itertuples():
            assert core[f"{r.deployment}/{r.metric}/users"].value == r.users
            assert core[f"{r.deployment}/{r.metric}/pct"].value == pytest.approx(r.pct)
            assert core[f"{r.deployment}/active_users"].value == r.active_users
            assert cells[r.deployment][f"{r.metric} users (pct)"] == f"{r.users} ({r.pct:.1f}%)"
            assert cells[r.deployment]["active users"] == r.active_users
        denominator = latest_metadata(instance, "active_users_weekly", week)
        for r in active[active["period_start"] == day].itertuples():
            assert denominator[f"{r.deployment}/active_users"].value == r.active_users
        for key in ("lifecycle_weekly", "retention_weekly"):
            own = latest_metadata(instance, key, week)
            assert own["period"].value == week
            rows = [{"period": r.get("period", r.get("cohort week")), **r} for r in table_rows(own["table"])]
            assert {(r["period"], r["deployment"]) for r in rows} >= {(week, "demo")}
            assert {r["period"] for r in rows} == {week}
    # The weeks differ, so equal metadata across partitions would be caught above.
    per_week = metrics.sort_values(["deployment", "metric"]).groupby("period_start")["users"].apply(tuple)
    assert per_week.nunique() == 3


def test_refreshed_retention_cohorts_carry_their_own_numbers(tmp_path):
    root = str(tmp_path / "data")
    defs = build_defs(config=demo_config(tmp_path), storage_root=root)
    instance = DagsterInstance.ephemeral()
    for name in ("demo", "demo_small"):
        run_range(defs, f"{name}_daily_extract", "2025-03-03", "2025-03-23", instance)
    job = defs.resolve_job_def("weekly_metrics")
    job.execute_in_process(instance=instance, partition_key="2025-03-03", run_config=QUIET)
    job.execute_in_process(instance=instance, partition_key="2025-03-17", run_config=QUIET)
    # The run for 03-17 refreshed cohort 03-03 (its W+1 and W+2 have ended since).
    refreshed = latest_metadata(instance, "retention_weekly", "2025-03-03")
    assert refreshed["period"].value == "2025-03-03"
    assert {r["cohort week"] for r in table_rows(refreshed["table"])} == {"2025-03-03"}
    assert "demo/cohort_users" in refreshed
    assert "demo/retention_w1" in refreshed


def test_denominator_and_core_actions_are_one_step(tmp_path):
    root = str(tmp_path / "data")
    defs = build_defs(config=demo_config(tmp_path), storage_root=root)
    instance = DagsterInstance.ephemeral()
    run_range(defs, "demo_daily_extract", "2025-03-03", "2025-03-09", instance)
    run_range(defs, "demo_small_daily_extract", "2025-03-03", "2025-03-09", instance)
    core = defs.resolve_assets_def(AssetKey("core_actions_weekly"))
    assert core is defs.resolve_assets_def(AssetKey("active_users_weekly"))
    assert set(core.keys) == {AssetKey("active_users_weekly"), AssetKey("core_actions_weekly")}
    # Materializing the core actions alone works for any range: no "materialize the denominator first".
    # (the UI adds the denominator to a selection of the core actions, as Dagster requires)
    selected = (
        AssetSelection.assets("core_actions_weekly")
        .required_multi_asset_neighbors()
        .resolve(defs.resolve_asset_graph())
    )
    assert selected == {AssetKey("active_users_weekly"), AssetKey("core_actions_weekly")}
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, partition_key="2025-03-03", asset_selection=list(selected), run_config=QUIET
    )
    assert result.success
    metrics = read_metrics("week", storage=root)
    active = read_active_users("week", storage=root)
    merged = metrics.merge(active, on=["deployment", "period_start"], suffixes=("", "_d"))
    assert len(merged) == len(metrics) > 0
    assert (merged["active_users"] == merged["active_users_d"]).all()
    assert (merged["computed_at"] == merged["computed_at_d"]).all()  # the same step wrote both


def _coverage(result, key):
    return {
        c.check_name: c
        for c in result.get_asset_check_evaluations()
        if c.asset_key == AssetKey(key) and c.check_name in ("coverage_complete", "days_extracted")
    }


def test_week_with_nothing_extracted_fails_loudly(tmp_path, fixture_source):
    config = write_config(
        tmp_path,
        {
            "alpha": {"start_date": "2025-05-01", "events": [ev("2025-06-02T10:00:00+00:00", "u1", "commit")]},
            "beta": {"start_date": "2025-05-01", "events": [ev("2025-06-03T10:00:00+00:00", "u2", "commit")]},
        },
    )
    root = str(tmp_path / "data")
    defs = build_defs(config=config, storage_root=root)
    instance = DagsterInstance.ephemeral()
    # beta has two days of the week 2025-06-02, alpha none.
    run_range(defs, "beta_daily_extract", "2025-06-02", "2025-06-03", instance)
    result = run_range(defs, "weekly_metrics", "2025-06-02", "2025-06-02", instance)
    assert result.success  # the tables are written, marked incomplete...
    for key in ("active_users_weekly", "core_actions_weekly"):
        checks = _coverage(result, key)
        # ...and the checks say so: an error for the deployment with no day at all,
        days = checks["days_extracted"]
        assert not days.passed and days.severity.value == "ERROR"
        assert (
            "2025-06-02 **alpha**: none of its days extracted (2025-06-02..2025-06-08)"
            in days.metadata["details"].value
        )
        assert "beta" not in days.metadata["details"].value
        # a warning naming the missing days of each deployment.
        coverage = checks["coverage_complete"]
        assert not coverage.passed and coverage.severity.value == "WARN"
        details = coverage.metadata["details"].value
        assert "**beta**: days not extracted: 2025-06-04..2025-06-08" in details
        assert "**alpha**: days not extracted: 2025-06-02..2025-06-08" in details
        assert coverage.metadata["missing_days"].value == 7 + 5


def test_incomplete_source_named_by_the_coverage_check(tmp_path, fixture_source):
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-03",
                "events": [ev("2025-03-04T10:00:00+00:00", "u1", "login")],
                "incomplete_on_day": "2025-03-04",
            }
        },
    )
    root = str(tmp_path / "data")
    defs = build_defs(config=config, storage_root=root)
    instance = DagsterInstance.ephemeral()
    run_range(defs, "alpha_daily_extract", "2025-03-03", "2025-03-09", instance)
    result = run_range(defs, "weekly_metrics", "2025-03-03", "2025-03-03", instance)
    checks = _coverage(result, "core_actions_weekly")
    assert checks["days_extracted"].passed
    coverage = checks["coverage_complete"]
    assert not coverage.passed and coverage.severity.value == "WARN"
    assert "2025-03-04 fixture" in coverage.metadata["details"].value
    assert coverage.metadata["incomplete_sources"].value == 1 and coverage.metadata["missing_days"].value == 0


def test_fully_extracted_week_passes_coverage(tmp_path):
    root = str(tmp_path / "data")
    defs = build_defs(config=demo_config(tmp_path), storage_root=root)
    instance = DagsterInstance.ephemeral()
    for name in ("demo", "demo_small"):
        run_range(defs, f"{name}_daily_extract", "2025-03-03", "2025-03-09", instance)
    result = run_range(defs, "weekly_metrics", "2025-03-03", "2025-03-03", instance)
    for key in ("active_users_weekly", "core_actions_weekly"):
        checks = _coverage(result, key)
        assert checks["coverage_complete"].passed and checks["days_extracted"].passed
