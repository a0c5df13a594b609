"""Snapshot of every asset key, asset check, job, schedule, sensor and resource the
code location defines: a factory that renames something by accident fails here."""

import json
import re
import warnings
from pathlib import Path

from dagster import AssetKey

from renku_metrics.core.config import load_config
from renku_metrics.definitions import build_defs

REPO = Path(__file__).resolve().parent.parent


def shipped_defs():
    return build_defs(config=load_config(REPO / "deployments.yaml", env={}))


def test_module_level_defs_load():
    from renku_metrics.definitions import defs

    assert defs.resolve_asset_graph().get_all_asset_keys()


def snapshot(defs) -> dict:
    """Every name the code location defines: assets with their checks, jobs, schedules, sensors, resources."""
    graph = defs.resolve_asset_graph()
    repo = defs.get_repository_def()
    assets = {key.to_user_string(): [] for key in graph.get_all_asset_keys()}
    for check in graph.asset_check_keys:
        assets[check.asset_key.to_user_string()].append(check.name)
    return {
        "assets": {key: sorted(checks) for key, checks in sorted(assets.items())},
        "jobs": sorted(j.name for j in defs.resolve_all_job_defs() if j.name != "__ASSET_JOB"),
        "schedules": {s.name: s.cron_schedule for s in sorted(repo.schedule_defs, key=lambda s: s.name)},
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "resources": sorted(defs.resources),
    }


RAW_EVENTS_CHECKS = [
    "freshness",
    "no_personal_data",
    "source_coverage",
    "timestamps_within_day",
    "unique_event_ids",
    "user_ids_present",
]
# One warning check per target of the shipped targets file (core/targets.yaml).
TARGET_CHECKS = [
    "target_academic_team_sessions",
    "target_commit_share_monthly",
    "target_commit_users_weekly",
    "target_dataset_share_monthly",
    "target_session_users_weekly",
]
PERIOD_COVERAGE_CHECKS = ["coverage_complete", "days_extracted", "deployments_present", "one_row_per_key"]


def expected_snapshot(deployments: list[str], grouped: list[str] = ()) -> dict:
    """The snapshot for a deployments file naming ``deployments`` (and the shipped catalog); ``grouped``:
    those with ``groups`` configured."""
    group_assets = (
        {
            **{f"group_membership/{name}": [] for name in grouped},
            "group_metrics_weekly": ["group_counts_consistent"],
            "group_metrics_monthly": ["group_counts_consistent"],
        }
        if grouped
        else {}
    )
    return {
        "assets": {
            **group_assets,
            "activation_weekly": ["activated_within_cohort", "deployments_present", "freshness", "one_row_per_key"],
            "active_users_monthly": sorted(["active_users_consistent", "freshness", *PERIOD_COVERAGE_CHECKS]),
            "active_users_weekly": sorted(["active_users_consistent", "freshness", *PERIOD_COVERAGE_CHECKS]),
            "core_actions_monthly": sorted(
                [
                    *PERIOD_COVERAGE_CHECKS,
                    "freshness",
                    "pct_within_0_100",
                    "users_within_active_users",
                ]
            ),
            "core_actions_weekly": sorted(
                [
                    *PERIOD_COVERAGE_CHECKS,
                    "freshness",
                    "pct_within_0_100",
                    "users_within_active_users",
                ]
            ),
            "lifecycle_monthly": ["deployments_present", "freshness", "one_row_per_key", "states_add_up"],
            "lifecycle_weekly": ["deployments_present", "freshness", "one_row_per_key", "states_add_up"],
            "metrics_report": [],
            "weekly_digest": ["delivered"],
            **{f"raw_events/{name}": RAW_EVENTS_CHECKS for name in deployments},
            "retention_weekly": ["deployments_present", "freshness", "one_row_per_key", "retained_within_cohort"],
            "stickiness_monthly": ["deployments_present", "freshness", "one_row_per_key", "ratios_within_0_1"],
            "target_status": TARGET_CHECKS,
            "releases": [],
            "release_impact": ["verdicts_well_formed"],
        },
        "jobs": sorted(
            [
                *(f"{name}_daily_extract" for name in deployments),
                "metrics_report_job",
                "monthly_metrics",
                "target_status_job",
                "weekly_metrics",
                "weekly_digest_job",
                "releases_daily",
                "verify_store",
            ]
        ),
        "schedules": {
            **{f"{name}_daily_extract_schedule": "30 1 * * *" for name in deployments},
            "monthly_metrics_schedule": "0 5 1 * *",
            "weekly_metrics_schedule": "0 4 * * 1",  # Mondays
            "weekly_digest_schedule": "30 6-23 * * 1",  # Mondays, hourly from 06:30
            "releases_daily_schedule": "0 6 * * *",
            "verify_store_schedule": "0 6 * * 0",  # Sundays
        },
        "sensors": ["freshness_checks_sensor", "metrics_report_sensor", "target_status_sensor"],
        "resources": ["metrics_storage"],
    }


