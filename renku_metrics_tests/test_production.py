"""Production artifacts: the instance of dagster.yaml, the Helm values saying the
same, the container image's command, retries that help, and a code location that
loads from any working directory."""

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
import yaml
from dagster import (
    Backoff,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)

from renku_metrics.core.config import load_config
from renku_metrics.defs.build import build_defs
from renku_metrics.defs.keys import raw_events_asset_key
from renku_metrics.defs.raw_events.schedules import EXTRACT_RETRY_POLICY
from renku_metrics_tests.prod_local.launcher import PID_TAG

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
        assert instance.run_coordinator.dequeue_interval_seconds == 1
    assert "killed pod is retried" not in (REPO / "dagster.yaml").read_text()


def test_helm_values_say_what_dagster_yaml_says(tmp_path):
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
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queue == {"dequeueIntervalSeconds": instance["run_queue"]["dequeue_interval_seconds"]}
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    [code] = values["dagster-user-deployments"]["deployments"]
    assert code["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert code["codeServerArgs"] == ["-m", "renku_metrics.definitions"]
    assert code["port"] == 4000
    # The additional instance config is valid for the installed Dagster: an instance loads from it.
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(extra))
    with DagsterInstance.from_config(str(tmp_path)) as loaded:
        assert loaded.run_retries_max_retries == instance["run_retries"]["max_retries"]


