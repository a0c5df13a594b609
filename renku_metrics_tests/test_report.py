"""The metrics report asset, its charts and its sensor."""

from __future__ import annotations

import base64
import datetime as dt
import re

import pandas as pd
import pytest
from dagster import DagsterInstance, build_sensor_context

from renku_metrics.core.charts import latest_complete, metric_chart, png_bytes
from renku_metrics.core.readers import read_metrics
from renku_metrics.core.storage import open_storage
from renku_metrics.definitions import build_defs
from renku_metrics.defs.metadata import table_rows

from .test_assets import QUIET, demo_config, run_range

PNG = b"\x89PNG\r\n\x1a\n"


def _png_of(markdown: str) -> bytes:
    match = re.search(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:200]
    return base64.b64decode(match.group(1))


def test_report_shows_latest_complete_week_and_charts(tmp_path):
    root = str(tmp_path / "data")
    defs = build_defs(config=demo_config(tmp_path), storage_root=root)
    instance = DagsterInstance.ephemeral()
    for name in ("demo", "demo_small"):
        run_range(defs, f"{name}_daily_extract", "2025-03-01", "2025-03-23", instance)
    # Weeks 03-03..03-17 are extracted in full; 03-24 has no extracted day at all: its
    # provisional rows are the newest, and the report must not take them as the latest week.
    run_range(defs, "weekly_metrics", "2025-03-03", "2025-03-24", instance)
    run_range(defs, "monthly_metrics", "2025-03-01", "2025-03-01", instance)

    result = defs.resolve_job_def("metrics_report_job").execute_in_process(instance=instance, run_config=QUIET)
    assert result.success
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    weekly = read_metrics("week", storage=root)
    assert not weekly[weekly["period_start"] == dt.date(2025, 3, 24)]["complete"].any()
    assert meta["latest_complete_week"].value == "2025-03-17"
    rows = table_rows(meta["latest_complete_week_table"])
    assert {(r["period"], r["deployment"]) for r in rows} == {("2025-03-17", d) for d in ("demo", "demo_small", "all")}
    assert meta["latest_complete_month"].value is None  # March 2025 lacks its last days
    week = weekly[weekly["period_start"] == dt.date(2025, 3, 17)]
    for r in week.itertuples():
        assert meta[f"week/{r.deployment}/{r.metric}/users"].value == r.users
        assert meta[f"week/{r.deployment}/{r.metric}/pct"].value == pytest.approx(r.pct)
        assert meta[f"week/{r.deployment}/active_users"].value == r.active_users
    by_deployment = {r["deployment"]: r for r in rows}
    for r in week.itertuples():
        assert by_deployment[r.deployment]["active users"] == r.active_users
        assert by_deployment[r.deployment][f"{r.metric} users (pct)"] == f"{r.users} ({r.pct:.1f}%)"
    for name in ("weekly_share", "weekly_users", "monthly_share", "monthly_users"):
        png = _png_of(meta[f"chart_{name}"].value)
        assert png.startswith(PNG) and len(png) > 10_000
        assert open_storage(root).read_bytes(f"reports/metrics_report/{name}.png") == png
    report_md = open_storage(root).read_bytes("reports/metrics_report/report.md").decode()
    assert "## Latest complete week: 2025-03-17" in report_md and "| 2025-03-17 | demo |" in report_md
    assert "![" in report_md and "(weekly_share.png)" in report_md and "base64" not in report_md


def test_report_fails_clearly_without_metrics(tmp_path):
    root = str(tmp_path / "data")
    defs = build_defs(config=demo_config(tmp_path), storage_root=root)
    result = defs.resolve_job_def("metrics_report_job").execute_in_process(
        instance=DagsterInstance.ephemeral(), run_config=QUIET, raise_on_error=False
    )
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "no weekly or monthly metrics" in str(failure.event_specific_data.error)


def test_latest_complete_and_provisional_marking():
    frame = pd.DataFrame(
        {
            "deployment": ["a"] * 3,
            "metric": ["commit"] * 3,
            "period_start": [dt.date(2025, 3, 3), dt.date(2025, 3, 10), dt.date(2025, 3, 17)],
            "users": [1, 2, 3],
            "pct": [10.0, 20.0, 30.0],
            "complete": [True, True, False],
        }
    )
    assert latest_complete(frame) == dt.date(2025, 3, 10)
    assert latest_complete(frame.assign(complete=False)) is None
    fig = metric_chart(frame, "pct", "t")
    ax = fig.axes[0]
    # Complete points solid; the provisional point hollow and reached by a dashed line.
    solid, dashed, hollow = ax.lines[:3]
    assert solid.get_linestyle() == "-" and list(pd.Series(solid.get_ydata()).isna()) == [False, False, True]
    assert dashed.get_linestyle() == "--" and list(pd.Series(dashed.get_ydata()).isna()) == [True, False, False]
    assert hollow.get_markerfacecolor() == "white" and list(hollow.get_ydata()) == [30.0]
    assert png_bytes(fig).startswith(PNG)
    with pytest.raises(ValueError, match="measure"):
        metric_chart(frame, "share", "t")


def test_report_sensor_waits_for_new_aggregates(tmp_path):
    root = str(tmp_path / "data")
    defs = build_defs(config=demo_config(tmp_path), storage_root=root)
    instance = DagsterInstance.ephemeral()
    sensor = defs.resolve_sensor_def("metrics_report_sensor")
    assert sensor.evaluate_tick(build_sensor_context(instance=instance)).run_requests == []
    for name in ("demo", "demo_small"):
        run_range(defs, f"{name}_daily_extract", "2025-03-03", "2025-03-09", instance)
    defs.resolve_job_def("weekly_metrics").execute_in_process(
        instance=instance, partition_key="2025-03-03", run_config=QUIET
    )
    first = sensor.evaluate_tick(build_sensor_context(instance=instance))
    assert len(first.run_requests) == 1 and first.run_requests[0].job_name in (None, "metrics_report_job")
    again = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=first.cursor))
    assert again.run_requests == []