def test_snapshot_of_the_shipped_definitions():
    """Renaming, adding or removing an asset, check, job, schedule, sensor or resource
    changes what the UI, run history and alerts refer to: do it here on purpose."""
    actual = snapshot(shipped_defs())
    expected = expected_snapshot(["demo", "demo_small"], grouped=["demo", "demo_small"])
    assert actual == expected


def test_snapshot_follows_the_deployments_file(tmp_path):
    path = tmp_path / "deployments.yaml"
    path.write_text(
        "deployments:\n"
        "  - {name: alpha, start_date: 2025-01-01, sources: {demo: {users: 50}}}\n"
        "  - {name: beta_2, start_date: 2025-06-01, sources: {demo: {users: 20, seed: 2}}}\n"
    )
    actual = snapshot(build_defs(config=load_config(path, env={})))
    expected = expected_snapshot(["alpha", "beta_2"])
    assert actual == expected


def test_schedules_run_in_utc():
    schedules = shipped_defs().get_repository_def().schedule_defs
    assert schedules and all(s.execution_timezone in (None, "UTC") for s in schedules)


def test_partitions_weeks_start_monday():
    graph = shipped_defs().resolve_asset_graph()
    weekly = graph.get(AssetKey("core_actions_weekly")).partitions_def
    keys = weekly.get_partition_keys()
    assert all(__import__("datetime").date.fromisoformat(k).weekday() == 0 for k in keys)
    assert keys[0] == "2024-12-30"  # the ISO week containing the earliest start date, 2025-01-01
    raw = graph.get(AssetKey(["raw_events", "demo_small"])).partitions_def
    assert raw.get_partition_keys()[0] == "2025-06-01"


def test_every_asset_has_description_group_and_owner():
    graph = shipped_defs().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 80, key
        assert "annot see" in node.description or "Cannot see" in node.description, key
        groups = ("raw_events", "metrics", "engagement", "report", "groups", "targets", "releases", "digest")
        assert node.group_name in groups, key
        assert node.owners, key


def test_daily_schedule_requests_yesterday_and_retries_incomplete_days(tmp_path, fixture_source):
    import datetime as dt

    from dagster import build_schedule_context, instance_for_test

    from renku_metrics.core.extract import extract_day
    from renku_metrics.core.storage import open_storage
    from renku_metrics.defs.resources import MetricsStorageResource

    from .helpers import NOW, ev, write_config

    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-01",
                "events": [ev("2025-03-04T10:00:00+00:00", "u", "login")],
                "incomplete_on_day": "2025-03-05",
            }
        },
    )
    root = str(tmp_path / "data")
    storage = open_storage(root)
    for day in range(3, 9):  # 03-03 .. 03-08 extracted; 03-05 incomplete; 03-02 missing
        extract_day(storage, config.deployment("alpha"), dt.date(2025, 3, day), env={}, now=NOW)
    defs = build_defs(config=config, storage_root=root)
    schedule = defs.get_repository_def().get_schedule_def("alpha_daily_extract_schedule")
    when = dt.datetime(2025, 3, 10, 1, 30, tzinfo=dt.timezone.utc)
    with (
        instance_for_test() as instance,
        build_schedule_context(
            scheduled_execution_time=when,
            resources={"metrics_storage": MetricsStorageResource(root=root)},
            repository_def=defs.get_repository_def(),
            instance=instance,
        ) as context,
    ):
        requests = list(schedule.evaluate_tick(context).run_requests)
    # 03-09 is yesterday; 03-05 was incomplete; 03-02 is missing but outside the 7-day lookback.
    assert [r.partition_key for r in requests] == ["2025-03-05", "2025-03-09"]
    assert len({r.run_key for r in requests}) == 2


