"""`make prod-local`: brings up the chart's topology on this machine until Ctrl-C.

PostgreSQL from RENKU_METRICS_TEST_PG_{HOST,PORT,USER,PASSWORD} (`make pg`), in
the database renku_metrics_prod_local (created when missing); S3 on a moto
standalone server started here (or $AWS_ENDPOINT_URL when set, with the usual
AWS credentials); the deployments of $RENKU_METRICS_DEPLOYMENTS or the
repository's deployments.yaml. Process logs and the instance live in
./.prod_local.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psycopg2
import requests

from renku_metrics_tests.conftest import pg_params
from renku_metrics_tests.prod_local import REPO, ProdLocal, free_port

DB = "renku_metrics_prod_local"
STORAGE_BUCKET = "renku-metrics"
LOGS_BUCKET = "dagster-logs"


def _database(params: dict) -> dict:
    admin = psycopg2.connect(**params)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{DB}"')
    admin.close()
    return {**params, "dbname": DB}


def _s3() -> tuple[str, subprocess.Popen | None]:
    if os.environ.get("AWS_ENDPOINT_URL"):
        return os.environ["AWS_ENDPOINT_URL"], None
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            requests.get(url, timeout=1)
            return url, proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto S3 server did not start")


def main() -> int:
    try:
        pg = _database(pg_params())
    except psycopg2.OperationalError as exc:
        print(f"PostgreSQL not reachable (start it with `make pg`): {exc}".splitlines()[0], file=sys.stderr)
        return 1
    endpoint, moto = _s3()
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for bucket in (STORAGE_BUCKET, LOGS_BUCKET):
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    deployments = Path(os.environ.get("RENKU_METRICS_DEPLOYMENTS") or REPO / "deployments.yaml").resolve()
    workdir = REPO / ".prod_local"
    workdir.mkdir(exist_ok=True)
    prod = ProdLocal(workdir, pg, endpoint, f"s3://{STORAGE_BUCKET}/prod", LOGS_BUCKET, deployments, secrets=None)
    try:
        with prod:
            print(f"Dagster UI: {prod.url}  (code server 127.0.0.1:{prod.code_port}, S3 {endpoint})")
            print(f"Instance and process logs: {workdir}. Ctrl-C stops everything.")
            while all(p.poll() is None for p in prod.processes.values()):
                time.sleep(2)
            dead = [name for name, p in prod.processes.items() if p.poll() is not None]
            print(f"{', '.join(dead)} stopped; see {workdir}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if moto is not None:
            moto.terminate()


if __name__ == "__main__":
    sys.exit(main())
