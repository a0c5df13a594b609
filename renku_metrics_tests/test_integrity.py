"""One damaged stored file: named in one line, blocks nothing else, and re-extraction repairs it."""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from renku_metrics.__main__ import main as cli
from renku_metrics.core.aggregate import aggregate_period
from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.extract import RecentEventIds, extract_day
from renku_metrics.core.integrity import DamagedFileError, file_record, verify_store
from renku_metrics.core.layout import manifest_key, raw_events_key
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.storage import LocalStorage
from renku_metrics_tests.helpers import NOW, ev, write_config
from renku_metrics_tests.test_faults import _kill_after, assert_same_content

FIRST = dt.date(2025, 1, 1)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(12)]
DAMAGED = dt.date(2025, 1, 5)


def _config(tmp_path: Path):
    """Every day 6 logins; record r<day> appears on its day and again 3 days later (another user)."""
    events = []
    for i, day in enumerate(DAYS):
        for k in range(6):
            events.append(ev(f"{day}T{8 + k:02d}:00:00Z", f"u{(i + k) % 9}", "login", id=f"d{i}k{k}"))
        events.append(ev(f"{day}T20:00:00Z", "pusher", "commit", id=f"r{i}"))
        events.append(ev(f"{day + dt.timedelta(days=3)}T21:00:00Z", "late", "commit", id=f"r{i}"))
    return write_config(tmp_path, {"alpha": {"start_date": FIRST.isoformat(), "events": events}})


def _extract(storage, deployment, days):
    recent = RecentEventIds(storage, deployment.name)
    return {day: extract_day(storage, deployment, day, env={}, now=NOW, recent_ids=recent) for day in days}


def _truncate(storage: LocalStorage, key: str) -> int:
    path = Path(storage.uri(key))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a partial upload
    return len(data)


def test_manifest_records_size_and_checksum_of_the_days_files(tmp_path, fixture_source):
    config = _config(tmp_path)
    storage = LocalStorage(tmp_path / "store")
    _extract(storage, config.deployments[0], DAYS[:2])
    key = raw_events_key("alpha", FIRST)
    manifest = Manifest.read(storage, "alpha", FIRST)
    assert manifest.files == {key: file_record(storage.read_bytes(key))}
    assert manifest.files[key]["size"] == Path(storage.uri(key)).stat().st_size
    assert manifest.pending == {}


def test_a_truncated_day_is_named_blocks_no_other_day_and_is_repaired_by_re_extraction(
    tmp_path, fixture_source, caplog, capsys
):
    config = _config(tmp_path)
    alpha = config.deployments[0]
    reference = LocalStorage(tmp_path / "reference")
    _extract(reference, alpha, DAYS)

    storage = LocalStorage(tmp_path / "store")
    _extract(storage, alpha, DAYS[:6])
    key = raw_events_key("alpha", DAMAGED)
    size = _truncate(storage, key)

    # The days around it extract; each notes that it could not check against the damaged day.
    with caplog.at_level(logging.WARNING, logger="renku_metrics.core.extract"):
        extracts = _extract(storage, alpha, DAYS[6:])
    assert list(extracts[dt.date(2025, 1, 8)].dedup_unchecked_days) == ["2025-01-05"]
    lines = [r.getMessage() for r in caplog.records if "damaged stored file" in r.getMessage()]
    assert lines and all("\n" not in line for line in lines)
    assert lines[0].startswith(
        f"damaged stored file: deployment 'alpha', day 2025-01-05, {storage.uri(key)}: {size // 2} bytes, "
        f"the manifest records {size}"
    )
    assert "python -m renku_metrics extract --deployment alpha --day 2025-01-05" in lines[0]
    day8 = Manifest.read(storage, "alpha", dt.date(2025, 1, 8))
    assert list(day8.dedup_unchecked_days) == ["2025-01-05"]
    assert day8.complete  # a note, not a gap: re-extracting the damaged day settles it
    # r4 (day 5's commit, again on day 8) stays on day 8 while day 5 cannot be read.
    assert Manifest.read(reference, "alpha", dt.date(2025, 1, 8)).row_count == day8.row_count - 1

    # The aggregate over it names the file in one line instead of a bare DuckDB error.
    with pytest.raises(DamagedFileError) as caught:
        aggregate_period(storage, config.deployments, load_catalog(), "week", dt.date(2024, 12, 30), NOW)
    assert str(caught.value).startswith(f"damaged stored file: deployment 'alpha', day 2025-01-05, {storage.uri(key)}")

    # verify lists it with its repair, and fails.
    assert cli(["verify", "--storage", storage.root]) == 1
    out = capsys.readouterr().out
    assert f"alpha 2025-01-05 {storage.uri(key)}: {size // 2} bytes, the manifest records {size}" in out
    assert "repair: python -m renku_metrics extract --deployment alpha --day 2025-01-05" in out
    assert "verify: 12 day(s) of all deployments" in out and "1 problem(s)" in out
    assert cli(["verify", "--storage", storage.root, "--since", "2025-01-06"]) == 0

    # Re-extracting the damaged day repairs it and takes its record back from day 8.
    _extract(storage, alpha, [DAMAGED])
    assert verify_store(storage) == (12, [])
    assert cli(["verify", "--storage", storage.root, "--deployment", "alpha"]) == 0
    assert Manifest.read(storage, "alpha", dt.date(2025, 1, 8)).row_count == day8.row_count - 1
    # The same events as a store that was never damaged (manifests may differ in their notes).
    assert_same_content(reference, storage)


