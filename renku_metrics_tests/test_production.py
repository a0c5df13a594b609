"""Production artifacts: the instance of dagster.yaml, the Helm values saying the
same, the container image's command, retries that help, and a code location that
loads from any working directory."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, Backoff, DagsterEventType, DagsterInstance, materialize

from renku_metrics.core.config import load_config
from renku_metrics.defs.raw_events.assets import EXTRACT_RETRY_POLICY, build_raw_events_asset
from renku_metrics.defs.resources import MetricsStorageResource

REPO = Path(__file__).resolve().parent.parent


def _load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def test_dagster_yaml_instance_heals(tmp_path, postgres_db, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for key, value in {
        "DAGSTER_PG_HOST": postgres_db["host"],
        "DAGSTER_PG_PORT": str(postgres_db["port"]),
        "DAGSTER_PG_DB": postgres_db["dbname"],
        "DAGSTER_PG_USER": postgres_db["user"],
        "DAGSTER_PG_PASSWORD": postgres_db["password"],
        "DAGSTER_HOME": str(home),
    }.items():
        monkeypatch.setenv(key, value)
    with DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled
        settings = instance.run_monitoring_settings
        assert settings["max_runtime_seconds"] == 43200
        assert settings["free_slots_after_run_end_seconds"] > 0
        assert settings["start_timeout_seconds"] > 0
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        # Only crashed run workers are retried as whole runs; asset failures retry inside the step.
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    assert "killed pod is retried" not in (REPO / "dagster.yaml").read_text()


def test_helm_values_say_what_dagster_yaml_says():
    values = _load_yaml(REPO / "deploy/helm/values.yaml")
    instance = _load_yaml(REPO / "dagster.yaml")
    extra = values["additionalInstanceConfig"]
    assert extra["run_monitoring"] == instance["run_monitoring"]
    assert extra["run_retries"] == instance["run_retries"]
    # The chart's own keys stay off, so dagster.yaml gets each section once.
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is False
    assert values["dagsterDaemon"]["runRetries"]["enabled"] is False
    conc = values["concurrency"]
    assert conc["enabled"] and conc["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert conc["runs"]["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert [dict(t) for t in conc["runs"]["tagConcurrencyLimits"]] == instance["concurrency"]["runs"][
        "tag_concurrency_limits"
    ]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    [code] = values["dagster-user-deployments"]["deployments"]
    assert code["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert code["codeServerArgs"] == ["-m", "renku_metrics.definitions"]
    assert code["port"] == 4000
    # The additional instance config is valid for the installed Dagster.
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config_schema

    result = process_config(dagster_instance_config_schema(), extra)
    assert result.success, result.errors


def test_image_command_user_and_pins():
    text = (REPO / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd == ["dagster", "code-server", "start", "-m", "renku_metrics.definitions", "-h", "0.0.0.0", "-p", "4000"]
    assert not re.search(r"^ENTRYPOINT", text, re.M)  # the chart passes the whole command as args
    assert re.search(r"^USER 10001$", text, re.M)
    assert "HEALTHCHECK" in text and "grpc-health-check" in text
    import dagster

    pins = dict(line.split("==", 1) for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
    assert pins["dagster"] == dagster.__version__
    assert pins["dagster-k8s"] == pins["dagster-postgres"] == pins["dagster-aws"]


def test_code_location_loads_from_another_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RENKU_METRICS_DEPLOYMENTS"}
    code = "from renku_metrics.definitions import defs; print(sorted(d.name for d in defs.schedules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "demo_daily_extract_schedule" in out.stdout
    assert "Supersession" not in out.stderr and "DeprecationWarning" not in out.stderr


def test_extract_retries_back_off_exponentially():
    assert EXTRACT_RETRY_POLICY.backoff == Backoff.EXPONENTIAL
    assert EXTRACT_RETRY_POLICY.max_retries >= 3 and EXTRACT_RETRY_POLICY.delay >= 30
    config = load_config(REPO / "deployments.yaml", env={})
    asset = build_raw_events_asset(config.deployment("demo"))
    assert asset.op.retry_policy == EXTRACT_RETRY_POLICY


def test_missing_secret_is_not_retried(tmp_path, monkeypatch):
    """A deterministic failure (a secret that is not set) fails the step at once,
    naming the variable, with no retries."""
    path = tmp_path / "deployments.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "kc",
                        "start_date": "2026-01-01",
                        "sources": {
                            "keycloak": {
                                "url": "http://127.0.0.1:9",
                                "realm": "Renku",
                                "client_id": "renku-metrics",
                                "client_secret_env": "KC_TEST_SECRET_NOT_SET",
                            }
                        },
                    }
                ]
            }
        )
    )
    monkeypatch.delenv("KC_TEST_SECRET_NOT_SET", raising=False)
    config = load_config(path, env={}, check_secrets=False)
    asset = build_raw_events_asset(config.deployment("kc"))
    instance = DagsterInstance.ephemeral()
    result = materialize(
        [asset],
        partition_key="2026-01-05",
        instance=instance,
        resources={"metrics_storage": MetricsStorageResource(root=str(tmp_path / "data"))},
        raise_on_error=False,
    )
    assert not result.success
    types = [e.event_type for e in result.all_events]
    assert DagsterEventType.STEP_UP_FOR_RETRY not in types
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert "KC_TEST_SECRET_NOT_SET" in failure.step_failure_data.error.message
    assert instance.get_latest_materialization_event(AssetKey(["kc", "raw_events"])) is None


@pytest.mark.parametrize("name", ["secrets.example.yaml", "configmaps.example.yaml"])
def test_example_manifests_are_what_the_values_name(name):
    docs = list(yaml.safe_load_all((REPO / "deploy/k8s" / name).read_text()))
    names = {d["metadata"]["name"] for d in docs}
    values = (REPO / "deploy/helm/values.yaml").read_text()
    for doc_name in names:
        assert doc_name in values, doc_name
