"""Assets materialized for real partitions against a local root and an S3 endpoint."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from renku_metrics.core.config import load_config
from renku_metrics.core.readers import read_active_users, read_events, read_metrics
from renku_metrics.core.storage import open_storage
from renku_metrics.definitions import build_defs
from renku_metrics.defs.demo_run import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from renku_metrics.defs.metadata import table_rows

from .helpers import ev, write_config

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def run_range(defs, job, start, end, instance, raise_on_error=True):
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
        run_config=QUIET,
        raise_on_error=raise_on_error,
    )


def materializations(result, key):
    return [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(key)]


def demo_config(tmp_path):
    path = tmp_path / "deployments.yaml"
    path.write_text(
        "deployments:\n"
        "  - {name: demo, start_date: 2025-03-01, excluded_users: ['00000000-0000-4000-8000-0000000b0700'], sources: {demo: {seed: 42, users: 1500}}}\n"
        "  - {name: demo_small, start_date: 2025-03-01, sources: {demo: {seed: 7, users: 300, bot: false}}}\n"
    )
    return load_config(path, env={})


def backfill_three_weeks(defs, instance):
    for name in ("demo", "demo_small"):
        result = run_range(defs, f"{name}_daily_extract", "2025-03-03", "2025-03-23", instance)
        assert result.success
    weekly = run_range(defs, "weekly_metrics", "2025-03-03", "2025-03-17", instance)
    assert weekly.success
    return weekly


@pytest.mark.parametrize("where", ["local", "s3"])
def test_single_run_backfill_of_several_weeks(tmp_path, where, request, monkeypatch):
    if where == "local":
        root, endpoint = str(tmp_path / "data"), None
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        root = f"s3://{request.getfixturevalue('s3_bucket')}/renku-metrics"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    defs = build_defs(config=demo_config(tmp_path), storage_root=root)
    instance = DagsterInstance.ephemeral()
    weekly = backfill_three_weeks(defs, instance)

    # One run per step, each covering the whole range.
    runs = instance.get_runs()
    assert len(runs) == 3
    assert len(materializations(weekly, "core_actions_weekly")) == 3  # one per weekly partition
    assert {m.partition for m in materializations(weekly, "core_actions_weekly")} == {
        "2025-03-03",
        "2025-03-10",
        "2025-03-17",
    }
    # Each partition of the range run carries its own period's numbers, nothing of the others.
    own = {m.partition: m.materialization.metadata for m in materializations(weekly, "core_actions_weekly")}
    metrics = read_metrics("week", storage=open_storage(root, endpoint_url=endpoint))
    for week in ("2025-03-03", "2025-03-10", "2025-03-17"):
        meta = own[week]
        assert meta["period"].value == week
        assert meta["dagster/row_count"].value == 3 * 6  # (2 deployments + all) x metrics
        assert meta["dagster/uri"].value.startswith(root if where == "s3" else str(tmp_path))
        assert {r["period"] for r in table_rows(meta["table"])} == {week}
        rows = metrics[(metrics["period_start"] == dt.date.fromisoformat(week)) & (metrics["deployment"] == "demo")]
        for r in rows.itertuples():
            assert meta[f"demo/{r.metric}/users"].value == r.users
        assert not any(k.startswith("run_") for k in meta)
    # The weeks differ, so metadata copied across partitions would be caught above.
    assert len({tuple(own[w][f"demo/{m}/users"].value for m in ("commit", "start_session")) for w in own}) == 3
    failed = [(c.asset_key, c.check_name, c.metadata) for c in weekly.get_asset_check_evaluations() if not c.passed]
    assert not failed

    storage = open_storage(root, endpoint_url=endpoint)
    metrics = read_metrics("week", storage=storage)
    assert len(metrics) == 54  # 3 weeks x (2 deployments + all) x 6 metrics
    assert set(metrics["period_start"]) == {dt.date(2025, 3, 3), dt.date(2025, 3, 10), dt.date(2025, 3, 17)}
    assert metrics["complete"].all()
    assert {"deployment", "period", "period_start", "metric", "users", "active_users", "pct"} <= set(metrics.columns)
    denominators = read_active_users("week", storage=storage)
    merged = metrics.merge(denominators, on=["deployment", "period_start"], suffixes=("", "_d"))
    assert (merged["active_users"] == merged["active_users_d"]).all()
    assert (denominators.loc[denominators["deployment"] == "demo", "excluded_users"] == 1).all()

    # The numbers equal a direct recount of the stored raw events.
    events = read_events("demo", "2025-03-10", "2025-03-17", storage=storage)
    events = events[events["user_id"] != "e9fbbd8c6b93d6f4bb3a0d16d3a1d1c2"]  # not an excluded id: no-op guard
    from renku_metrics.core.events import pseudonymize_user

    events = events[events["user_id"] != pseudonymize_user("00000000-0000-4000-8000-0000000b0700")]
    row = metrics[
        (metrics["deployment"] == "demo")
        & (metrics["period_start"] == dt.date(2025, 3, 10))
        & (metrics["metric"] == "commit")
    ].iloc[0]
    assert row["active_users"] == events["user_id"].nunique()
    assert row["users"] == events.loc[events["action"] == "commit", "user_id"].nunique()
    assert row["pct"] == pytest.approx(round(100 * row["users"] / row["active_users"], 2))
    assert own["2025-03-10"]["demo/commit/users"].value == row["users"]
    assert own["2025-03-10"]["demo/commit/pct"].value == pytest.approx(row["pct"])
    # The demo knows who owns its projects: collaboration is the derived events' users.
    shared = metrics[
        (metrics["deployment"] == "demo")
        & (metrics["period_start"] == dt.date(2025, 3, 10))
        & (metrics["metric"] == "collaborate")
    ].iloc[0]
    assert 0 < shared["users"] == events.loc[events["action"] == "collaborate", "user_id"].nunique()

    # When read from S3, the notebook API resolves the endpoint from AWS_ENDPOINT_URL.
    if where == "s3":
        assert len(read_metrics("week", storage=root)) == 54


def test_rerun_is_idempotent(tmp_path):
    root = str(tmp_path / "data")
    defs = build_defs(config=demo_config(tmp_path), storage_root=root)
    instance = DagsterInstance.ephemeral()
    backfill_three_weeks(defs, instance)
    storage = open_storage(root)
    first_events = read_events(storage=storage)
    first_metrics = read_metrics("week", storage=storage).drop(columns="computed_at")
    backfill_three_weeks(defs, instance)
    pd.testing.assert_frame_equal(read_events(storage=storage), first_events)
    pd.testing.assert_frame_equal(read_metrics("week", storage=storage).drop(columns="computed_at"), first_metrics)
    assert len(storage.list_keys("raw_events/deployment=demo/date=2025-03-04/")) == 2  # events + manifest


def test_malformed_records_counted_and_kept_aside(tmp_path, fixture_source):
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-03",
                "events": [
                    ev("2025-03-04T10:00:00+00:00", "u1", "commit"),
                    ev("2025-03-04T11:00:00+00:00", "u2", "teleport"),
                ],
                "raw_lines": ['{"occurred_at": "2025-03-04T1'],
            }
        },
    )
    root = str(tmp_path / "data")
    defs = build_defs(config=config, storage_root=root)
    asset = defs.resolve_assets_def(AssetKey(["raw_events", "alpha"]))
    result = materialize([asset], partition_key="2025-03-04")
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["dagster/row_count"].value == 1
    assert meta["rejected_records"].value == 2
    lines = (
        open_storage(root).read_bytes("rejected/deployment=alpha/date=2025-03-04/rejected.jsonl").decode().splitlines()
    )
    assert len(lines) == 2
    assert any("invalid JSON" in line for line in lines) and any("unknown action" in line for line in lines)


def test_failing_source_keeps_previous_day_and_spares_other_deployments(tmp_path, fixture_source):
    good = [ev("2025-03-04T10:00:00+00:00", "u1", "commit")]
    config = write_config(
        tmp_path,
        {"alpha": {"start_date": "2025-03-03", "events": good}, "beta": {"start_date": "2025-03-03", "events": good}},
    )
    root = str(tmp_path / "data")
    defs = build_defs(config=config, storage_root=root)
    assets = [defs.resolve_assets_def(AssetKey(["raw_events", n])) for n in ("alpha", "beta")]
    materialize(assets, partition_key="2025-03-04")
    before = open_storage(root).read_bytes("raw_events/deployment=alpha/date=2025-03-04/events.parquet")

    broken = write_config(
        tmp_path,
        {
            "alpha": {"start_date": "2025-03-03", "events": [], "fail_on_day": "2025-03-04"},
            "beta": {"start_date": "2025-03-03", "events": good},
        },
    )
    defs = build_defs(config=broken, storage_root=root)
    assets = [defs.resolve_assets_def(AssetKey(["raw_events", n])) for n in ("alpha", "beta")]
    result = materialize(assets, partition_key="2025-03-04", raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "deployment 'alpha'" in str(failure.event_specific_data.error) and "fixture" in str(
        failure.event_specific_data.error
    )
    assert open_storage(root).read_bytes("raw_events/deployment=alpha/date=2025-03-04/events.parquet") == before
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [AssetKey(["raw_events", "beta"])]


def test_incomplete_source_window_fails_warning_check_and_marks_period(tmp_path, fixture_source):
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
    extract = run_range(defs, "alpha_daily_extract", "2025-03-03", "2025-03-09", instance)
    coverage = [c for c in extract.get_asset_check_evaluations() if c.check_name == "source_coverage"][0]
    assert not coverage.passed and coverage.severity.value == "WARN"
    # Only the incomplete day's own partition says so, in a run over the whole week.
    own = {m.partition: m.materialization.metadata for m in materializations(extract, ["raw_events", "alpha"])}
    assert len(own) == 7
    assert [day for day, meta in own.items() if not meta["complete"].value] == ["2025-03-04"]
    assert "expired" in own["2025-03-04"]["coverage_gaps"].value
    assert "coverage_gaps" not in own["2025-03-05"]
    run_range(defs, "weekly_metrics", "2025-03-03", "2025-03-03", instance)
    metrics = read_metrics("week", storage=root)
    assert not metrics["complete"].any()
    assert read_metrics("week", storage=root, complete_only=True).empty


def test_reextracting_an_expired_day_keeps_earlier_events(tmp_path, fixture_source):
    from renku_metrics.core.extract import extract_day

    from .helpers import NOW

    both = [ev("2025-03-04T08:00:00+00:00", "early", "login"), ev("2025-03-04T15:00:00+00:00", "late", "login")]
    config = write_config(tmp_path, {"alpha": {"start_date": "2025-03-03", "events": both}})
    storage = open_storage(str(tmp_path / "data"))
    first = extract_day(storage, config.deployment("alpha"), dt.date(2025, 3, 4), env={}, now=NOW)
    assert first.row_count == 2 and first.complete
    # Later, the upstream has forgotten the morning and says so.
    config = write_config(
        tmp_path, {"alpha": {"start_date": "2025-03-03", "events": both[1:], "incomplete_on_day": "2025-03-04"}}
    )
    second = extract_day(storage, config.deployment("alpha"), dt.date(2025, 3, 4), env={}, now=NOW)
    assert second.row_count == 2  # the morning login is kept, not erased
    assert second.complete  # the earlier extract had read the whole window
    assert second.sources["fixture"]["kept_from_previous_extract"] == 1


# -- real monthly numbers, and `complete` at the period-end boundary ----------------------------------

MARCH = [
    ev("2025-03-01T09:00:00Z", "u1", "login"),  # a Saturday: the February week, the March month
    ev("2025-03-20T09:00:00Z", "u1", "commit"),
    ev("2025-03-05T09:00:00Z", "u2", "login"),
    ev("2025-03-25T09:00:00Z", "u2", "login"),
    ev("2025-03-10T09:00:00Z", "u3", "commit"),
    ev("2025-03-31T23:59:59Z", "u3", "create_dataset"),  # the month's last second
    ev("2025-03-15T09:00:00Z", "u4", "run_workflow"),
    ev("2025-02-28T23:59:59Z", "u5", "commit"),  # February
    ev("2025-04-01T00:00:00Z", "u6", "start_session"),  # April
]


def test_monthly_assets_count_distinct_users_of_the_month(tmp_path, fixture_source):
    config = write_config(tmp_path, {"alpha": {"start_date": "2025-02-01", "events": MARCH}})
    root = str(tmp_path / "data")
    defs = build_defs(config=config, storage_root=root)
    instance = DagsterInstance.ephemeral()
    assert run_range(defs, "alpha_daily_extract", "2025-02-01", "2025-04-30", instance).success
    result = run_range(defs, "monthly_metrics", "2025-03-01", "2025-03-01", instance)
    assert result.success
    monthly = read_metrics("month", storage=root)
    alpha = monthly[monthly["deployment"] == "alpha"].set_index("metric")
    # By hand: active in March are u1..u4 (u5 acted in February, u6 in April).
    assert set(alpha["active_users"]) == {4}
    expected = {"commit": (2, 50.0), "create_dataset": (1, 25.0), "run_workflow": (1, 25.0), "start_session": (0, 0.0)}
    for metric, (users, pct) in expected.items():
        assert (alpha.loc[metric, "users"], alpha.loc[metric, "pct"]) == (users, pct), metric
    assert alpha["complete"].all()
    # The month counts each user once, not the sum of its weeks (1 + 2 + 1 + 1 + 1 = 6 week-actives).
    active = read_active_users("month", storage=root)
    assert active[active["deployment"] == "alpha"]["active_users"].tolist() == [4]
    # Targets are checks of target_status now, not of the aggregates.
    assert not [c for c in result.get_asset_check_evaluations() if c.check_name.startswith("target_")]


@pytest.mark.parametrize(
    "now,complete",
    [
        ("2025-03-09T23:59:00Z", False),  # Sunday 23:59 of the week: not over yet
        ("2025-03-10T00:00:00Z", True),  # the end day (the next Monday) at midnight: over
        ("2025-03-10T04:00:00Z", True),  # the weekly schedule's run on Monday 04:00
    ],
)
def test_complete_at_the_period_end_boundary_with_the_runs_clock(tmp_path, fixture_source, now, complete):
    from renku_metrics.defs.clock import NOW_TAG

    config = write_config(
        tmp_path, {"alpha": {"start_date": "2025-03-01", "events": [ev("2025-03-04T10:00:00Z", "u1", "commit")]}}
    )
    root = str(tmp_path / "data")
    defs = build_defs(config=config, storage_root=root)
    instance = DagsterInstance.ephemeral()
    assert run_range(defs, "alpha_daily_extract", "2025-03-01", "2025-03-09", instance).success
    result = defs.resolve_job_def("weekly_metrics").execute_in_process(
        instance=instance, partition_key="2025-03-03", tags={NOW_TAG: now}, run_config=QUIET
    )
    assert result.success
    weekly = read_metrics("week", storage=root)
    assert set(weekly["complete"]) == {complete}
    if not complete:
        assert weekly["coverage_note"].str.contains("period not over yet").all()
