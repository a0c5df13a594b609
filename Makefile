# Two commands do all set-up on a fresh machine:
#   make demo   install, then materialize the demo deployments' last 12 complete weeks into ./data
#   make test   install; install PostgreSQL and Chromium when missing; start PostgreSQL; run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The local, embedded Dagster instance (SQLite under .dagster_home). The production
# instance is ./dagster.yaml (PostgreSQL), which needs DAGSTER_PG_* variables.
DAGSTER_HOME_LOCAL := $(CURDIR)/.dagster_home
PG_USER ?= renku_metrics
PG_PASSWORD ?= renku_metrics
PG_DB ?= renku_metrics_test

.PHONY: install lock system-deps demo dev test lint pg benchmark benchmark-extract benchmark-backfill clean prod-local

# Everything any command here installs is pinned, with hashes, by uv.lock (generated
# from pyproject.toml by `make lock`). `uv sync --locked` fails when pyproject.toml
# changed without the lock being regenerated, and removes whatever the lock does not
# list, so .venv is exactly the lock. Python itself: .python-version.
$(VENV)/.installed: pyproject.toml uv.lock .python-version
	@want=$$(cat .python-version); have=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  [ "$$want" = "$$have" ] || { echo "make install: Python $$want is needed (.python-version); $(PYTHON) is $$have: run make PYTHON=python$$want ..." >&2; exit 1; }
	@echo "make install: the locked environment (uv.lock) into $(VENV) ..."
	@[ -x $(VENV)/bin/uv ] || $(PYTHON) deploy/local/bootstrap_uv.py $(VENV)
	@UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv sync --locked --all-extras --quiet
	@touch $@
	@echo "make install: done ($$($(VENV)/bin/uv pip list --python $(PY) 2>/dev/null | tail -n +3 | wc -l) packages, as uv.lock pins them)"

install: $(VENV)/.installed

# Upgrading a dependency on purpose: `make lock` (or `make lock UPGRADE="--upgrade-package duckdb"`),
# then `make test`, then commit pyproject.toml and uv.lock together.
lock: install
	UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv lock $(UPGRADE)

# PostgreSQL and Chromium: installed when missing (as root on Debian/Ubuntu), or one
# line saying what to install, before any test runs.
system-deps:
	@bash deploy/local/system_deps.sh

$(DAGSTER_HOME_LOCAL)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME_LOCAL)
	printf 'telemetry:\n  enabled: false\n' > $@

demo: install $(DAGSTER_HOME_LOCAL)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME_LOCAL) $(PY) -m renku_metrics.defs.demo_run

# `make dev PORT=3001 HOST=0.0.0.0`: several people can share a machine.
PORT ?= 3000
HOST ?= 127.0.0.1
dev: install $(DAGSTER_HOME_LOCAL)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME_LOCAL) $(VENV)/bin/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

# Starts the machine's PostgreSQL cluster (Debian layout) and creates the test role
# and database. Tests that need PostgreSQL fail, never skip, when it is missing.
pg:
	@if command -v pg_lsclusters >/dev/null 2>&1; then \
	  if ! pg_lsclusters -h | grep -q .; then pg_createcluster $$(ls /usr/lib/postgresql | sort -n | tail -1) main >/dev/null; fi; \
	  ver=$$(pg_lsclusters -h | awk 'NR==1{print $$1}'); cl=$$(pg_lsclusters -h | awk 'NR==1{print $$2}'); \
	  pg_ctlcluster $$ver $$cl start 2>/dev/null || true; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 && break; sleep 1; done; \
	  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='$(PG_USER)'\"" | grep -q 1 || \
	    su postgres -c "psql -qc \"CREATE ROLE $(PG_USER) LOGIN SUPERUSER PASSWORD '$(PG_PASSWORD)'\""; \
	  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='$(PG_DB)'\"" | grep -q 1 || \
	    su postgres -c "createdb -O $(PG_USER) $(PG_DB)"; \
	else echo "make pg: no Debian PostgreSQL cluster here; the tests use RENKU_METRICS_TEST_PG_HOST (default 127.0.0.1) as it is"; fi

# Lint and format are part of the tests: a tree ruff would change fails them.
lint: install
	$(VENV)/bin/ruff check renku_metrics renku_metrics_tests
	$(VENV)/bin/ruff format --check renku_metrics renku_metrics_tests

test: system-deps install lint pg
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The Helm chart's topology on this machine (docs/production.md): PostgreSQL
# (`make pg`), S3 (moto), the code location's gRPC server run with the image's own
# command, dagster-webserver and dagster-daemon reading deploy/workspace.grpc.yaml.
# Prints the UI's address; Ctrl-C stops everything.
prod-local: install pg
	$(PY) -m renku_metrics_tests.prod_local

# Synthetic history of EVENTS events in a temporary directory; prints times and peak RSS.
EVENTS ?= 2000000
benchmark: install
	$(PY) -m renku_metrics_tests.benchmarks --events $(EVENTS)

# The raw events asset on a history that `make benchmark BENCH_DATA=<dir>` kept there (only
# read): one daily run after 3 years and after 1 year of history, and a 30-day range run,
# with times and peak RSS.
benchmark-extract: install
	@test -n "$(BENCH_DATA)" || { echo "usage: make benchmark-extract BENCH_DATA=<dir of a generated history>"; exit 2; }
	$(PY) -m renku_metrics_tests.bench_extract --root $(BENCH_DATA)

# A 3-year backfill of the weekly and monthly assets (156 + 36 runs) launched as the
# UI's Materialize dialog does, run by `make prod-local`'s processes in a fresh
# PostgreSQL database (BENCH_PG_DB, dropped afterwards) over the history in BENCH_DATA
# (a local storage root; when it holds no raw events, EVENTS events are generated
# there first); prints the wall time and Dagster's per-run overhead.
BENCH_PG_DB ?= renku_metrics_bench
benchmark-backfill: install pg
	@test -n "$(BENCH_DATA)" || { echo "usage: make benchmark-backfill BENCH_DATA=<dir> [EVENTS=...]" >&2; exit 2; }
	$(PY) -m renku_metrics_tests.bench_backfill --root $(BENCH_DATA) --events $(EVENTS) --pg-db $(BENCH_PG_DB) --fresh

clean:
	rm -rf data .dagster_home .prod_local
