"""Blocking raw-event checks really block: a failing day never reaches the aggregates."""

from __future__ import annotations

import datetime as dt

import pytest

from renku_metrics.core.aggregate import aggregate_period
from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.extract import extract_day
from renku_metrics.core.layout import raw_events_key, withheld_key
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.storage import LocalStorage

from .helpers import NOW, ev, write_config

MONDAY = dt.date(2025, 3, 3)


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "root")


def test_a_day_failing_a_blocking_check_is_withheld_from_the_aggregates(tmp_path, storage, fixture_source):
    # "ab:cd:ef" passes event validation but looks like an IPv6 address to the no_personal_data check.
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-01",
                "events": [
                    ev("2025-03-03T10:00:00Z", "u1", "commit", project_id="7", id="a"),
                    ev("2025-03-04T10:00:00Z", "u2", "commit", project_id="ab:cd:ef", id="b"),
                    ev("2025-03-04T11:00:00Z", "u3", "commit", project_id="8", id="c"),
                ],
            }
        },
    )
    deployment = config.deployments[0]
    results = {}
    for offset in range(7):
        day = MONDAY + dt.timedelta(days=offset)
        results[day] = extract_day(storage, deployment, day, env={}, now=NOW)

    bad = dt.date(2025, 3, 4)
    assert results[bad].checks["no_personal_data"] == 1 and not results[bad].complete
    assert "withheld: blocking raw-event checks failed (no_personal_data (1 rows))" in results[bad].incomplete[-1]
    assert not storage.exists(raw_events_key("alpha", bad))  # never published
    assert storage.exists(withheld_key("alpha", bad))  # but not lost
    assert Manifest.read(storage, "alpha", bad).withheld
    assert all(not results[d].checks.get("no_personal_data") for d in results if d != bad)

    week = aggregate_period(storage, config.deployments, load_catalog(), "week", MONDAY, NOW)
    active = week.active_users.set_index("deployment")
    assert active.loc["alpha", "active_users"] == 1  # u1 only: u2 and u3 of the withheld day are left out
    assert not active.loc["alpha", "complete"]
    assert (
        "2025-03-04 withheld: blocking raw-event checks failed (no_personal_data (1 rows))"
        in (active.loc["alpha", "coverage_note"])
    )

    # Once the upstream is fixed, a rerun publishes the day and the week is complete.
    write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-01",
                "events": [
                    ev("2025-03-03T10:00:00Z", "u1", "commit", project_id="7", id="a"),
                    ev("2025-03-04T10:00:00Z", "u2", "commit", project_id="9", id="b"),
                    ev("2025-03-04T11:00:00Z", "u3", "commit", project_id="8", id="c"),
                ],
            }
        },
    )
    rerun = extract_day(storage, deployment, bad, env={}, now=NOW)
    assert rerun.complete and not storage.exists(withheld_key("alpha", bad))
    week = aggregate_period(storage, config.deployments, load_catalog(), "week", MONDAY, NOW)
    active = week.active_users.set_index("deployment")
    assert active.loc["alpha", "active_users"] == 3 and active.loc["alpha", "complete"]
