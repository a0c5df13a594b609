"""What every run may take: its longest runtime and, on Kubernetes, its pod's resources and
security context. One place; the jobs, schedules and the report sensor take their tags here.

Max runtime (the ``dagster/max_runtime`` tag, seconds): run monitoring fails a run that has
been running longer. It is the only guard where the run launcher cannot see a dead run
worker (Dagster's default launcher, as ``make dev`` runs it): the dead run keeps its pool
slot, and every later extract of its deployment queues behind it, until the limit. So each
job's limit follows what it needs, not the instance's 12-hour default:

* a scheduled run (one deployment-day, or the period just ended) takes seconds to
  minutes, plus the extract step's retries (about 15 minutes of backoff): 1 hour;
* a run launched by hand or by a backfill from the job's page may cover a range (a year
  of days is one extract run: hours when upstreams are slow; a quarter of periods is one
  aggregate run: about a minute at 100 million events): the job's own, larger limit.
  Backfills launched from the asset graph run outside these jobs and keep the instance's
  ``max_runtime_seconds``.

Run pods (the ``dagster-k8s/config`` tag, read by the Helm chart's K8sRunLauncher; ignored
elsewhere): the chart copies the code server's ``resources`` into every run
(``includeConfigInLaunchedRuns``), and those win over ``runLauncher...runK8sConfig``, while
the code server's pod security context is not copied at all. A job's tag sits above both,
so the run pods get the memory a backfill run needs (a 13-week aggregate run peaked at
1.4 GB) and the same non-root, no-capabilities context as the code server.
"""

from __future__ import annotations

import datetime as dt
import json

MAX_RUNTIME_TAG = "dagster/max_runtime"
K8S_CONFIG_TAG = "dagster-k8s/config"

# Longest runtime of each job's runs (launched by hand or as a backfill from the job's page).
JOB_MAX_RUNTIME = {
    "daily_extract": dt.timedelta(hours=12),
    "period_metrics": dt.timedelta(hours=2),
    "metrics_report": dt.timedelta(minutes=30),
    "verify_store": dt.timedelta(hours=1),
    # GitHub paging (and a rate-limit wait) plus one model fit per release and metric.
    "releases": dt.timedelta(hours=1),
    # Reads stored tables only: seconds.
    "target_status": dt.timedelta(minutes=30),
    # Delivery retries with backoff per channel.
    "weekly_digest": dt.timedelta(hours=1),
}
# Runs that a schedule or sensor requests: one day or one period.
SCHEDULED_MAX_RUNTIME = dt.timedelta(hours=1)

RUN_UID = 10001  # the image's user (Dockerfile), as the code server runs
RUN_POD_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
RUN_CONTAINER_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": RUN_UID,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
RUN_POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": RUN_UID, "fsGroup": RUN_UID}


def run_pod_config() -> dict:
    """The ``dagster-k8s/config`` of every run pod."""
    return {
        "container_config": {"resources": RUN_POD_RESOURCES, "security_context": RUN_CONTAINER_SECURITY_CONTEXT},
        "pod_spec_config": {"security_context": RUN_POD_SECURITY_CONTEXT},
    }


def _seconds(limit: dt.timedelta) -> str:
    return str(int(limit.total_seconds()))


def job_tags(kind: str) -> dict[str, str]:
    """Tags of a job of ``kind`` (a key of ``JOB_MAX_RUNTIME``): its max runtime and its run pods."""
    return {MAX_RUNTIME_TAG: _seconds(JOB_MAX_RUNTIME[kind]), K8S_CONFIG_TAG: json.dumps(run_pod_config())}


def scheduled_run_tags() -> dict[str, str]:
    """Tags of a run a schedule or sensor requests (they override the job's max runtime)."""
    return {MAX_RUNTIME_TAG: _seconds(SCHEDULED_MAX_RUNTIME)}
