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
