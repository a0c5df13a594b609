"""A period's two aggregate tables count only as a pair written together (core.publication).

A process killed between writing ``active_users_weekly`` and ``core_actions_weekly``
(with the excluded users changed since the previous run) must never leave two
tables that disagree while both say ``complete``; a rerun converges.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.layout import metrics_key
from renku_metrics.core.publication import publish_period, stored_pair_complete
from renku_metrics.core.readers import read_active_users, read_metrics
from renku_metrics.core.storage import LocalStorage
from renku_metrics_tests.helpers import NOW, ev, extract_days, write_config
from renku_metrics_tests.test_faults import _kill_after

# Two ISO weeks: 2025-03-03 and 2025-03-10. Users a, b, c log in every day; "bot" commits.
WEEKS = [dt.date(2025, 3, 3), dt.date(2025, 3, 10)]


def _config(directory: Path, excluded: list[str]) -> MetricsConfig:
    directory.mkdir(parents=True, exist_ok=True)
    events = []
    for i in range(14):
        day = dt.date(2025, 3, 3) + dt.timedelta(days=i)
        for user in ("a", "b", "c"):
            events.append(ev(f"{day}T09:00:00Z", user, "login", id=f"{user}{i}"))
        events.append(ev(f"{day}T10:00:00Z", "bot", "commit", id=f"bot{i}"))
    spec = {"start_date": "2025-03-03", "launched_on_start_date": True, "events": events}
    if excluded:
        spec["excluded_users"] = excluded
    return write_config(directory, {"alpha": spec})


_PUBLISH_SCRIPT = """
import datetime as dt
from renku_metrics.core import sources
sources.SOURCE_MODULES["fixture"] = "renku_metrics_tests.fixture_source"
from renku_metrics.core.aggregate import aggregate_period
from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.config import load_config
from renku_metrics.core.publication import publish_period
from renku_metrics.core.storage import LocalStorage

class Noisy(LocalStorage):
    def write_bytes(self, key, data):
        super().write_bytes(key, data)
        if key.startswith("metrics/"):
            print("wrote", key, flush=True)

config = load_config({config!r})
storage = Noisy({root!r})
now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
for start in (dt.date(2025, 3, 3), dt.date(2025, 3, 10)):
    result = aggregate_period(storage, config.deployments, load_catalog(), "week", start, now)
    publish_period(storage, "week", start, result.active_users, result.core_actions)
"""


def _publish_all(storage: LocalStorage, config: MetricsConfig) -> None:
    from renku_metrics.core.aggregate import aggregate_period

    for start in WEEKS:
        result = aggregate_period(storage, config.deployments, load_catalog(), "week", start, NOW)
        publish_period(storage, "week", start, result.active_users, result.core_actions)


def _alpha(frame, start):
    return frame[(frame["deployment"] == "alpha") & (frame["period_start"] == start)]


@pytest.mark.parametrize("writes_before_kill", [1, 2, 3])
def test_a_kill_between_the_two_writes_never_leaves_a_contradicting_complete_pair(
    tmp_path, fixture_source, writes_before_kill
):
    before = _config(tmp_path / "before", excluded=[])
    after = _config(tmp_path / "after", excluded=["bot"])
    storage = LocalStorage(tmp_path / "store")
    extract_days(storage, before, "2025-03-03", "2025-03-16")
    _publish_all(storage, before)  # a complete pair per week: 4 active users (a, b, c, bot)
    assert set(_alpha(read_active_users(storage=storage), WEEKS[0])["active_users"]) == {4}

    # The excluded users change (bot), then the aggregate is killed after `writes_before_kill`
    # of its 4 writes (active 1, core 1, active 2, core 2).
    script = _PUBLISH_SCRIPT.format(config=str(tmp_path / "after" / "deployments.yaml"), root=str(storage.root))
    _kill_after(textwrap.dedent(script), lines=writes_before_kill)

    active, core = read_active_users(storage=storage), read_metrics(storage=storage)
    disagreeing = 0
    for start in WEEKS:
        a, c = _alpha(active, start), _alpha(core, start)
        denominators = set(a["active_users"]) | set(c["active_users"])
        if len(denominators) > 1:  # the two tables disagree: neither may say complete
            assert denominators == {3, 4}
            disagreeing += 1
            assert not a["complete"].any() and not c["complete"].any()
            assert c["coverage_note"].str.contains("not published as a pair").all()
            assert a["coverage_note"].str.contains("core_actions_weekly of this period is from another run").all()
        else:
            assert a["complete"].all() and c["complete"].all()
    # Exactly the period whose pair was cut is refused; the schedule sees it as not complete.
    cut = WEEKS[0] if writes_before_kill == 1 else WEEKS[1] if writes_before_kill == 3 else None
    assert disagreeing == (1 if cut else 0)
    for start in WEEKS:
        assert stored_pair_complete(storage, "week", start) is (start != cut)
    refused = {s for s in WEEKS if not _alpha(read_metrics(storage=storage, complete_only=True), s).shape[0]}
    assert refused == ({cut} if cut else set())

    # The rerun converges: both tables from the new list, complete, and in agreement.
    _publish_all(storage, after)
    active, core = read_active_users(storage=storage), read_metrics(storage=storage)
    for start in WEEKS:
        a, c = _alpha(active, start), _alpha(core, start)
        assert list(a["active_users"]) == [3] and set(c["active_users"]) == {3}
        assert list(a["excluded_users"]) == [1]
        assert a["complete"].all() and c["complete"].all()
        assert stored_pair_complete(storage, "week", start)


def test_a_table_missing_its_partner_is_not_complete(tmp_path, fixture_source):
    config = _config(tmp_path / "cfg", excluded=[])
    storage = LocalStorage(tmp_path / "store")
    extract_days(storage, config, "2025-03-03", "2025-03-16")
    _publish_all(storage, config)
    storage.delete(metrics_key("core_actions_weekly", WEEKS[1]))  # as if the first write of a period crashed after
    active = read_active_users(storage=storage)
    assert list(_alpha(active, WEEKS[0])["complete"]) == [True]
    second = _alpha(active, WEEKS[1])
    assert list(second["complete"]) == [False]
    assert "core_actions_weekly of this period is missing" in second["coverage_note"].iloc[0]
    assert not stored_pair_complete(storage, "week", WEEKS[1])
