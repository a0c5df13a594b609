"""Each job's max runtime and its run pods' resources and security context (defs/run_limits.py)."""

from __future__ import annotations

import datetime as dt
import json

from dagster import build_schedule_context, instance_for_test

from renku_metrics.definitions import build_defs
from renku_metrics.defs.resources import MetricsStorageResource
from renku_metrics_tests.helpers import ev, write_config

UTC = dt.timezone.utc


def _defs(tmp_path):
    config = write_config(
        tmp_path,
        {
            "alpha": {"start_date": "2026-06-01", "events": [ev("2026-12-30T10:00:00Z", "u", "login")]},
            "beta": {"start_date": "2026-06-01", "events": []},
        },
    )
    return build_defs(config=config, storage_root=str(tmp_path / "data"))


def test_every_job_has_its_own_max_runtime_and_run_pod_settings(tmp_path, fixture_source):
    jobs = {j.name: j for j in _defs(tmp_path).resolve_all_job_defs() if j.name != "__ASSET_JOB"}
    # 12 h for a range of days (a year is one run), 2 h for a quarter of periods, 30 min for the report.
    expected = {
        "alpha_daily_extract": "43200",
        "beta_daily_extract": "43200",
        "weekly_metrics": "7200",
        "monthly_metrics": "7200",
        "metrics_report_job": "1800",
        "verify_store": "3600",
        "releases_daily": "3600",
        "target_status_job": "1800",
        "weekly_digest_job": "3600",
    }
    assert {name: job.tags.get("dagster/max_runtime") for name, job in jobs.items()} == expected
    for name, job in jobs.items():
        pod = json.loads(job.tags["dagster-k8s/config"])
        container = pod["container_config"]
        # The memory a 13-week backfill run needs (1.4 GB peak), not the code server's 1 Gi.
        assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}, (
            name
        )
        assert container["security_context"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }, name
        assert pod["pod_spec_config"]["security_context"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "fsGroup": 10001,
        }


def test_scheduled_runs_get_a_one_hour_max_runtime(tmp_path, fixture_source):
    defs = _defs(tmp_path)
    repo = defs.get_repository_def()
    ticks = {
        "alpha_daily_extract_schedule": dt.datetime(2027, 1, 1, 1, 30, tzinfo=UTC),
        "weekly_metrics_schedule": dt.datetime(2027, 1, 4, 4, tzinfo=UTC),
        "monthly_metrics_schedule": dt.datetime(2027, 1, 1, 5, tzinfo=UTC),
    }
    with instance_for_test() as instance:
        for name, when in ticks.items():
            with build_schedule_context(
                scheduled_execution_time=when,
                resources={"metrics_storage": MetricsStorageResource(root=str(tmp_path / "data"))},
                repository_def=repo,
                instance=instance,
            ) as context:
                requests = repo.get_schedule_def(name).evaluate_tick(context).run_requests
            assert requests, name
            for request in requests:
                assert request.tags["dagster/max_runtime"] == "3600", name


REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def _yaml(name: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / name).read_text())


def test_helm_values_give_run_pods_what_the_code_sets():
    from renku_metrics.defs.run_limits import (
        RUN_CONTAINER_SECURITY_CONTEXT,
        RUN_POD_RESOURCES,
        RUN_POD_SECURITY_CONTEXT,
    )

    values = _yaml("deploy/helm/values.yaml")
    [code] = values["dagster-user-deployments"]["deployments"]
    # Copied into every run (includeConfigInLaunchedRuns), where they win over runK8sConfig.
    assert code["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert code["resources"] == RUN_POD_RESOURCES
    run = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    assert "resources" not in run["containerConfig"]  # would lose to the copied ones anyway
    assert run["containerConfig"]["securityContext"] == RUN_CONTAINER_SECURITY_CONTEXT
    assert run["podSpecConfig"]["securityContext"] == RUN_POD_SECURITY_CONTEXT
    assert code["podSecurityContext"] == RUN_POD_SECURITY_CONTEXT


def test_the_instance_keeps_no_tick_forever_and_is_valid(monkeypatch):
    from dagster._config import process_config
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.instance.config import (
        dagster_instance_config_schema,
        get_default_tick_retention_settings,
        get_tick_retention_settings,
    )

    for name in ("HOST", "PORT", "DB", "USER", "PASSWORD"):
        monkeypatch.setenv(f"DAGSTER_PG_{name}", "5432" if name == "PORT" else "x")  # only parsed, never used
    instance = _yaml("dagster.yaml")
    result = process_config(dagster_instance_config_schema(), instance)
    assert result.success, result.errors
    assert instance["run_queue"]["dequeue_use_threads"] is True and instance["run_queue"]["dequeue_num_workers"] == 4
    helm = _yaml("deploy/helm/values.yaml")["retention"]
    for kind, name in ((InstigatorType.SCHEDULE, "schedule"), (InstigatorType.SENSOR, "sensor")):
        default = get_default_tick_retention_settings(kind)
        ours = get_tick_retention_settings(instance["retention"][name], default)
        chart = get_tick_retention_settings({"purge_after_days": helm[name]["purgeAfterDays"]}, default)
        assert ours == chart
        assert all(days > 0 for days in ours.values()), (name, ours)  # -1 would be forever


def test_the_instance_file_loads_with_threads_and_retention(tmp_path):
    """dagster.yaml as Dagster loads it (its PostgreSQL storage swapped for a local one)."""
    import yaml
    from dagster import DagsterInstance
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickStatus

    config = _yaml("dagster.yaml")
    del config["storage"]
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_coordinator.dequeue_use_threads is True
        assert instance.get_tick_retention_settings(InstigatorType.SENSOR)[TickStatus.STARTED] == 30
        assert instance.get_tick_retention_settings(InstigatorType.SCHEDULE)[TickStatus.STARTED] == 30
