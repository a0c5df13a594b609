"""A Dagster instance on a test PostgreSQL database (runs, event logs, schedules)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import DagsterInstance, instance_for_test


@contextmanager
def postgres_instance(params: dict) -> Iterator[DagsterInstance]:
    """``params``: connection parameters as given by the ``postgres_db`` fixture."""
    overrides = {
        "storage": {
            "postgres": {
                "postgres_db": {
                    "hostname": params["host"],
                    "port": params["port"],
                    "db_name": params["dbname"],
                    "username": params["user"],
                    "password": params["password"],
                    "scheme": "postgresql+psycopg2",
                }
            }
        },
        "telemetry": {"enabled": False},
    }
    with instance_for_test(overrides=overrides) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        yield instance