def test_weekly_schedule_reruns_weeks_completed_since(tmp_path, fixture_source):
    import datetime as dt

    from dagster import DagsterInstance, build_schedule_context, instance_for_test

    from renku_metrics.core.extract import extract_day
    from renku_metrics.core.storage import open_storage
    from renku_metrics.defs.demo_run import partition_range_tags
    from renku_metrics.defs.resources import MetricsStorageResource

    from .helpers import NOW, ev, write_config

    events = [ev("2025-03-04T10:00:00+00:00", "u", "login")]
    root = str(tmp_path / "data")
    storage = open_storage(root)
    late = write_config(
        tmp_path, {"alpha": {"start_date": "2025-03-03", "events": events, "incomplete_on_day": "2025-03-05"}}
    )
    for day in range(3, 24):
        extract_day(storage, late.deployment("alpha"), dt.date(2025, 3, day), env={}, now=NOW)
    defs = build_defs(config=late, storage_root=root)
    defs.resolve_job_def("weekly_metrics").execute_in_process(
        instance=DagsterInstance.ephemeral(),
        tags=partition_range_tags("2025-03-03", "2025-03-17"),
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
    )
    schedule = defs.get_repository_def().get_schedule_def("weekly_metrics_schedule")

    def requested():
        when = dt.datetime(2025, 3, 24, 4, tzinfo=dt.timezone.utc)
        with (
            instance_for_test() as instance,
            build_schedule_context(
                scheduled_execution_time=when,
                resources={"metrics_storage": MetricsStorageResource(root=root)},
                repository_def=defs.get_repository_def(),
                instance=instance,
            ) as context,
        ):
            return [r.partition_key for r in schedule.evaluate_tick(context).run_requests]

    # The week of 03-03 is stored incomplete and its day 03-05 is still incomplete: only the week just ended.
    assert requested() == ["2025-03-17"]
    # The daily schedule later re-extracts 03-05 in full: that week is aggregated again.
    fixed = write_config(tmp_path, {"alpha": {"start_date": "2025-03-03", "events": events}})
    extract_day(storage, fixed.deployment("alpha"), dt.date(2025, 3, 5), env={}, now=NOW)
    assert requested() == ["2025-03-03", "2025-03-17"]


def test_package_uses_no_private_dagster_modules():
    package = REPO / "renku_metrics"
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bdagster(_aws|_postgres)?\._", line)
    ]
    assert offenders == []


def test_loading_defs_raises_no_deprecation_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shipped_defs().resolve_all_job_defs()
    deprecations = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert deprecations == []