def test_image_command_user_and_pins():
    text = (REPO / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd == ["dagster", "code-server", "start", "-m", "renku_metrics.definitions", "-h", "0.0.0.0", "-p", "4000"]
    assert not re.search(r"^ENTRYPOINT", text, re.M)  # the chart passes the whole command as args
    assert re.search(r"^USER 10001$", text, re.M)
    assert "HEALTHCHECK" in text and "grpc-health-check" in text
    import dagster

    pins = {p["name"]: p["version"] for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}
    assert pins["dagster"] == dagster.__version__
    assert pins["dagster-k8s"] == pins["dagster-postgres"] == pins["dagster-aws"]


def test_code_location_loads_from_another_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RENKU_METRICS_DEPLOYMENTS"}
    code = (
        "from renku_metrics.definitions import defs; defs.resolve_asset_graph(); "
        "print(sorted(d.name for d in defs.schedules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "demo_daily_extract_schedule" in out.stdout
    assert "Warning" not in out.stderr, out.stderr  # no Beta, Supersession or Deprecation warnings


def test_daily_extract_retries_back_off_exponentially():
    assert EXTRACT_RETRY_POLICY.backoff == Backoff.EXPONENTIAL
    assert EXTRACT_RETRY_POLICY.max_retries >= 3 and EXTRACT_RETRY_POLICY.delay >= 30
    defs = build_defs(config=load_config(REPO / "deployments.yaml", env={}))
    assert defs.resolve_job_def("demo_daily_extract").op_retry_policy == EXTRACT_RETRY_POLICY


def test_missing_secret_is_not_retried(tmp_path, monkeypatch):
    """A deterministic failure (a secret's variable not set) fails the daily job's
    step at once, naming the variable, despite the job's retry policy."""
    path = tmp_path / "deployments.yaml"
    keycloak = {
        "url": "http://127.0.0.1:9",
        "realm": "Renku",
        "client_id": "renku-metrics",
        "client_secret_env": "KC_TEST_SECRET_NOT_SET",
    }
    path.write_text(
        yaml.safe_dump({"deployments": [{"name": "kc", "start_date": "2026-01-01", "sources": {"keycloak": keycloak}}]})
    )
    monkeypatch.delenv("KC_TEST_SECRET_NOT_SET", raising=False)
    config = load_config(path, env={})
    defs = build_defs(config=config, storage_root=str(tmp_path / "data"))
    job = defs.resolve_job_def("kc_daily_extract")
    assert job.op_retry_policy is not None
    instance = DagsterInstance.ephemeral()
    result = job.execute_in_process(partition_key="2026-01-05", instance=instance, raise_on_error=False)
    assert not result.success
    types = [e.event_type for e in result.all_events]
    assert DagsterEventType.STEP_UP_FOR_RETRY not in types
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert "KC_TEST_SECRET_NOT_SET" in str(failure.step_failure_data.user_failure_data.description)
    assert instance.get_latest_materialization_event(raw_events_asset_key("kc")) is None


@pytest.mark.parametrize("name", ["secrets.example.yaml", "configmaps.example.yaml"])
def test_example_manifests_are_what_the_values_name(name):
    docs = list(yaml.safe_load_all((REPO / "deploy/k8s" / name).read_text()))
    names = {d["metadata"]["name"] for d in docs}
    values = (REPO / "deploy/helm/values.yaml").read_text()
    for doc_name in names:
        assert doc_name in values, doc_name


# -- The chart's topology on one machine (make prod-local) ---------------------------------

WEEK = "2026-03-02"  # a Monday; the demo deployment's backfilled week


@contextmanager
def _env(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def prod(postgres_server, s3_endpoint):
    """PostgreSQL (a fresh database), moto S3, a Keycloak simulator for deployment
    ``kc`` (its secret only in the code location's environment), and the processes."""
    import psycopg2

    from renku_metrics_tests.prod_local import ProdLocal

    from .simulators.keycloak_sim import KeycloakSimulator

    # Not under pytest's numbered temporary directories: concurrent pytest sessions prune those.
    work = Path(tempfile.mkdtemp(prefix="renku_metrics_prod_local_"))
    db = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(**postgres_server)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    pg = dict(postgres_server, dbname=db)
    bucket, logs = f"metrics-{uuid.uuid4().hex[:8]}", f"logs-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for name in (bucket, logs):
        s3.create_bucket(Bucket=name)
    sim = KeycloakSimulator().start()
    sim.add_login(dt.datetime(2026, 6, 1, 9, tzinfo=dt.timezone.utc), "11111111-1111-4111-8111-111111111111")
    sim.add_login(dt.datetime(2026, 6, 2, 9, tzinfo=dt.timezone.utc), "22222222-2222-4222-8222-222222222222")
    deployments = work / "deployments.yaml"
    deployments.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "demo_a",
                        "start_date": "2026-03-01",
                        "sources": {"demo": {"seed": 3, "users": 300, "launch_date": "2025-01-01"}},
                    },
                    {  # its secret is set nowhere: only its own runs may fail
                        "name": "nosecret",
                        "start_date": "2026-06-01",
                        "sources": {
                            "keycloak": {
                                "url": sim.base_url,
                                "realm": sim.realm,
                                "client_id": sim.client_id,
                                "client_secret_env": "NOSECRET_CLIENT_SECRET",
                            }
                        },
                    },
                    {
                        "name": "kc",
                        "start_date": "2026-06-01",
                        "sources": {
                            "keycloak": {
                                "url": sim.base_url,
                                "realm": sim.realm,
                                "client_id": sim.client_id,
                                "client_secret_env": "KC_CLIENT_SECRET",
                                "timeout_seconds": 300,
                            }
                        },
                    },
                ]
            }
        )
    )
    # Test pace: run monitoring every 2 s, slots freed 2 s after a run ended.
    fast = {"run_monitoring": {"poll_interval_seconds": 2, "free_slots_after_run_end_seconds": 2}}
    topology = ProdLocal(
        work,
        pg,
        s3_endpoint,
        f"s3://{bucket}/prod",
        logs,
        deployments,
        secrets={"KC_CLIENT_SECRET": sim.client_secret},
        instance_overrides=fast,
    )
    try:
        with topology:
            yield {"prod": topology, "pg": pg, "bucket": bucket, "logs": logs, "sim": sim, "s3": s3}
    finally:
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


@contextmanager
def _instance(prod):
    with _env({k: v for k, v in prod.common.items() if k.startswith("DAGSTER_")}):
        instance = DagsterInstance.from_config(str(prod.home))
    try:
        yield instance
    finally:
        instance.dispose()


def _wait(what: str, condition, timeout: float, prod, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{prod.log(n)[-2500:]}" for n in ("daemon", "code-server"))
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{logs}")
        time.sleep(interval)


def test_prod_local_backfill_through_the_queue(prod, monkeypatch):
    from renku_metrics import read_metrics

    topology = prod["prod"]
    # The daemon and webserver hold no source secret; the code location does.
    assert "KC_CLIENT_SECRET" not in topology.common
    backfill = topology.launch_backfill(
        {
            ("raw_events", "demo_a"): (WEEK, "2026-03-08"),
            ("active_users_weekly",): (WEEK, WEEK),
            ("core_actions_weekly",): (WEEK, WEEK),
        },
        "prod-local test",
    )
    with _instance(topology) as instance:
        # A backfill's status by its documented name (the enum lives in a private module).
        finished = {"COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED"}
        status = _wait("backfill done", lambda: _backfill_status(instance, backfill, finished), 420, topology, 2)
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill}))
        assert status == "COMPLETED_SUCCESS", _failures(instance, runs)
        assert runs and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        # The raw events' week is one run (single-run backfill policy); the aggregates another.
        assert len(runs) == 2
        for run in runs:
            types = {e.dagster_event_type for e in instance.all_logs(run.run_id)}
            assert DagsterEventType.RUN_ENQUEUED in types  # through the daemon's queue
            assert run.tags.get(PID_TAG)  # in its own process, as a run pod
    # Run logs went to S3, where any webserver replica can read them.
    assert prod["s3"].list_objects_v2(Bucket=prod["logs"], Prefix="compute-logs/").get("KeyCount", 0) > 0
    monkeypatch.setenv("AWS_ENDPOINT_URL", topology.code_only["AWS_ENDPOINT_URL"])
    weekly = read_metrics("week", storage=f"s3://{prod['bucket']}/prod")
    week = weekly[weekly["period_start"].astype(str) == WEEK]
    assert set(week["deployment"]) >= {"demo_a", "all"}
    assert (week["active_users"] > 0).all() and week["users"].sum() > 0


