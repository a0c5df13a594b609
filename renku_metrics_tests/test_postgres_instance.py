"""A materialization through the production instance of dagster.yaml (PostgreSQL)."""

import shutil
from pathlib import Path

import psycopg2
from dagster import AssetKey, DagsterInstance, materialize

from renku_metrics.core.config import load_config
from renku_metrics.definitions import build_defs

REPO = Path(__file__).resolve().parent.parent


def test_materialize_with_postgres_instance(tmp_path, postgres_db, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_HOST", postgres_db["host"])
    monkeypatch.setenv("DAGSTER_PG_PORT", str(postgres_db["port"]))
    monkeypatch.setenv("DAGSTER_PG_DB", postgres_db["dbname"])
    monkeypatch.setenv("DAGSTER_PG_USER", postgres_db["user"])
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", postgres_db["password"])
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    defs = build_defs(config=load_config(REPO / "deployments.yaml", env={}), storage_root=str(tmp_path / "data"))
    asset = defs.resolve_assets_def(AssetKey(["raw_events", "demo"]))
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        result = materialize([asset], partition_key="2025-03-04", instance=instance)
        assert result.success
        record = instance.get_latest_materialization_event(AssetKey(["raw_events", "demo"]))
        assert record.asset_materialization.partition == "2025-03-04"

    # The run really is in PostgreSQL.
    with psycopg2.connect(**postgres_db) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchone()[0] == 1
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (result.run_id,),
        )
        assert cur.fetchone()[0] == 1
