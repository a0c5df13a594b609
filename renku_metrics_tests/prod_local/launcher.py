"""The stand-in of the chart's ``K8sRunLauncher`` in ``make prod-local``: every run
in its own ``dagster api execute_run`` process, as the K8sRunLauncher gives every
run its own pod (Job) running that command in the code location's image.

Like the K8sRunLauncher (and unlike Dagster's default launcher, which starts run
workers inside the code server and cannot tell whether they still live), it
answers the run monitoring daemon's question "is this run's worker alive?", so a
killed run worker is marked FAILED and its pool slots are freed.

``env_vars`` (``NAME=value``) are added to the worker's environment, as
``includeConfigInLaunchedRuns`` gives run pods the code server's environment;
the daemon that launches runs does not hold the sources' secrets itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import DagsterRun, Field
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData

PID_TAG = "renku_metrics/run_worker_pid"
HOST_TAG = "renku_metrics/run_worker_host"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has ended
    except ChildProcessError:
        pass
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Starts each run as a ``dagster api execute_run`` process and reports its health."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, env_vars: list[str] | None = None) -> None:
        self._inst_data = inst_data
        self._env = dict(item.split("=", 1) for item in env_vars or [])
        self._workers: dict[str, subprocess.Popen] = {}
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {"env_vars": Field([str], is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise ValueError(f"run {run.run_id} has no code origin: it cannot be started in its own process")
        self._reap()
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref(), set_exit_code_on_failure=True
        ).get_command_args()
        worker = subprocess.Popen(
            list(args), start_new_session=True, stdin=subprocess.DEVNULL, env={**os.environ, **self._env}
        )
        self._workers[run.run_id] = worker
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(worker.pid), HOST_TAG: socket.gethostname()})
        self._instance.report_engine_event(
            f"Started run worker process {worker.pid} on {socket.gethostname()}", run, cls=self.__class__
        )

    def _reap(self) -> None:
        """Collects the exit status of run workers that ended (else each stays a zombie process
        for the daemon's lifetime), and forgets those whose run is finished. A worker that ended
        while its run did not is kept: the health check reports how it ended."""
        for run_id, worker in list(self._workers.items()):
            if worker.poll() is None:
                continue
            run = self._instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                self._workers.pop(run_id, None)

    def _pid(self, run: DagsterRun) -> int | None:
        pid = run.tags.get(PID_TAG)
        if not pid or run.tags.get(HOST_TAG) != socket.gethostname():
            return None
        return int(pid)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = self._workers.get(run.run_id)
        if worker is not None:
            code = worker.poll()
            if code is None:
                return CheckRunHealthResult(WorkerStatus.RUNNING)
            self._workers.pop(run.run_id, None)
            if code == 0:
                return CheckRunHealthResult(WorkerStatus.SUCCESS)
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {worker.pid} ended: {how}")
        pid = self._pid(run)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "run worker process not known on this host")
        if _alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND, f"run worker process {pid} is gone")

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        pid = self._pid(run)
        if pid is None or not _alive(pid):
            return False
        self._instance.report_run_canceling(run)
        try:
            os.kill(pid, signal.SIGTERM)  # the worker handles it: the run is marked CANCELED
        except ProcessLookupError:
            return False
        return True