def _failures(instance, runs) -> list[str]:
    out = []
    for run in runs:
        for event in instance.all_logs(run.run_id):
            if event.dagster_event_type in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE):
                data = event.dagster_event.event_specific_data
                error = getattr(data, "error", None)
                out.append(f"{run.run_id[:8]} {event.message} {error.message if error else ''}")
    return out


def _backfill_status(instance, backfill_id, finished):
    status = instance.get_backfill(backfill_id).status.value
    return status if status in finished else None


def _slot_holders(instance, pool):
    return {slot.run_id for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots}


def test_killed_extract_fails_frees_its_slot_and_the_next_extract_runs(prod):
    topology, sim = prod["prod"], prod["sim"]
    # The upstream answers slowly: the extract sits in its call when the worker is killed.
    sim.inject("delay", path_contains="/events", delay=90)
    first = topology.launch_job("kc_daily_extract", "2026-06-01")
    with _instance(topology) as instance:
        _wait("extract inside the upstream call", lambda: sim.in_flight > 0, 240, topology, 0.5)
        run = instance.get_run_by_id(first)
        assert run.status == DagsterRunStatus.STARTED
        assert first in _slot_holders(instance, "extract_kc")
        second = topology.launch_job("kc_daily_extract", "2026-06-02")
        os.kill(int(run.tags[PID_TAG]), signal.SIGKILL)

        # Run monitoring notices the dead worker and fails the run.
        _wait(
            "killed run FAILED",
            lambda: instance.get_run_by_id(first).status == DagsterRunStatus.FAILURE,
            120,
            topology,
        )
        failure = [e for e in instance.all_logs(first) if e.dagster_event_type == DagsterEventType.RUN_FAILURE]
        assert failure and "run worker" in (failure[-1].message or "")
        # Its pool slot is freed, and the next extract of the deployment runs.
        _wait("slot freed", lambda: first not in _slot_holders(instance, "extract_kc"), 120, topology)
        _wait(
            "next extract SUCCESS",
            lambda: instance.get_run_by_id(second).status == DagsterRunStatus.SUCCESS,
            240,
            topology,
        )
        assert "2026-06-02" in instance.get_materialized_partitions(raw_events_asset_key("kc"))
        # The crashed run is retried (a dead worker is not a deterministic failure) and completes.
        retried = _wait(
            "retry of the killed run SUCCESS",
            lambda: [
                r
                for r in instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": first}))
                if r.status == DagsterRunStatus.SUCCESS
            ],
            240,
            topology,
        )
        assert retried[0].tags["dagster/partition"] == "2026-06-01"


def test_prod_local_missing_secret_fails_only_its_deployment(prod):
    """The code location loaded although one deployment's secret is set nowhere (the
    other tests ran through it); that deployment's run fails at once, naming the
    variable, and is not retried."""
    topology = prod["prod"]
    assert "NOSECRET_CLIENT_SECRET" not in {**topology.common, **topology.code_only}
    run_id = topology.launch_job("nosecret_daily_extract", "2026-06-01")
    with _instance(topology) as instance:
        _wait(
            "run FAILED",
            lambda: instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE,
            240,
            topology,
        )
        types = [e.dagster_event_type for e in instance.all_logs(run_id)]
        assert DagsterEventType.STEP_UP_FOR_RETRY not in types
        assert any("NOSECRET_CLIENT_SECRET" in text for text in _failures(instance, [instance.get_run_by_id(run_id)]))
        assert not instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": run_id}))
