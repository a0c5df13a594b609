"""Shared fixtures: a real S3 endpoint (moto's standalone server over HTTP) and a
real PostgreSQL server.

PostgreSQL connection comes from RENKU_METRICS_TEST_PG_{HOST,PORT,USER,PASSWORD,DB}
(defaults match `make pg`). When it cannot be reached, tests that need it fail
with a message saying how to start it; they never skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import boto3
import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on 127.0.0.1, with fake credentials in the environment."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            requests.get(url, timeout=5)
            break
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow on a busy machine
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto S3 server did not start") from None
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    yield url
    proc.terminate()
    proc.wait(10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the moto server; returns its name."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def pg_params() -> dict:
    env = os.environ
    return {
        "host": env.get("RENKU_METRICS_TEST_PG_HOST", "127.0.0.1"),
        "port": int(env.get("RENKU_METRICS_TEST_PG_PORT", "5432")),
        "user": env.get("RENKU_METRICS_TEST_PG_USER", "renku_metrics"),
        "password": env.get("RENKU_METRICS_TEST_PG_PASSWORD", "renku_metrics"),
        "dbname": env.get("RENKU_METRICS_TEST_PG_DB", "renku_metrics_test"),
    }


@pytest.fixture(scope="session")
def postgres_server():
    """Connection parameters of a reachable PostgreSQL server (fails if there is none)."""
    import psycopg2

    params = pg_params()
    try:
        psycopg2.connect(connect_timeout=5, **params).close()
    except psycopg2.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL not reachable at {params['host']}:{params['port']} as {params['user']} "
            f"(start it with `make pg`): {exc}",
            pytrace=False,
        )
    return params


@pytest.fixture
def postgres_db(postgres_server):
    """A fresh, empty database for one test; returns its connection parameters."""
    import psycopg2

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(**postgres_server)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    params = dict(postgres_server, dbname=name)
    yield params
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def fixture_source(monkeypatch):
    """Registers the hand-built-records source type ``fixture`` for one test."""
    from renku_metrics.core import sources

    monkeypatch.setitem(sources.SOURCE_MODULES, "fixture", "renku_metrics_tests.fixture_source")
    return "fixture"
