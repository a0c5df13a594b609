#!/usr/bin/env bash
# What `make test` needs beyond Python: PostgreSQL (the Dagster instance's tests) and
# Chromium (the browser test drives the Dagster UI with Playwright and Debian's
# Chromium; Playwright's own browser download needs the open internet). As root on
# Debian/Ubuntu it installs what is missing; anywhere else it stops at once with one
# line saying what to install. A reachable PostgreSQL server (RENKU_METRICS_TEST_PG_HOST,
# _PORT) counts as installed.
set -euo pipefail

pg_host=${RENKU_METRICS_TEST_PG_HOST:-127.0.0.1}
pg_port=${RENKU_METRICS_TEST_PG_PORT:-5432}
missing=()
if ! command -v pg_ctlcluster >/dev/null 2>&1 \
   && ! { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$pg_host" -p "$pg_port"; }; then
  missing+=(postgresql)
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  missing+=(chromium)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "make test needs ${missing[*]}: install it (Debian/Ubuntu: sudo apt-get install -y ${missing[*]}; or point RENKU_METRICS_TEST_PG_HOST at a PostgreSQL server) and run make test again" >&2
exit 1
