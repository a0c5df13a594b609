"""Activation of new users (``engagement.activation``), worked by hand at the 7- and 28-day edges.

Calendar (2025): W0 = Mon 2025-01-06, W1 = Mon 2025-01-13 .. Sun 2025-01-19. Both deployments
start on 2025-01-06, launched that day (so history is complete from the start), and every day
2025-01-06 .. 2025-02-23 is extracted.

alpha                                               first seen  core action (day after first seen)
    a    login 01-13, commit 01-19                  Mon W1      day 6   -> within 7 and 28
    b    login 01-13, session 01-20                 Mon W1      day 7   -> within 28 only
    c    commit 01-15                               Wed W1      day 0   -> within 7 and 28
    d    login 01-19, dataset 02-15                 Sun W1      day 27  -> within 28 only
    e    login 01-19, workflow 02-16                Sun W1      day 28  -> neither
    f    logins 01-14, 01-21                        Tue W1      none    -> neither
    g7   login 01-13 (``gitlab:7``)                 Mon W1      none    -> neither
    g    login 01-07, commit 01-13                  Tue W0      day 6   -> within 7 and 28
    bot  commit 01-13 (excluded)                    -           -
beta
    e    login 01-10                                Fri W0      none
    b    commit 01-14                               Tue W1      day 0
    g7   commit 01-14 (another GitLab's ``gitlab:7``)  Tue W1   day 0

So alpha W1: cohort 7, activated 2 within 7 days (a, c), 4 within 28 (a, b, c, d).
beta W1: cohort 2 (b, g7), both within 7. beta W0: e, not activated.
all (one person per Keycloak-derived id, GitLab-only ids per deployment): e is first seen in
W0 (on beta), b on 01-13 (alpha) with a core action on beta the next day (day 1). all W1:
a, b, c, d, f, alpha's g7, beta's g7 = 7; within 7: a, b, c, beta's g7 = 4; within 28: + d = 5.
all W0: g, e = 2; within 7 and 28: g only (e's workflow is day 37 after 01-10).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from renku_metrics.core import engagement
from renku_metrics.core.activity import record_raw_change
from renku_metrics.core.config import Deployment
from renku_metrics.core.events import (
    TimeWindow,
    events_frame,
    make_event_id,
    pseudonymize_user,
    to_arrow,
    validate_events,
)
from renku_metrics.core.layout import manifest_key, raw_events_key, user_weeks_key
from renku_metrics.core.sources.demo import Settings as DemoSettings
from renku_metrics.core.storage import LocalStorage

D = dt.date
W0, W1 = D(2025, 1, 6), D(2025, 1, 13)
LAST_DAY = D(2025, 2, 23)
BOT_KEYCLOAK_ID = "5f0c7a52-0000-4000-8000-00000000b07b"
K = {n: pseudonymize_user(f"keycloak-user-{n}") for n in "abcdefg"}
G7 = "gitlab:7"

ALPHA_EVENTS = [
    (K["a"], D(2025, 1, 13), "login"),
    (K["a"], D(2025, 1, 19), "commit"),
    (K["b"], D(2025, 1, 13), "login"),
    (K["b"], D(2025, 1, 20), "start_session"),
    (K["c"], D(2025, 1, 15), "commit"),
    (K["d"], D(2025, 1, 19), "login"),
    (K["d"], D(2025, 2, 15), "create_dataset"),
    (K["e"], D(2025, 1, 19), "login"),
    (K["e"], D(2025, 2, 16), "run_workflow"),
    (K["f"], D(2025, 1, 14), "login"),
    (K["f"], D(2025, 1, 21), "login"),
    (G7, D(2025, 1, 13), "login"),
    (K["g"], D(2025, 1, 7), "login"),
    (K["g"], D(2025, 1, 13), "commit"),
    (pseudonymize_user(BOT_KEYCLOAK_ID), D(2025, 1, 13), "commit"),
]
BETA_EVENTS = [
    (K["e"], D(2025, 1, 10), "login"),
    (K["b"], D(2025, 1, 14), "commit"),
    (G7, D(2025, 1, 14), "commit"),
]


def deployment(name: str, excluded: tuple[str, ...] = ()) -> Deployment:
    return Deployment(
        name=name,
        start_date=W0,
        sources={"demo": DemoSettings()},
        excluded_users=excluded,
        launched_on_start_date=True,
    )


ALPHA = deployment("alpha", (BOT_KEYCLOAK_ID,))
BETA = deployment("beta")


def write_day(storage, name: str, day: dt.date, events: list[tuple[str, str]], complete: bool = True) -> None:
    """One extracted day as the extract stores it: events Parquet, the manifest, the change note."""
    records = [
        {
            "event_id": make_event_id(name, "demo", user, day, action),
            "deployment": name,
            "occurred_at": dt.datetime.combine(day, dt.time(23, 59), dt.timezone.utc),
            "user_id": user,
            "action": action,
            "project_id": None,
            "project_visibility": None,
            "source": "demo",
        }
        for user, action in events
    ]
    valid, rejected = validate_events(events_frame(records), TimeWindow.for_day(day), name)
    assert not rejected
    storage.write_parquet(raw_events_key(name, day), to_arrow(valid))
    storage.write_json(
        manifest_key(name, day),
        {
            "deployment": name,
            "date": day.isoformat(),
            "row_count": len(valid),
            "users": len({u for u, _ in events}),
            "sources": {
                "demo": {
                    "complete": complete,
                    "coverage_note": "" if complete else "upstream events already expired",
                    "events": len(valid),
                }
            },
        },
    )
    record_raw_change(storage, name, [day])


def write_history(storage, dep: Deployment, events, incomplete=()) -> None:
    by_day: dict[dt.date, list[tuple[str, str]]] = {}
    for user, day, action in events:
        by_day.setdefault(day, []).append((user, action))
    day = dep.start_date
    while day <= LAST_DAY:
        write_day(storage, dep.name, day, by_day.get(day, []), complete=day not in incomplete)
        day += dt.timedelta(days=1)


@pytest.fixture
def storage(tmp_path):
    store = LocalStorage(tmp_path / "data")
    write_history(store, ALPHA, ALPHA_EVENTS)
    write_history(store, BETA, BETA_EVENTS)
    return store


def at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(6), dt.timezone.utc)


def row(frame: pd.DataFrame, deployment: str, start: dt.date) -> pd.Series:
    rows = frame[(frame["deployment"] == deployment) & (frame["period_start"] == start)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def figures(r: pd.Series) -> tuple:
    def value(v):
        return None if pd.isna(v) else v

    return (
        int(r["cohort_users"]),
        value(r["activated_7d"]),
        value(r["activated_28d"]),
        value(r["activation_7d"]),
        value(r["activation_28d"]),
    )


def test_activation_at_the_7_and_28_day_edges(storage):
    frame = engagement.activation(storage, [ALPHA, BETA], [W0, W1], at(D(2025, 2, 17)))
    assert figures(row(frame, "alpha", W1)) == (7, 2, 4, 28.57, 57.14)
    assert figures(row(frame, "beta", W1)) == (2, 2, 2, 100.0, 100.0)
    assert figures(row(frame, "all", W1)) == (7, 4, 5, 57.14, 71.43)
    assert figures(row(frame, "alpha", W0)) == (1, 1, 1, 100.0, 100.0)
    assert figures(row(frame, "beta", W0)) == (1, 0, 0, 0.0, 0.0)
    assert figures(row(frame, "all", W0)) == (2, 1, 1, 50.0, 50.0)
    w1 = frame[frame["period_start"] == W1]
    # 2025-02-17 = W1 + 7 + 28 days: W1 is complete on every row; W0 was complete a week earlier
    assert w1["complete"].all() and (w1["observed_until"] == D(2025, 2, 17)).all()
    assert list(frame.columns[:9]) == [
        "deployment",
        "period",
        "period_start",
        "period_end",
        "cohort_users",
        "activated_7d",
        "activated_28d",
        "activation_7d",
        "activation_28d",
    ]


def test_activation_is_null_until_its_windows_have_ended(storage):
    # 2025-01-26: the 7-day window of a user first seen on Sunday 01-19 ends with 01-25,
    # but a cohort's 7-day figure is only given 7 days after its week ended (01-27).
    early = row(engagement.activation(storage, [ALPHA], W1, at(D(2025, 1, 26))), "alpha", W1)
    assert figures(early) == (7, None, None, None, None)
    assert not early["complete"] and "end by 2025-02-17" in early["coverage_note"]
    week_later = row(engagement.activation(storage, [ALPHA], W1, at(D(2025, 1, 27))), "alpha", W1)
    assert figures(week_later) == (7, 2, None, 28.57, None)
    # The day before the 28-day windows have all ended: d's dataset (02-15) is already seen,
    # but the figure is withheld and the row is not complete.
    last_day = row(engagement.activation(storage, [ALPHA], W1, at(D(2025, 2, 16))), "alpha", W1)
    assert figures(last_day) == (7, 2, None, 28.57, None) and not last_day["complete"]


def test_activation_days_from_today_on_are_not_read(storage):
    # Run on 01-19 (Sunday of W1, at 06:00): a's commit later that day is not counted yet, and
    # the cohort holds only the users first seen before today (d and e are first seen on 01-19).
    frame = engagement.activation(storage, [ALPHA], W1, at(D(2025, 1, 19)))
    assert figures(row(frame, "alpha", W1)) == (5, None, None, None, None)


def test_an_incomplete_day_in_the_window_keeps_the_cohort_provisional(tmp_path):
    store = LocalStorage(tmp_path / "data")
    write_history(store, ALPHA, ALPHA_EVENTS, incomplete={D(2025, 2, 10)})
    r = row(engagement.activation(store, [ALPHA], W1, at(D(2025, 3, 1))), "alpha", W1)
    assert figures(r) == (7, 2, 4, 28.57, 57.14)
    assert not r["complete"] and "2025-02-10 demo: upstream events already expired" in r["coverage_note"]


def test_activation_needs_history_before_the_cohort(storage):
    not_launched = Deployment(name="alpha", start_date=W0, sources={"demo": DemoSettings()})
    r = row(engagement.activation(storage, [not_launched], W1, at(D(2025, 3, 1))), "alpha", W1)
    # No exclusions here: the bot (first seen 01-13 with a commit) joins the cohort and activates.
    assert figures(r) == (8, 3, 5, 37.5, 62.5)
    assert not r["history_complete"] and not r["complete"]


def test_user_weeks_stored_without_core_days_are_rebuilt(storage, tmp_path):
    now = at(D(2025, 2, 17))
    first = engagement.activation(storage, [ALPHA, BETA], [W0, W1], now)
    # A user week as an older version stored it: no core_days column, same signature.
    key = user_weeks_key("alpha", W1)
    old = storage.read_parquet(key)
    assert old.column("core_days").null_count == 0
    storage.write_parquet(key, old.drop_columns(["core_days"]).replace_schema_metadata(old.schema.metadata))
    # Lifecycle does not need core days: it reads the old week as it is.
    engagement.lifecycle(storage, [ALPHA], "week", W1, now, warmup_weeks=0)
    assert "core_days" not in storage.read_parquet(key).schema.names
    again = engagement.activation(storage, [ALPHA, BETA], [W0, W1], now)
    pd.testing.assert_frame_equal(first.drop(columns="computed_at"), again.drop(columns="computed_at"))
    assert storage.read_parquet(key).column("core_days").type == pa.uint8()


def test_materialize_activation_and_read_it(storage):
    import warnings

    from dagster import AssetKey, DagsterInstance, materialize

    from renku_metrics import read_activation
    from renku_metrics.core.config import MetricsConfig
    from renku_metrics.core.layout import metrics_key
    from renku_metrics.defs.engagement.assets import build_engagement_assets
    from renku_metrics.defs.engagement.checks import check_activation
    from renku_metrics.defs.resources import MetricsStorageResource

    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    config = MetricsConfig("test", (ALPHA, BETA))
    asset = next(a for a in build_engagement_assets(config)["week"] if a.key == AssetKey("activation_weekly"))
    instance = DagsterInstance.ephemeral()
    # The weekly run on Monday 2025-02-17 for the week just ended (W5 = 2025-02-10): it also refreshes
    # the 4 cohorts before it, W1..W4, and W1's 28-day windows have just all ended.
    result = materialize(
        [asset],
        partition_key="2025-02-10",
        resources={"metrics_storage": MetricsStorageResource(root=storage.root)},
        instance=instance,
        tags={"renku_metrics/now": "2025-02-17T04:00:00+00:00"},
    )
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"activated_within_cohort": True, "one_row_per_key": True, "deployments_present": True}
    recorded = instance.fetch_materializations(AssetKey("activation_weekly"), limit=10).records
    assert {r.partition_key for r in recorded} == {"2025-01-13", "2025-01-20", "2025-01-27", "2025-02-03", "2025-02-10"}
    assert not storage.exists(metrics_key("activation_weekly", W0))  # five cohorts back: final already
    frame = read_activation(storage=storage)
    assert figures(row(frame, "all", W1)) == (7, 4, 5, 57.14, 71.43)
    assert str(frame["activated_7d"].dtype) == "Int64" and isinstance(frame["observed_until"].iloc[0], dt.date)
    final = read_activation(storage=storage, complete_only=True)
    assert set(final["period_start"]) == {W1}
    # The check fails rows that contradict themselves: more activated within 7 days than within 28.
    bad = frame[frame["period_start"] == W1].copy()
    bad.loc[bad["deployment"] == "alpha", "activated_7d"] = 5
    assert not check_activation(bad, config)["activated_within_cohort"][0]


def test_report_shows_the_latest_complete_cohort_and_a_line_per_week(storage):
    from renku_metrics.defs.metadata import markdown_table, table_rows
    from renku_metrics.defs.report.assets import build_report

    frame = engagement.activation(storage, [ALPHA, BETA], [W0, W1, W1 + dt.timedelta(days=7)], at(D(2025, 2, 17)))
    text, charts, meta = build_report(pd.DataFrame(), pd.DataFrame(), activation=frame)
    assert meta["latest_complete_activation_cohort"] == "2025-01-13"  # W2 = 01-20 is still open
    assert "## Latest complete activation cohort: 2025-01-13" in text
    assert meta["activation/all/within_7d_pct"] == 57.14 and meta["activation/alpha/within_28d_pct"] == 57.14
    assert charts["weekly_activation"].startswith(b"\x89PNG\r\n\x1a\n")
    table = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    rows = {r["deployment"]: r for r in table_rows(markdown_table(table))}
    assert rows["all"]["core action within 7 days"] == "57% (4)" and rows["beta"]["within 28 days"] == "100% (2)"
