"""Fault tests: upstream faults, stray 404s, crashes and S3 trouble lose nothing and double nothing.

Each test compares the store against a fault-free run of the same extraction
(same Parquet content, day by day), or asserts a clear error / an incomplete
day with a note. Never complete and wrong.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from renku_metrics.core.config import load_config
from renku_metrics.core.extract import RecentEventIds, extract_day
from renku_metrics.core.layout import is_events_key
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.sources.gitlab import Settings, Source
from renku_metrics.core.storage import LocalStorage, Storage, StorageError, open_storage
from renku_metrics_tests.simulators import Fault
from renku_metrics_tests.simulators.gitlab_sim import GitLabSimulator
from renku_metrics_tests.simulators.s3_proxy import S3FaultProxy

from .helpers import NOW, ev, write_config

UTC = dt.timezone.utc
FIRST = dt.date(2024, 5, 13)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(5)]
SIM_NOW = dt.datetime(2024, 5, 20, 2, tzinfo=UTC)
TOKEN_ENV = "FAULTS_GITLAB_TOKEN"


def at(day: int, hours: float) -> dt.datetime:
    return dt.datetime(FIRST.year, FIRST.month, FIRST.day, tzinfo=UTC) + dt.timedelta(days=day, hours=hours)


def populate(sim: GitLabSimulator) -> None:
    """Five days of pushes over four projects, multi-page listings, and commits fast-forwarded later."""
    for uid in range(1, 7):
        sim.add_user(uid, f"user{uid}", extern_uid=f"kc-{uid}")
    for pid in (10, 11, 12, 13):
        sim.add_project(pid, visibility="public" if pid % 2 else "private", last_activity_at=at(-30, 0))
        sim.push(pid, 1, at(-10, 0), ["base"])
    for day in range(5):
        for pid in (10, 11, 12, 13):
            for k in range(3):
                author = 1 + (pid + day + k) % 6
                messages = [f"d{day} p{pid} k{k} c{i}" for i in range(1 + (k + day) % 4)]
                if k == 1:
                    messages.append("renku run python train.py")
                sim.push(pid, author, at(day, 2 + 5 * k + pid % 3), messages)
        # A feature branch pushed by one user, fast-forwarded onto master by another a day later.
        if day < 4:
            sim.push(10, 2, at(day, 20), [f"feature {day} a", f"feature {day} b"], branch=f"f{day}", base="master")
            head = sim.repos[10].branches[f"f{day}"]
            sim.move_branch(10, 3, at(day + 1, 1), "master", head)


def gitlab_config(tmp_path: Path, url: str):
    path = tmp_path / "deployments.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "renku1",
                        "start_date": "2024-05-01",
                        "sources": {"gitlab": {"url": url, "token_env": TOKEN_ENV}},
                    }
                ]
            }
        )
    )
    return load_config(path).deployments[0]  # secrets are read when sources are built


def extract_gitlab(storage: Storage, sim: GitLabSimulator, tmp_path: Path, days=DAYS, **settings) -> list:
    deployment = gitlab_config(tmp_path, sim.url)
    values = dict(url=sim.url, token_env=TOKEN_ENV, page_size=2, backoff_seconds=0.001, max_backoff_seconds=0.01)
    values.update(settings)
    source = Source(deployment.name, Settings(**values), {TOKEN_ENV: sim.token}, now=lambda: SIM_NOW)
    recent = RecentEventIds(storage, deployment.name)
    return [
        extract_day(storage, deployment, day, env={}, now=NOW, sources_by_type={"gitlab": source}, recent_ids=recent)
        for day in days
    ]


def store_content(storage: Storage) -> dict[str, pd.DataFrame]:
    """Every stored events object, sorted by event id."""
    out = {}
    for key in storage.list_keys("raw_events/"):
        if is_events_key(key):
            out[key] = storage.read_parquet(key).to_pandas().sort_values("event_id").reset_index(drop=True)
    return out


def assert_same_content(a: Storage, b: Storage) -> None:
    left, right = store_content(a), store_content(b)
    assert sorted(left) == sorted(right)
    for key in left:
        pd.testing.assert_frame_equal(left[key], right[key], check_exact=True, obj=key)


@pytest.fixture
def gitlab():
    sim = GitLabSimulator(now=lambda: SIM_NOW)
    populate(sim)
    with sim:
        yield sim


@pytest.fixture
def reference(gitlab, tmp_path):
    storage = LocalStorage(tmp_path / "reference")
    extracts = extract_gitlab(storage, gitlab, tmp_path)
    assert all(e.complete for e in extracts)
    assert sum(e.row_count for e in extracts) > 100 and sum(e.repeated_from_earlier_days for e in extracts) > 0
    gitlab.requests.clear()
    return storage


# -- upstream faults -----------------------------------------------------------------------------


def test_mixed_upstream_faults_change_nothing(gitlab, reference, tmp_path):
    faults = [
        Fault("status", status=500),
        Fault("status", status=502),
        Fault("status", status=503),
        Fault("rate_limit", retry_after=0),
        Fault("truncate"),
        Fault("cut"),
        Fault("reset"),
        Fault("html"),
        Fault("delay", delay=0.6),  # beyond the client's timeout
        Fault("status", status=404, query={"page": "2"}),  # stray 404s where the resource exists
        Fault("status", status=404, path_contains="/api/v4/users/"),
    ]
    gitlab.chaos(0.2, faults, seed=42)
    storage = LocalStorage(tmp_path / "faulty")

    extracts = extract_gitlab(storage, gitlab, tmp_path, timeout_seconds=0.3, max_retries=8)

    assert all(e.complete for e in extracts), [e.incomplete for e in extracts]
    assert_same_content(reference, storage)
    served = gitlab.chaos_served
    assert sum(served.values()) >= 0.1 * len(gitlab.requests), served
    assert {"reset", "html", "cut", "truncate", "status 404"} <= set(served), served


@pytest.mark.parametrize("path,query", [("/events", {"page": "2"}), ("/repository/commits", {"page": "2"})])
def test_persistent_404s_after_the_first_page_leave_days_incomplete_never_wrong(
    gitlab, reference, tmp_path, path, query
):
    gitlab.inject("status", times=10**6, status=404, path_contains=path, query=query)
    storage = LocalStorage(tmp_path / "persistent")
    extracts = extract_gitlab(storage, gitlab, tmp_path, max_retries=1)
    ref = store_content(reference)
    for extract in extracts:
        key = f"raw_events/deployment=renku1/date={extract.day.isoformat()}/events.parquet"
        got = storage.read_parquet(key).to_pandas()
        if extract.complete:  # complete days must be exactly right
            pd.testing.assert_frame_equal(got.sort_values("event_id").reset_index(drop=True), ref[key])
        else:
            assert "not fully read (HTTP 404 on page 2)" in " ".join(extract.incomplete)
            assert Manifest.read(storage, "renku1", extract.day).incomplete_notes()
    assert not all(e.complete for e in extracts)


# -- crashes -----------------------------------------------------------------------------------

_EXTRACT_SCRIPT = """
import datetime as dt, sys
from renku_metrics.core import sources
sources.SOURCE_MODULES["fixture"] = "renku_metrics_tests.fixture_source"
from renku_metrics.core.config import load_config
from renku_metrics.core.extract import RecentEventIds, extract_day
from renku_metrics.core.storage import LocalStorage
config = load_config({config!r})
storage = LocalStorage({root!r})
deployment = config.deployments[0]
recent = RecentEventIds(storage, deployment.name)
day = dt.date(2025, 1, 1)
while day < dt.date(2025, 3, 1):
    extract_day(storage, deployment, day, env={{}}, now=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), recent_ids=recent)
    print(day, flush=True)
    day += dt.timedelta(days=1)