def test_a_damaged_manifest_is_named_and_verify_reports_missing_files(tmp_path, fixture_source, capsys):
    config = _config(tmp_path)
    storage = LocalStorage(tmp_path / "store")
    _extract(storage, config.deployments[0], DAYS[:4])
    Path(storage.uri(manifest_key("alpha", DAYS[1]))).write_text('{"deployment": "alpha", "da')
    Path(storage.uri(raw_events_key("alpha", DAYS[2]))).unlink()
    checked, findings = verify_store(storage, "alpha")
    assert checked == 4
    assert [(f.day, f.problem.split(" (")[0]) for f in findings] == [
        ("2025-01-02", "not readable JSON"),
        ("2025-01-03", "missing"),
    ]
    # Extraction next to them goes on, and re-extracting both repairs the store (the second
    # through the command that verify prints).
    _extract(storage, config.deployments[0], [DAYS[4], DAYS[1]])
    repair = ["extract", "--deployment", "alpha", "--day", "2025-01-03", "--storage", storage.root]
    assert cli([*repair, "--deployments", str(tmp_path / "deployments.yaml")]) == 0
    # 6 logins and its own commit (the first repeat, of day 1's commit, lands on day 4).
    assert "extract: alpha 2025-01-03: 7 events stored at" in capsys.readouterr().out
    assert verify_store(storage, "alpha") == (5, [])
    assert (
        cli(
            [
                "extract",
                "--deployment",
                "nope",
                "--day",
                "2025-01-03",
                "--deployments",
                str(tmp_path / "deployments.yaml"),
            ]
        )
        == 2
    )
    assert "no deployment 'nope' (deployments: alpha)" in capsys.readouterr().err


_REEXTRACT_SCRIPT = """
import datetime as dt
from renku_metrics.core import sources
sources.SOURCE_MODULES["fixture"] = "renku_metrics_tests.fixture_source"
from renku_metrics.core.config import load_config
from renku_metrics.core.extract import extract_day
from renku_metrics.core.storage import LocalStorage

class Noisy(LocalStorage):
    def write_bytes(self, key, data):
        super().write_bytes(key, data)
        if key.startswith("raw_events/"):
            print("wrote", key, flush=True)

config = load_config({config!r})
extract_day(Noisy({root!r}), config.deployments[0], dt.date(2025, 1, 2), env={{}},
            now=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
"""


@pytest.mark.parametrize("writes_before_kill", [1, 2])
def test_a_crash_while_re_extracting_is_not_taken_for_damage(tmp_path, fixture_source, writes_before_kill):
    """Re-extracting a day writes: the manifest naming the coming file (1), the events (2), the manifest."""
    config = _config(tmp_path)
    storage = LocalStorage(tmp_path / "store")
    _extract(storage, config.deployments[0], DAYS[:3])
    # The upstream now has one more login that day: the re-extract replaces the events file.
    extra = ev("2025-01-02T23:00:00Z", "newcomer", "login", id="extra")
    events_file = tmp_path / "alpha.jsonl"
    events_file.write_text(events_file.read_text() + __import__("json").dumps(extra) + "\n")
    script = _REEXTRACT_SCRIPT.format(config=str(tmp_path / "deployments.yaml"), root=str(storage.root))
    _kill_after(textwrap.dedent(script), lines=writes_before_kill)
    assert verify_store(storage, "alpha") == (3, [])
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert verify_store(storage, "alpha") == (3, [])
    assert Manifest.read(storage, "alpha", DAYS[1]).pending == {}


def test_the_daily_schedule_re_extracts_a_day_whose_manifest_is_damaged(tmp_path, fixture_source):
    from renku_metrics.defs.raw_events.schedules import days_to_extract

    config = _config(tmp_path)
    storage = LocalStorage(tmp_path / "store")
    _extract(storage, config.deployments[0], DAYS[:8])
    Path(storage.uri(manifest_key("alpha", DAYS[3]))).write_bytes(b"\x00\x00")
    # Today 2025-01-09: yesterday (01-08), plus the damaged 01-04 of the week before.
    assert days_to_extract(storage, config.deployments[0], dt.date(2025, 1, 9)) == [DAYS[3], DAYS[7]]


def test_the_scheduled_verify_job_fails_naming_the_damaged_file(tmp_path, fixture_source):
    from dagster import DagsterEventType

    from renku_metrics.defs.integrity.schedules import verify_store_job
    from renku_metrics.defs.resources import MetricsStorageResource

    config = _config(tmp_path)
    storage = LocalStorage(tmp_path / "store")
    _extract(storage, config.deployments[0], DAYS[:4])
    resources = {"metrics_storage": MetricsStorageResource(root=storage.root)}
    every_day = {"ops": {"verify_store_op": {"config": {"days": 0}}}}
    assert verify_store_job.execute_in_process(resources=resources, run_config=every_day).success
    key = raw_events_key("alpha", DAYS[2])
    size = _truncate(storage, key)
    result = verify_store_job.execute_in_process(resources=resources, run_config=every_day, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    description = failure.step_failure_data.user_failure_data.description
    assert description == (
        f"1 damaged or missing stored file(s): alpha 2025-01-03 {storage.uri(key)}: {size // 2} bytes, the manifest "
        f"records {size} repair: python -m renku_metrics extract --deployment alpha --day 2025-01-03"
    )
    # The default looks at the last 35 days only: these days of 2025 are not among them.
    assert verify_store_job.execute_in_process(resources=resources).success
