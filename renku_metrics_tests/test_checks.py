"""Each check fails on data built to break it, and a metric can be added through the catalog alone."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from dagster import DagsterInstance

from renku_metrics.core.catalog import CATALOG_FILE, load_catalog
from renku_metrics.core.events import EVENT_SCHEMA, pseudonymize_user
from renku_metrics.core.raw_checks import count_violations
from renku_metrics.core.readers import read_metrics
from renku_metrics.core.storage import LocalStorage
from renku_metrics.definitions import build_defs
from renku_metrics.defs.aggregates.checks import check_core
from renku_metrics.defs.demo_run import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from .helpers import ev, write_config

UTC = dt.timezone.utc
USER = pseudonymize_user("u1")


def day_table(rows):
    base = {
        "event_id": "e1",
        "deployment": "alpha",
        "occurred_at": dt.datetime(2025, 3, 4, 12, tzinfo=UTC),
        "user_id": USER,
        "action": "login",
        "project_id": None,
        "project_visibility": None,
        "source": "test",
    }
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=EVENT_SCHEMA)


@pytest.mark.parametrize(
    "rows, broken",
    [
        ([{}, {"event_id": "e2", "user_id": "not-a-key"}], {"user_ids_present"}),
        ([{}, {"event_id": "e2", "user_id": "alice@example.org"}], {"user_ids_present", "no_personal_data"}),
        ([{}, {"event_id": "e2", "occurred_at": dt.datetime(2025, 3, 5, 0, 0, tzinfo=UTC)}], {"timestamps_within_day"}),
        (
            [{}, {"event_id": "e2", "occurred_at": dt.datetime(2025, 3, 3, 23, 59, 59, tzinfo=UTC)}],
            {"timestamps_within_day"},
        ),
        ([{}, {}], {"unique_event_ids"}),
        ([{}, {"event_id": "e2", "project_id": "alice@example.org"}], {"no_personal_data"}),
        ([{}, {"event_id": "e2", "project_id": "192.168.10.2"}], {"no_personal_data"}),
        ([{}, {"event_id": "e2", "source": "2001:db8::1"}], {"no_personal_data"}),
    ],
)
def test_raw_event_checks_catch_broken_days(tmp_path, rows, broken):
    storage = LocalStorage(tmp_path)
    key = "raw_events/deployment=alpha/date=2025-03-04/events.parquet"
    storage.write_parquet(key, day_table([{}]))
    assert all(v == 0 for v in count_violations(storage, [key]).values())
    storage.write_parquet(key, day_table(rows))
    violations = count_violations(storage, [key])
    assert {name for name, v in violations.items() if v} == broken


def aggregate_rows(**changes):
    rows = []
    for deployment in ("alpha", "all"):
        rows.append(
            {
                "deployment": deployment,
                "period_start": dt.date(2025, 3, 3),
                "period_end": dt.date(2025, 3, 10),
                "metric": "commit",
                "users": 2,
                "active_users": 4,
                "pct": 50.0,
                "complete": True,
                "coverage_note": "",
            }
        )
    frame = pd.DataFrame(rows)
    for column, value in changes.items():
        frame.loc[0, column] = value
    return frame


@pytest.fixture
def config(tmp_path, fixture_source):
    return write_config(
        tmp_path,
        {"alpha": {"start_date": "2025-03-01", "events": []}, "beta": {"start_date": "2025-03-01", "events": []}},
    )


def test_aggregate_checks_pass_on_good_rows(config):
    frame = pd.concat([aggregate_rows(), aggregate_rows(deployment="beta").iloc[[0]]], ignore_index=True)
    results = check_core(frame, config)
    assert all(passed for passed, _ in results.values()), results


@pytest.mark.parametrize(
    "changes, broken",
    [
        ({"users": 5}, "users_within_active_users"),
        ({"pct": 130.0}, "pct_within_0_100"),
        ({"pct": float("nan")}, "pct_within_0_100"),
        ({"deployment": "all"}, "one_row_per_key"),
    ],
)
def test_aggregate_checks_fail_on_broken_rows(config, changes, broken):
    frame = pd.concat([aggregate_rows(**changes), aggregate_rows(deployment="beta").iloc[[0]]], ignore_index=True)
    passed, meta = check_core(frame, config)[broken]
    assert not passed


def test_missing_deployment_fails_check(config):
    passed, meta = check_core(aggregate_rows(), config)["deployments_present"]
    assert not passed
    assert "beta" in meta["missing"].value


def test_metric_added_through_catalog_alone(tmp_path, fixture_source):
    text = (
        CATALOG_FILE.read_text()
        + """
  - id: dataset_or_workflow
    title: Users who create a dataset or run a workflow
    description: Distinct users who did either in the period.
    actions: [create_dataset, run_workflow]
    owner: renku-product
    status: experimental
    sources:
      renku1: Renku CLI and web UI commits.
    known_gaps:
      - Anything never pushed.
"""
    )
    path = Path(tmp_path) / "catalog.yaml"
    path.write_text(text)
    catalog = load_catalog(path)
    events = [
        ev("2025-03-04T10:00:00+00:00", "a", "create_dataset"),
        ev("2025-03-04T11:00:00+00:00", "b", "run_workflow"),
        ev("2025-03-04T12:00:00+00:00", "a", "run_workflow"),
        ev("2025-03-04T12:00:00+00:00", "c", "login"),
    ]
    config = write_config(tmp_path, {"alpha": {"start_date": "2025-03-03", "events": events}})
    root = str(tmp_path / "data")
    defs = build_defs(config=config, catalog=catalog, storage_root=root)
    instance = DagsterInstance.ephemeral()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    for job, start, end in (
        ("alpha_daily_extract", "2025-03-03", "2025-03-09"),
        ("weekly_metrics", "2025-03-03", "2025-03-03"),
    ):
        defs.resolve_job_def(job).execute_in_process(
            instance=instance,
            run_config=quiet,
            tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end},
        )
    rows = read_metrics("week", storage=root)
    new = rows[(rows["metric"] == "dataset_or_workflow") & (rows["deployment"] == "alpha")].iloc[0]
    assert new["users"] == 2 and new["active_users"] == 3 and new["status"] == "experimental"
    assert new["pct"] == pytest.approx(66.67)
    from dagster import AssetKey

    assert "**dataset_or_workflow**" in defs.resolve_asset_graph().get(AssetKey("core_actions_weekly")).description