def test_storage_root_is_read_from_the_environment_when_a_run_starts(tmp_path, monkeypatch, fixture_source):
    from dagster import DagsterInstance, EnvVar

    from renku_metrics.core.manifest import Manifest
    from renku_metrics.core.storage import open_storage

    from .helpers import ev, write_config

    config = write_config(
        tmp_path, {"alpha": {"start_date": "2025-03-01", "events": [ev("2025-03-02T10:00:00+00:00", "u", "login")]}}
    )
    monkeypatch.setenv("RENKU_METRICS_STORAGE", str(tmp_path / "at_load"))
    defs = build_defs(config=config)
    resource = defs.resources["metrics_storage"]
    # The definitions hold the variable, not its value: the UI shows the name.
    assert isinstance(resource.root, EnvVar) and resource.root.env_var_name == "RENKU_METRICS_STORAGE"
    monkeypatch.setenv("RENKU_METRICS_STORAGE", str(tmp_path / "at_run"))
    result = defs.resolve_job_def("alpha_daily_extract").execute_in_process(
        instance=DagsterInstance.ephemeral(),
        partition_key="2025-03-02",
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
    )
    assert result.success
    day = __import__("datetime").date(2025, 3, 2)
    assert Manifest.read(open_storage(str(tmp_path / "at_run")), "alpha", day).complete
    assert not (tmp_path / "at_load").exists()


def test_storage_root_defaults_to_data_and_s3_endpoint_to_aws(monkeypatch):
    from dagster import EnvVar

    monkeypatch.delenv("RENKU_METRICS_STORAGE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    resource = shipped_defs().resources["metrics_storage"]
    assert resource.root == "./data" and resource.endpoint_url is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    resource = shipped_defs().resources["metrics_storage"]
    assert isinstance(resource.endpoint_url, EnvVar) and resource.endpoint_url.env_var_name == "AWS_ENDPOINT_URL"
    assert (
        build_defs(config=load_config(REPO / "deployments.yaml", env={}), storage_root="/x")
        .resources["metrics_storage"]
        .root
        == "/x"
    )


def test_a_missing_secret_fails_only_that_deployments_runs(tmp_path, monkeypatch, fixture_source):
    import datetime as dt

    import yaml
    from dagster import DagsterInstance

    from renku_metrics.core.manifest import Manifest
    from renku_metrics.core.storage import open_storage

    from .helpers import ev

    events = tmp_path / "alpha.jsonl"
    events.write_text(json.dumps(ev("2025-03-02T10:00:00+00:00", "u", "login")) + "\n")
    keycloak = {
        "url": "https://renku.example.org/auth",
        "realm": "Renku",
        "client_id": "renku-metrics",
        "client_secret_env": "BETA_KEYCLOAK_SECRET",
    }
    path = tmp_path / "deployments.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {"name": "alpha", "start_date": "2025-03-01", "sources": {"fixture": {"events_file": str(events)}}},
                    {"name": "beta", "start_date": "2025-03-01", "sources": {"keycloak": keycloak}},
                ]
            }
        )
    )
    monkeypatch.delenv("BETA_KEYCLOAK_SECRET", raising=False)
    monkeypatch.setenv("RENKU_METRICS_DEPLOYMENTS", str(path))
    root = tmp_path / "data"
    monkeypatch.setenv("RENKU_METRICS_STORAGE", str(root))
    # The code location loads (as `dagster dev` would: config from the environment).
    defs = build_defs()
    assert {"alpha_daily_extract", "beta_daily_extract"} <= {j.name for j in defs.resolve_all_job_defs()}
    instance = DagsterInstance.ephemeral()
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    beta = defs.resolve_job_def("beta_daily_extract").execute_in_process(
        instance=instance, partition_key="2025-03-02", run_config=quiet, raise_on_error=False
    )
    assert not beta.success
    failures = [e for e in beta.all_events if e.is_step_failure]
    error = failures[0].step_failure_data.error
    while error.cause is not None:  # Dagster wraps the step's own exception
        error = error.cause
    assert error.cls_name == "ConfigError"
    assert "sources.keycloak.client_secret_env: environment variable BETA_KEYCLOAK_SECRET is not set" in error.message
    alpha = defs.resolve_job_def("alpha_daily_extract").execute_in_process(
        instance=instance, partition_key="2025-03-02", run_config=quiet
    )
    assert alpha.success
    storage = open_storage(str(root))
    assert Manifest.read(storage, "alpha", dt.date(2025, 3, 2)).complete
    assert Manifest.read(storage, "beta", dt.date(2025, 3, 2)) is None
