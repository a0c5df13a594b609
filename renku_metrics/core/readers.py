"""Notebook access to the stored metrics: plain pandas DataFrames, no Dagster.

``storage`` is a local directory or ``s3://bucket/prefix``; by default
$RENKU_METRICS_STORAGE, then ``./data``. On S3, credentials come from the
standard AWS variables and files, and $AWS_ENDPOINT_URL selects an
S3-compatible store.

Rows whose ``complete`` is false belong to a period that has not ended, or whose
days were not all extracted in full: they are provisional, not final. Pass
``complete_only=True`` to leave them out.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb
import pandas as pd

from renku_metrics.core.layout import day_of_key, is_events_key, metrics_prefix, raw_events_prefix
from renku_metrics.core.periods import PERIOD_SUFFIX
from renku_metrics.core.publication import PAIR, mark_unpaired
from renku_metrics.core.storage import Storage, open_storage


def _storage(storage: Storage | str | None) -> Storage:
    return storage if isinstance(storage, Storage) else open_storage(storage)


def _read_parquet_tree(store: Storage, prefix: str) -> pd.DataFrame:
    keys = [k for k in store.list_keys(prefix) if k.endswith(".parquet")]
    if not keys:
        return pd.DataFrame()
    with store.local_paths(keys) as paths:
        con = duckdb.connect()
        try:
            return con.read_parquet(paths, union_by_name=True).df()
        finally:
            con.close()


def _table(name: str, period: str, storage: Any, complete_only: bool, sort: list[str]) -> pd.DataFrame:
    if period not in PERIOD_SUFFIX:
        raise ValueError(f"period must be 'week' or 'month', got {period!r}")
    store = _storage(storage)
    frame = _read_parquet_tree(store, metrics_prefix(f"{name}_{PERIOD_SUFFIX[period]}"))
    if frame.empty:
        return frame
    if name in PAIR:
        # The two tables of a period count only as a pair written together (core.publication).
        other = PAIR[1 - PAIR.index(name)]
        other_frame = _read_parquet_tree(store, metrics_prefix(f"{other}_{PERIOD_SUFFIX[period]}"))
        frame = mark_unpaired(frame, other_frame, f"{name}_{PERIOD_SUFFIX[period]}", f"{other}_{PERIOD_SUFFIX[period]}")
    if complete_only:
        frame = frame[frame["complete"]]
    for col in ("period_start", "period_end"):
        frame[col] = pd.to_datetime(frame[col]).dt.date
    return frame.sort_values(sort, kind="stable").reset_index(drop=True)


def read_metrics(
    period: str = "week", storage: Storage | str | None = None, complete_only: bool = False
) -> pd.DataFrame:
    """Core-action metrics: deployment, period, period_start, period_end, metric, title, status,
    users, active_users, pct, complete, coverage_note, computed_at."""
    return _table("core_actions", period, storage, complete_only, ["period_start", "deployment", "metric"])


def read_active_users(
    period: str = "week", storage: Storage | str | None = None, complete_only: bool = False
) -> pd.DataFrame:
    """The denominator: deployment, period, period_start, period_end, active_users, excluded_users,
    days_expected, days_extracted, complete, coverage_note, computed_at."""
    return _table("active_users", period, storage, complete_only, ["period_start", "deployment"])


def read_events(
    deployment: str | None = None,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    storage: Storage | str | None = None,
) -> pd.DataFrame:
    """Raw canonical events, optionally of one deployment and the UTC days [start, end)."""
    store = _storage(storage)
    prefix = raw_events_prefix(deployment) if deployment else "raw_events/"
    start_d = dt.date.fromisoformat(str(start)) if start else None
    end_d = dt.date.fromisoformat(str(end)) if end else None
    keys = []
    for key in store.list_keys(prefix):
        if not is_events_key(key):
            continue
        day = day_of_key(key)
        if (start_d and day < start_d) or (end_d and day >= end_d):
            continue
        keys.append(key)
    if not keys:
        from renku_metrics.core.events import EVENT_SCHEMA

        return EVENT_SCHEMA.empty_table().to_pandas()
    with store.local_paths(keys) as paths:
        con = duckdb.connect()
        try:
            return con.execute(
                "SELECT * FROM read_parquet($paths) ORDER BY occurred_at, event_id", {"paths": paths}
            ).df()
        finally:
            con.close()


# Engagement views (renku_metrics.core.engagement, docs/engagement.md). Their ``complete``
# also requires ``history_complete``: enough gap-free history before the period for
# "new" to mean first-ever.


def _dates(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    for col in columns:
        if col in frame:
            frame[col] = pd.to_datetime(frame[col]).dt.date
    return frame


def read_lifecycle(
    period: str = "week", storage: Storage | str | None = None, complete_only: bool = False
) -> pd.DataFrame:
    """Lifecycle of active users: deployment, period, period_start, period_end, previous_period_start,
    active_users, new_users, returning_users, resurrected_users, dormant_users, previous_active_users,
    quick_ratio, history_weeks, history_complete, complete, coverage_note, computed_at."""
    frame = _table("lifecycle", period, storage, complete_only, ["period_start", "deployment"])
    return _dates(frame, ("previous_period_start",))


def read_stickiness(storage: Storage | str | None = None, complete_only: bool = False) -> pd.DataFrame:
    """Monthly stickiness: deployment, period, period_start, period_end, monthly_active_users, weeks,
    mean_weekly_active_users, wau_mau, days, mean_daily_active_users, dau_mau, complete, coverage_note,
    computed_at (ratios are 0..1)."""
    return _table("stickiness", "month", storage, complete_only, ["period_start", "deployment"])


def read_retention(storage: Storage | str | None = None, complete_only: bool = False) -> pd.DataFrame:
    """Weekly new-user retention, one row per cohort week (period_start) and deployment: cohort_users,
    retained_w1..retained_w8 (users, nullable), retention_w1..retention_w8 (percent, null while the week
    has not ended), weeks_observed, observed_until, history_weeks, history_complete, complete,
    coverage_note, computed_at."""
    frame = _table("retention", "week", storage, complete_only, ["period_start", "deployment"])
    for col in frame.columns:
        if col.startswith("retained_w"):
            frame[col] = frame[col].astype("Int64")
    return _dates(frame, ("observed_until",))


# Group metrics (renku_metrics.core.value.groups, docs/groups.md).


def read_group_metrics(
    period: str = "week",
    group: str | None = None,
    deployment: str | None = None,
    storage: Storage | str | None = None,
    complete_only: bool = False,
) -> pd.DataFrame:
    """Core-action metrics per group: period_start, period_end, deployment (incl. "all"), group,
    group_kind, metric (catalog metrics and "active_users"), members, active_members, users
    (Int64, null when withheld), pct_of_members, pct_of_active_members, membership_as_of (the
    membership snapshot used), complete, withheld_reason (set for a group below its minimum size)."""
    frame = _table("group_metrics", period, storage, complete_only, ["period_start", "deployment", "group", "metric"])
    if frame.empty:
        return frame
    if group is not None:
        frame = frame[frame["group"] == group]
    if deployment is not None:
        frame = frame[frame["deployment"] == deployment]
    for col in ("members", "active_members", "users"):
        frame[col] = frame[col].astype("Int64")
    return _dates(frame, ("membership_as_of",)).reset_index(drop=True)


# Targets (renku_metrics.core.value.targets, docs/targets.md).


def read_target_status(target: str | None = None, storage: Storage | str | None = None) -> pd.DataFrame:
    """Every stored evaluation of the targets: one row per target, evaluated period and evaluation
    week (``evaluated_week``): target, metric, measure, group, deployment, period, period_start, value,
    baseline, goal, expected, projected, status (met | on_track | off_track | missed | no_data), reason,
    comparison, start, by, owner, why, evaluated_week. A target's latest evaluation is its rows with the
    largest ``evaluated_week``; ``target`` keeps one target's rows."""
    frame = _read_parquet_tree(_storage(storage), metrics_prefix("target_status"))
    if frame.empty:
        return frame
    if target is not None:
        frame = frame[frame["target"] == target]
    frame = _dates(frame, ("period_start", "start", "by", "evaluated_week"))
    return frame.sort_values(["evaluated_week", "target", "period_start"], kind="stable").reset_index(drop=True)


