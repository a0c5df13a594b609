"""The Helm chart's topology on one machine (`make prod-local` and its test).

What the chart runs as pods, started here as processes wired the same way:

- the code location's gRPC server: the container image's own command (the
  Dockerfile's CMD, on 127.0.0.1 and a free port), in a directory that is not the
  repository, with the deployments file, the storage root and the sources' secrets
  in its environment (the chart: dagster-user-deployments with envSecrets);
- ``dagster-webserver`` and ``dagster-daemon`` reading ``deploy/workspace.grpc.yaml``,
  which points at that server; neither holds a source secret;
- the instance: the repository's ``dagster.yaml`` (PostgreSQL, queue, pools, run
  monitoring, run retries) plus what the chart adds: run logs in S3
  (S3ComputeLogManager) and one process per run (the stand-in of the
  K8sRunLauncher in ``launcher.py``), which gets the code location's environment
  (includeConfigInLaunchedRuns);
- S3 is whatever ``s3_endpoint`` points at (moto's standalone server here).

Without S3 (``s3_endpoint`` and ``logs_bucket`` None), the storage root is a
local directory and run logs stay in the instance's directory (Dagster's local
compute log manager): the same processes, for measuring them on one machine
(``renku_metrics_tests/bench_backfill.py``) without an S3 stand-in taking its
share of the CPU.

Readiness is checked the way the chart's probes do: ``dagster api
grpc-health-check`` for the code server, ``/server_info`` for the webserver,
``dagster-daemon liveness-check`` for the daemon.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
WORKSPACE = REPO / "deploy" / "workspace.grpc.yaml"
BIN = Path(sys.executable).parent
LOCATION = "renku_metrics"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_command(port: int) -> list[str]:
    """The Dockerfile's CMD, listening on 127.0.0.1:``port`` instead of 0.0.0.0:4000."""
    match = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"{DOCKERFILE}: no CMD [...] line")
    command = json.loads(match.group(1))
    swap = {"0.0.0.0": "127.0.0.1", "4000": str(port)}
    return [str(BIN / command[0]), *(swap.get(arg, arg) for arg in command[1:])]