"""

_AGGREGATE_SCRIPT = """
import datetime as dt
from renku_metrics.core import sources
sources.SOURCE_MODULES["fixture"] = "renku_metrics_tests.fixture_source"
from renku_metrics.core.aggregate import aggregate_period
from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.config import load_config
from renku_metrics.core.layout import metrics_key
from renku_metrics.core.periods import PERIOD_SUFFIX, period_starts_between
from renku_metrics.core.storage import LocalStorage
config = load_config({config!r})
storage = LocalStorage({root!r})
now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
suffix = PERIOD_SUFFIX[{period!r}]
# As the aggregate step does it: one period at a time, the denominator, then the core actions.
first = dt.date(2024, 12, 30) if {period!r} == "week" else dt.date(2025, 1, 1)
for start in period_starts_between({period!r}, first, dt.date(2025, 3, 1)):
    result = aggregate_period(storage, config.deployments, load_catalog(), {period!r}, start, now)
    storage.write_frame(metrics_key("active_users_" + suffix, start), result.active_users)
    print("active", start, flush=True)
    storage.write_frame(metrics_key("core_actions_" + suffix, start), result.core_actions)
    print("core", start, flush=True)
"""


def _history(tmp_path: Path):
    events = []
    day = dt.date(2025, 1, 1)
    n = 0
    while day < dt.date(2025, 3, 1):
        for k in range(40):
            n += 1
            user = f"u{(n * 7) % 97}"
            action = ("login", "commit", "create_dataset", "run_workflow")[k % 4]
            events.append(ev(f"{day.isoformat()}T{k % 24:02d}:{k:02d}:00Z", user, action, id=f"r{n}"))
        # the same record again three days later, under another user
        events.append(ev(f"{(day + dt.timedelta(days=3)).isoformat()}T12:00:00Z", "late", "commit", id=f"r{n}"))
        day += dt.timedelta(days=1)
    return write_config(tmp_path, {"alpha": {"start_date": "2025-01-01", "events": events}})


def _kill_after(script: str, lines: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(lines):
        assert child.stdout.readline(), "the child ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    assert child.returncode == -signal.SIGKILL


def _temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_sigkill_during_extraction_then_rerun_gives_an_identical_store(tmp_path, fixture_source):
    config = _history(tmp_path)
    reference = LocalStorage(tmp_path / "reference")
    recent = RecentEventIds(reference, "alpha")
    days = [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(59)]
    for day in days:
        extract_day(reference, config.deployments[0], day, env={}, now=NOW, recent_ids=recent)

    root = tmp_path / "killed"
    script = _EXTRACT_SCRIPT.format(config=str(tmp_path / "deployments.yaml"), root=str(root))
    _kill_after(textwrap.dedent(script), lines=20)
    killed = LocalStorage(root)
    assert 20 <= len([k for k in killed.list_keys("raw_events/") if is_events_key(k)]) < 59
    # The rerun: the whole range again, as Dagster's retry of the run would.
    recent = RecentEventIds(killed, "alpha")
    for day in days:
        extract_day(killed, config.deployments[0], day, env={}, now=NOW, recent_ids=recent)
    assert_same_content(reference, killed)
    assert _temp_files(root) == []


@pytest.mark.parametrize("period,lines", [("week", 5), ("month", 1)])
def test_sigkill_during_aggregation_then_rerun_gives_identical_metrics(tmp_path, fixture_source, period, lines):
    config = _history(tmp_path)
    storage = LocalStorage(tmp_path / "store")
    recent = RecentEventIds(storage, "alpha")
    for i in range(59):
        day = dt.date(2025, 1, 1) + dt.timedelta(days=i)
        extract_day(storage, config.deployments[0], day, env={}, now=NOW, recent_ids=recent)
    shutil.copytree(tmp_path / "store", tmp_path / "reference")
    script = {
        name: textwrap.dedent(
            _AGGREGATE_SCRIPT.format(
                config=str(tmp_path / "deployments.yaml"), root=str(tmp_path / name), period=period
            )
        )
        for name in ("store", "reference")
    }
    done = subprocess.run([sys.executable, "-c", script["reference"]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    # Killed between a period's denominator and its core actions (an odd number of lines), then rerun.
    _kill_after(script["store"], lines=lines)
    rerun = subprocess.run([sys.executable, "-c", script["store"]], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr

    def metrics(path: Path) -> dict[str, pd.DataFrame]:
        return {
            str(file.relative_to(path)): pd.read_parquet(file).drop(columns=["computed_at"], errors="ignore")
            for file in sorted((path / "metrics").rglob("*.parquet"))
        }

    left, right = metrics(tmp_path / "reference"), metrics(tmp_path / "store")
    assert left and sorted(left) == sorted(right)
    for key in left:
        pd.testing.assert_frame_equal(left[key], right[key], obj=key)
    assert _temp_files(tmp_path / "store") == []


# -- S3 trouble ------------------------------------------------------------------------------------


def test_s3_resets_during_extraction_converge_to_the_same_store(tmp_path, fixture_source, s3_endpoint, s3_bucket):
    config = _history(tmp_path)
    days = [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(14)]
    reference = LocalStorage(tmp_path / "reference")
    for day in days:
        extract_day(reference, config.deployments[0], day, env={}, now=NOW)
    with S3FaultProxy(s3_endpoint) as proxy:
        storage = open_storage(f"s3://{s3_bucket}/metrics", endpoint_url=proxy.url)
        recent = RecentEventIds(storage, "alpha")
        for i, day in enumerate(days):
            if i % 3 == 0:
                proxy.fail("reset", times=2)  # two dropped connections: botocore's retries absorb them
            extract_day(storage, config.deployments[0], day, env={}, now=NOW, recent_ids=recent)
        assert proxy.requests > 0
        assert_same_content(reference, storage)


def test_an_s3_outage_is_a_clear_error_and_a_rerun_converges(tmp_path, fixture_source, s3_endpoint, s3_bucket):
    config = _history(tmp_path)
    days = [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(10)]
    reference = LocalStorage(tmp_path / "reference")
    for day in days:
        extract_day(reference, config.deployments[0], day, env={}, now=NOW)
    with S3FaultProxy(s3_endpoint) as proxy:
        storage = open_storage(f"s3://{s3_bucket}/metrics", endpoint_url=proxy.url)
        for day in days[:5]:
            extract_day(storage, config.deployments[0], day, env={}, now=NOW)
        proxy.down()
        with pytest.raises(StorageError) as info:
            extract_day(storage, config.deployments[0], days[5], env={}, now=NOW)
        message = str(info.value)
        assert f"s3://{s3_bucket}/metrics" in message and f"cannot reach {proxy.url}" in message
        assert "\n" not in message and "testing" not in message  # no credentials in the message
        with pytest.raises(StorageError, match="cannot reach"):
            storage.check()
        proxy.up()
        storage.check()
        for day in days:  # the rerun of the whole range
            extract_day(storage, config.deployments[0], day, env={}, now=NOW)
        assert_same_content(reference, storage)