# Releases and their measured impact (renku_metrics.core.value.releases / .impact, docs/releases.md).


def read_releases(deployment: str | None = None, storage: Storage | str | None = None) -> pd.DataFrame:
    """Releases per deployment: release, deployment, date (when it went live there), published_at,
    source (github|gitlab|yaml), url, description, expected_metric, expected_measure,
    expected_direction, expected_size. Empty when the releases asset has not run."""
    from renku_metrics.core.layout import releases_key
    from renku_metrics.core.value.releases import RELEASE_COLUMNS

    store = _storage(storage)
    if not store.exists(releases_key()):
        return pd.DataFrame(columns=RELEASE_COLUMNS)
    frame = store.read_parquet(releases_key()).to_pandas()
    frame = _dates(frame, ("date",))
    if deployment is not None:
        frame = frame[frame["deployment"] == deployment]
    return frame.sort_values(["deployment", "date", "release"], kind="stable").reset_index(drop=True)


def read_release_impact(
    release: str | None = None, deployment: str | None = None, storage: Storage | str | None = None
) -> pd.DataFrame:
    """Before/after verdicts: release, deployment, metric, measure (pct|users), group, release_date,
    before, after, diff, ci_low, ci_high (pooled, Newcombe), model_low, model_high, p_value, p_adjusted,
    verdict (up|down|no_change|not_enough_data|confounded|too_early), as_expected, confounded_by,
    explanation, computed_at. Empty when the release_impact asset has not run."""
    from renku_metrics.core.layout import release_impact_key
    from renku_metrics.core.value.impact import IMPACT_COLUMNS

    store = _storage(storage)
    if not store.exists(release_impact_key()):
        return pd.DataFrame(columns=IMPACT_COLUMNS)
    frame = store.read_parquet(release_impact_key()).to_pandas()
    frame = _dates(frame, ("release_date",))
    if release is not None:
        frame = frame[frame["release"] == release]
    if deployment is not None:
        frame = frame[frame["deployment"] == deployment]
    return frame.reset_index(drop=True)


def read_activation(storage: Storage | str | None = None, complete_only: bool = False) -> pd.DataFrame:
    """Weekly activation of new users, one row per cohort week (period_start) and deployment:
    cohort_users, activated_7d, activated_28d (users, nullable), activation_7d, activation_28d
    (percent of the cohort; null until 7 / 28 days after the cohort week ended), observed_until,
    history_weeks, history_complete, complete, coverage_note, computed_at."""
    frame = _table("activation", "week", storage, complete_only, ["period_start", "deployment"])
    for col in frame.columns:
        if col.startswith("activated_"):
            frame[col] = frame[col].astype("Int64")
    return _dates(frame, ("observed_until",))