def instance_yaml(
    pg: Mapping[str, Any],
    s3_endpoint: str | None,
    logs_bucket: str | None,
    run_env: Mapping[str, str],
    overrides: Mapping,
) -> dict:
    """The repository's dagster.yaml plus the chart's additions (see the module docstring).
    Without ``logs_bucket``, run logs stay local (Dagster's default compute log manager)."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["run_launcher"] = {
        "module": "renku_metrics_tests.prod_local.launcher",
        "class": "ProcessRunLauncher",
        "config": {"env_vars": [f"{k}={v}" for k, v in sorted(run_env.items())]},
    }
    if logs_bucket:
        config["compute_logs"] = {
            "module": "dagster_aws.s3.compute_log_manager",
            "class": "S3ComputeLogManager",
            "config": {
                "bucket": logs_bucket,
                "prefix": "compute-logs",
                "endpoint_url": s3_endpoint,
                "use_ssl": False,
            },
        }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    return config


class ProdLocal:
    """Starts the processes; ``with ProdLocal(...) as prod:`` stops them at the end."""

    def __init__(
        self,
        workdir: Path,
        pg: Mapping[str, Any],
        s3_endpoint: str | None,
        storage: str,
        logs_bucket: str | None,
        deployments_file: Path,
        secrets: Mapping[str, str] | None = None,
        instance_overrides: Mapping[str, Mapping] | None = None,
        ports: tuple[int, int] | None = None,
    ) -> None:
        """``storage``: ``s3://bucket/prefix`` or a local directory; ``ports``: the code
        server's and the webserver's (default: free ones)."""
        self.workdir = Path(workdir)
        self.home = self.workdir / "dagster_home"
        self.code_port, self.web_port = ports or (free_port(), free_port())
        self.url = f"http://127.0.0.1:{self.web_port}"
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DAGSTER_", "RENKU_METRICS_", "AWS_")) and k != "PYTHONPATH"
        }
        self.common = {
            **base,
            # As in the image: dagster's commands on the PATH (run workers start `dagster api execute_run`).
            "PATH": os.pathsep.join([str(BIN), base.get("PATH", "")]),
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_PG_HOST": str(pg["host"]),
            "DAGSTER_PG_PORT": str(pg["port"]),
            "DAGSTER_PG_DB": str(pg["dbname"]),
            "DAGSTER_PG_USER": str(pg["user"]),
            "DAGSTER_PG_PASSWORD": str(pg["password"]),
            # S3 credentials: the chart's renku-metrics-s3 Secret (run logs and metrics).
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        }
        # The code location's own settings and secrets (ConfigMap + per-deployment Secrets).
        self.code_only = {
            "RENKU_METRICS_DEPLOYMENTS": str(deployments_file),
            "RENKU_METRICS_STORAGE": storage,
            **({"AWS_ENDPOINT_URL": s3_endpoint} if s3_endpoint else {}),
            **(secrets or {}),
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.home.mkdir(parents=True, exist_ok=True)
        config = instance_yaml(pg, s3_endpoint, logs_bucket, self.code_only, instance_overrides or {})
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # -- processes ---------------------------------------------------------------

    def _start(self, name: str, command: list[str], env: Mapping[str, str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process's life
        self.processes[name] = subprocess.Popen(
            command, cwd=self.workdir, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
            time.sleep(1)

    def start(self, timeout: float = 240) -> ProdLocal:
        self._start("code-server", image_command(self.code_port), {**self.common, **self.code_only})
        self._wait("code server", self.code_server_ready, timeout)
        tiers = {
            **self.common,
            "RENKU_METRICS_CODE_SERVER_HOST": "127.0.0.1",
            "RENKU_METRICS_CODE_SERVER_PORT": str(self.code_port),
        }
        web = [str(BIN / "dagster-webserver"), "-w", str(WORKSPACE), "-h", "127.0.0.1", "-p", str(self.web_port)]
        self._start("webserver", web, tiers)
        self._start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(WORKSPACE)], tiers)
        self._wait("webserver", self.webserver_ready, timeout)
        self._wait("daemon", self.daemon_ready, timeout)
        return self

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def __enter__(self) -> ProdLocal:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- probes (as the chart's) -------------------------------------------------------

    def code_server_ready(self) -> bool:
        probe = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(self.code_port)]
        return subprocess.run(probe, capture_output=True, env=self.common).returncode == 0

    def webserver_ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/server_info", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def daemon_ready(self) -> bool:
        probe = [str(BIN / "dagster-daemon"), "liveness-check"]
        return subprocess.run(probe, capture_output=True, env=self.common, cwd=self.workdir).returncode == 0

    # -- the webserver's GraphQL API ---------------------------------------------------

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"GraphQL HTTP {response.status_code}: {response.text[:2000]}")
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def launch_backfill(self, partitions_by_asset: Mapping[tuple[str, ...], tuple[str, str]], title: str) -> str:
        """An asset backfill (as the UI's *Materialize* over ranges): {asset key path: (first, last)}."""
        params = {
            "title": title,
            "partitionsByAssets": [
                {"assetKey": {"path": list(key)}, "partitions": {"range": {"start": first, "end": last}}}
                for key, (first, last) in partitions_by_asset.items()
            ],
        }
        data = self.graphql(
            """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
                 __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack } } }""",
            {"p": params},
        )["launchPartitionBackfill"]
        if data["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"backfill not launched: {data}")
        return data["backfillId"]

    def launch_backfill_as_ui(
        self, asset_keys: list[tuple[str, ...]], partitions: list[str], job: str | None = None
    ) -> str:
        """A backfill of ``partitions`` of ``asset_keys`` sent as the UI's *Materialize* dialog
        sends it (Dagster 1.13, LaunchAssetChoosePartitionsDialog): the selected partition keys
        and the tag ``dagster/from_ui``. With ``job`` (*Materialize all* on that job's page) the
        job's partition set is named too, which makes it a job backfill; without, as from the
        asset graph or catalog, an asset backfill."""
        params: dict[str, Any] = {
            "tags": [{"key": "dagster/from_ui", "value": "true"}],
            "assetSelection": [{"path": list(key)} for key in asset_keys],
            "partitionNames": list(partitions),
            "fromFailure": False,
        }
        if job:
            params["selector"] = {
                "partitionSetName": f"{job}_partition_set",
                "repositorySelector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"},
            }
        data = self.graphql(
            """mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
                 launchPartitionBackfill(backfillParams: $backfillParams) {
                   __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }""",
            {"backfillParams": params},
        )["launchPartitionBackfill"]
        if data["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"backfill not launched: {data}")
        return data["backfillId"]

    def launch_job(self, job: str, partition: str) -> str:
        """One run of ``job`` for ``partition``, through the queue (as the UI's Launch run)."""
        params = {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": job},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        }
        data = self.graphql(
            """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
                 __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message stack }
                 ... on RunConfigValidationInvalid { errors { message } } } }""",
            {"p": params},
        )["launchRun"]
        if data["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"run not launched: {data}")
        return data["run"]["runId"]
