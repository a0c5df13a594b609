"""Freshness looks at the partition that should exist by now: a backfilled old day
does not make a stale deployment fresh; the limits hold to the second (injected clock)."""

import datetime as dt

import pytest
from dagster import DagsterInstance, build_sensor_context, materialize

from renku_metrics.defs.freshness import FreshnessRule, build_freshness_sensor, evaluate
from renku_metrics.defs.raw_events.assets import build_raw_events_asset
from renku_metrics.defs.raw_events.checks import raw_events_freshness_rules
from renku_metrics.defs.resources import MetricsStorageResource

from .helpers import ev, write_config
from .instances import postgres_instance

UTC = dt.timezone.utc
SECOND = dt.timedelta(seconds=1)


def at(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_daily_rule_edges():
    rule = FreshnessRule("day", dt.date(2026, 1, 1), dt.timedelta(hours=8))
    deadline = at(2026, 3, 10, 8)  # 2026-03-09 is due by 08:00 on the 10th
    assert rule.due(deadline - SECOND)[0] == dt.date(2026, 3, 8)
    assert rule.due(deadline) == (dt.date(2026, 3, 9), deadline)
    up_to_8th = {"2026-03-07", "2026-03-08"}
    assert evaluate(rule, up_to_8th, deadline - SECOND)[0] is True
    passed, meta = evaluate(rule, up_to_8th, deadline)
    assert passed is False
    assert meta["due_partition"] == "2026-03-09" and meta["latest_materialized_partition"] == "2026-03-08"
    assert evaluate(rule, {*up_to_8th, "2026-03-09"}, deadline)[0] is True
    # A missed day stays missed, however late: the 9th is due, and later the 10th.
    assert evaluate(rule, up_to_8th, at(2026, 3, 11, 7, 59, 59))[1]["due_partition"] == "2026-03-09"
    assert evaluate(rule, up_to_8th, at(2026, 3, 11, 8))[1]["due_partition"] == "2026-03-10"


def test_period_rule_edges_across_the_year():
    weekly = FreshnessRule("week", dt.date(2026, 1, 1), dt.timedelta(days=1))
    # The week of 2026-12-28 ends 2027-01-04 00:00 and is due by Tuesday 2027-01-05 00:00.
    assert weekly.due(at(2027, 1, 5) - SECOND)[0] == dt.date(2026, 12, 21)
    assert weekly.due(at(2027, 1, 5))[0] == dt.date(2026, 12, 28)
    monthly = FreshnessRule("month", dt.date(2026, 1, 1), dt.timedelta(days=1))
    # December 2026 is due by 2027-01-02 00:00.
    assert monthly.due(at(2027, 1, 2) - SECOND)[0] == dt.date(2026, 11, 1)
    assert monthly.due(at(2027, 1, 2))[0] == dt.date(2026, 12, 1)
    assert evaluate(monthly, {"2026-11-01"}, at(2027, 1, 2) - SECOND)[0] is True
    assert evaluate(monthly, {"2026-11-01"}, at(2027, 1, 2))[0] is False


def test_nothing_due_before_the_first_partition():
    rule = FreshnessRule("day", dt.date(2026, 3, 9), dt.timedelta(hours=8))
    passed, meta = evaluate(rule, set(), at(2026, 3, 10, 7))
    assert passed and meta["status"] == "no partition due yet"
    assert evaluate(rule, set(), at(2026, 3, 10, 8))[0] is False


@pytest.fixture
def extracted(tmp_path, fixture_source):
    """Deployment alpha with days materialized through Dagster: the newest 2026-03-03
    (six days before yesterday), then an old day 2026-01-15 backfilled last."""
    events = [ev("2026-01-15T10:00:00+00:00", "u", "login"), ev("2026-03-03T10:00:00+00:00", "u", "login")]
    config = write_config(tmp_path, {"alpha": {"start_date": "2026-01-01", "events": events}})
    root = str(tmp_path / "data")
    return config, build_raw_events_asset(config.deployment("alpha")), root


def _materialize(asset, root, instance, day):
    result = materialize(
        [asset], partition_key=day, instance=instance, resources={"metrics_storage": MetricsStorageResource(root=root)}
    )
    assert result.success


def test_backfilled_old_day_does_not_make_a_stale_deployment_fresh(extracted, postgres_db):
    config, asset, root = extracted
    rules = raw_events_freshness_rules(config.deployments)
    now = at(2026, 3, 10, 9)
    with postgres_instance(postgres_db) as instance:
        _materialize(asset, root, instance, "2026-03-03")
        _materialize(asset, root, instance, "2026-01-15")  # the latest update is this backfill
        latest = instance.get_latest_materialization_event(asset.key)
        assert latest.asset_materialization.partition == "2026-01-15"

        sensor = build_freshness_sensor(rules, clock=lambda: now)
        result = sensor.evaluate_tick(build_sensor_context(instance=instance))
        [evaluation] = result.asset_events
        assert evaluation.asset_key == asset.key and evaluation.check_name == "freshness"
        assert evaluation.passed is False
        assert evaluation.metadata["due_partition"].value == "2026-03-09"
        assert evaluation.metadata["latest_materialized_partition"].value == "2026-03-03"

        # Same state at the next evaluation: nothing new is recorded.
        again = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=result.cursor))
        assert again.asset_events == []
        # Yesterday gets extracted: the check passes, and that change is recorded.
        _materialize(asset, root, instance, "2026-03-09")
        fresh = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=again.cursor))
        assert [e.passed for e in fresh.asset_events] == [True]


def test_check_executes_from_a_run(extracted):
    """The same check run as an asset check (the UI's "Execute"), with a fixed clock."""
    from dagster import AssetSelection, Definitions, define_asset_job

    from renku_metrics.defs.freshness import build_freshness_checks

    config, asset, root = extracted
    rules = raw_events_freshness_rules(config.deployments)
    checks = build_freshness_checks(rules, clock=lambda: at(2026, 3, 4, 8))
    instance = DagsterInstance.ephemeral()
    _materialize(asset, root, instance, "2026-03-03")
    defs = Definitions(
        assets=[asset],
        asset_checks=[checks],
        jobs=[define_asset_job("freshness_job", selection=AssetSelection.checks(checks))],
        resources={"metrics_storage": MetricsStorageResource(root=root)},
    )
    result = defs.resolve_job_def("freshness_job").execute_in_process(instance=instance)
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed is True and evaluation.metadata["due_partition"].value == "2026-03-03"
