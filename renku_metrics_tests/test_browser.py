"""The Dagster UI in a real browser: Playwright driving the system's Chromium against
`dagster dev` on a free port, a temporary instance and demo data.

Launches a backfill of three weeks of the weekly aggregates through the UI
(Materialize → partition range → Launch backfill), waits for it (one run covers the
three weeks), opens the middle partition and compares its table with ``read_metrics``
(its own week only, although the run covered three), then opens the report
asset and checks that its chart image loaded. Screenshots of every step are kept
under the test's temporary directory (their path is printed on failure).
Fails, never skips, when Chromium or Playwright is missing.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.config import load_config
from renku_metrics.core.readers import read_metrics
from renku_metrics.definitions import build_defs
from renku_metrics.defs.demo_run import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from .conftest import free_port

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WEEKS = ["2025-03-03", "2025-03-10", "2025-03-17"]
OPENED = "2025-03-10"
WAIT = 900  # seconds: generous, the machine may be busy; not an assertion about speed


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    return path


def wait_for(what: str, predicate, timeout: float = WAIT, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what} after {timeout:.0f}s")


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def dagster_dev(tmp_path):
    """`dagster dev` on a free port with a temporary instance, one demo deployment and
    three weeks of extracted days (2025-03-03..2025-03-23)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    config_file = tmp_path / "deployments.yaml"
    config_file.write_text(
        "deployments:\n  - {name: demo, start_date: 2025-03-01, sources: {demo: {seed: 3, users: 400}}}\n"
    )
    root = tmp_path / "data"
    # The days are extracted by a range run recorded in the instance, as a UI backfill would.
    defs = build_defs(config=load_config(config_file, env={}), storage_root=str(root))
    with DagsterInstance.from_config(str(home)) as instance:
        assert (
            defs.resolve_job_def("demo_daily_extract")
            .execute_in_process(
                instance=instance,
                tags={ASSET_PARTITION_RANGE_START_TAG: "2025-03-03", ASSET_PARTITION_RANGE_END_TAG: "2025-03-23"},
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
            .success
        )

    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RENKU_METRICS_STORAGE": str(root),
        "RENKU_METRICS_DEPLOYMENTS": str(config_file),
    }
    log = open(tmp_path / "dagster_dev.log", "w")
    dagster = Path(sys.executable).parent / "dagster"
    process = subprocess.Popen(
        [str(dagster), "dev", "-m", "renku_metrics.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as a whole below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the Dagster webserver", lambda: process.poll() is None and _up(f"{url}/server_info"), timeout=300)
        yield {"url": url, "home": home, "root": root, "log": tmp_path / "dagster_dev.log"}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        log.close()


def _latest_storage_id(instance, key: str) -> int:
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(key)), limit=1).records
    return records[0].storage_id if records else 0


def test_ui_backfill_partition_table_and_report_chart(dagster_dev, tmp_path):
    executable = chromium()
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    url = dagster_dev["url"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        step = "start"

        def shot(name: str) -> None:
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

        try:
            step = "asset page"
            page.goto(f"{url}/assets/core_actions_weekly")
            page.get_by_role("button", name="Materialize…").first.wait_for()
            page.wait_for_timeout(3000)  # the first-visit community dialog, if it comes, comes now
            if page.get_by_role("button", name="Skip").count():
                page.get_by_role("button", name="Skip").click()
            shot("1_asset")

            step = "materialize dialog"
            page.get_by_role("button", name="Materialize…").first.click()
            # The denominator is the same step: the UI says it comes along.
            page.get_by_text("active_users_weekly").first.wait_for()
            page.get_by_role("button", name="Confirm").click()
            title = page.get_by_text("Launch runs to materialize 2 assets")
            title.wait_for()
            selection_header = page.get_by_text("Partition selection")
            selection_header.wait_for()
            page.wait_for_timeout(2000)
            # Older weeks lie outside the dialog's default window of recent partitions.
            if page.get_by_text("Show all partitions").count():
                page.get_by_text("Show all partitions").click()
                page.get_by_text("Show all partitions").wait_for(state="detached")
            # The partition selection box of the dialog (by its placeholder while nothing is selected).
            selection = page.locator(
                "input[type='text'][placeholder^='ex:'], input[type='text'][placeholder='No matching partitions']"
            ).first
            selection.fill(f"[{WEEKS[0]}...{WEEKS[-1]}]")
            selection.press("Enter")
            page.get_by_text("3 partitions").first.wait_for()
            shot("2_backfill_dialog")

            step = "launch backfill"
            page.get_by_role("button", name="Launch backfill").click()
            page.get_by_text("Launch backfill").first.wait_for(state="detached")
            shot("3_launched")

            step = "backfill runs"
            instance = DagsterInstance.from_config(str(dagster_dev["home"]))
            backfills = wait_for("the backfill", lambda: instance.get_backfills(), timeout=120)
            assert len(backfills) == 1
            done = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]

            def finished():
                runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfills[0].backfill_id}))
                return runs if runs and all(r.status in done for r in runs) else None

            runs = wait_for("the backfill's run", finished)
            assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), [(r.run_id, r.status) for r in runs]
            # One run over the three weeks (a backfill runs up to 13 weeks per run).
            covered = sorted(
                (r.tags.get(ASSET_PARTITION_RANGE_START_TAG), r.tags.get(ASSET_PARTITION_RANGE_END_TAG))
                if ASSET_PARTITION_RANGE_START_TAG in r.tags
                else (r.tags["dagster/partition"],) * 2
                for r in runs
            )
            assert covered == [(WEEKS[0], WEEKS[-1])], covered

            step = "partition view"
            page.goto(f"{url}/assets/core_actions_weekly?view=partitions&partition={OPENED}")
            metadata = page.locator("table").filter(has_text="active users").last
            metadata.wait_for()
            shot("4_partition")
            text = metadata.inner_text()
            weekly = read_metrics("week", storage=str(dagster_dev["root"]))
            week = weekly[weekly["period_start"] == dt.date.fromisoformat(OPENED)]
            assert len(week) == 2 * len(load_catalog().computed())  # demo and all, every computed metric
            other_weeks = [w for w in WEEKS if w != OPENED]
            assert OPENED in text and not any(w in text for w in other_weeks)
            lines = {line.split("\t")[1]: line for line in text.splitlines() if line.startswith(OPENED)}
            assert set(lines) == {"demo", "all"}
            for r in week.itertuples():
                cells = lines[r.deployment].split("\t")
                assert cells[2] == str(r.active_users), (r.deployment, cells)
                assert f"{r.users} ({r.pct:.1f}%)" in cells, (r.deployment, r.metric, cells)

            step = "report"
            wait_for(
                "metrics_report_sensor to rebuild the report after the backfill",
                lambda: (
                    _latest_storage_id(instance, "metrics_report") > _latest_storage_id(instance, "core_actions_weekly")
                ),
            )
            page.goto(f"{url}/assets/metrics_report")
            page.get_by_text("chart_weekly_share").first.wait_for()
            page.locator("tr", has_text="chart_weekly_share").get_by_text("[Show Markdown]").click()
            image = page.locator("img[src^='data:image/png']").first
            image.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            shot("5_report_chart")
            assert width >= 400 and height >= 200, (width, height)
        except BaseException:
            try:
                shot(f"failed_at_{step.replace(' ', '_')}")
            finally:
                print(f"screenshots: {shots}; dagster dev log: {dagster_dev['log']}")
            raise
        finally:
            browser.close()
