# User-code image of renku-metrics for Dagster's Helm chart: the code server of
# the code location (dagster-user-deployments) and every run pod launched by the
# K8sRunLauncher (which starts `dagster api execute_run` in this same image).
#
#   docker build -t registry.example.org/renku-metrics:$(git rev-parse --short HEAD) .
#
# Dependencies are pinned, with hashes, by uv.lock: the same lock `make install` and CI
# install from (regenerate it with `make lock`; see docs/development.md). The base
# image's Python is the one .python-version pins (a test checks they agree).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    RENKU_METRICS_DEPLOYMENTS=/app/deployments.yaml \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Pinned dependencies first: this layer is rebuilt only when the lock changes. The
# image holds the runtime and the k8s extra (run pods), not the test tools.
COPY .python-version pyproject.toml uv.lock ./
COPY deploy/local/bootstrap_uv.py ./deploy/local/
RUN python deploy/local/bootstrap_uv.py /opt/uv \
    && /opt/uv/bin/uv sync --locked --no-install-project --no-default-groups --extra k8s --no-cache

COPY README.md deployments.yaml demo_releases.yaml ./
COPY renku_metrics ./renku_metrics
RUN /opt/uv/bin/uv sync --locked --no-editable --no-default-groups --extra k8s --no-cache \
    && rm -rf /opt/uv \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin renku-metrics \
    && mkdir -p "$DAGSTER_HOME" \
    && chown renku-metrics "$DAGSTER_HOME"

# Never root. (The chart mounts dagster.yaml into $DAGSTER_HOME at run time.)
USER 10001

EXPOSE 4000

# The code server answers gRPC pings while it serves the definitions.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]

# The code server. No ENTRYPOINT: the chart replaces the arguments with the same
# command built from codeServerArgs, and run pods with `dagster api execute_run`.
# `make prod-local` runs exactly this command.
CMD ["dagster", "code-server", "start", "-m", "renku_metrics.definitions", "-h", "0.0.0.0", "-p", "4000"]
