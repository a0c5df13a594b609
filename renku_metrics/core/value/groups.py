"""Group metrics: the core-action metrics of a team or an institution, as a share of its members.

Two steps, both plain Python (no Dagster):

1. **Membership snapshots** (``take_snapshot``). Who belongs to which configured group
   (``core/sources/groups.py``) is read from the deployment's directory and stored as
   ``(snapshot_date, group, group_kind, user_key)`` under
   ``groups/membership/deployment=<name>/week=<Monday>/snapshot=<day>.parquet``: one snapshot
   per weekly partition. Keycloak keeps no membership history, so a snapshot is what the
   directory says on the day it is taken (``snapshot_date``). Rerunning the partition of the
   week just ended replaces its snapshot; an older partition that already has one keeps it
   (taking one now would put today's membership in place of the one seen then). The demo
   generator knows past membership and snapshots each week at its end.

2. **Group metrics** (``group_metrics``). For a period [start, end) the snapshot used is the
   latest taken on or before ``end`` (the Monday after a week, the 1st after a month); a period
   before the first snapshot uses the earliest one. Every row names it in ``membership_as_of``.
   Activity comes from the per-week user sets that the weekly aggregate stores as a by-product
   (``core/activity.py``: each user's days per action in each ISO week), so a period reads one
   user week (a week) or the 4-6 overlapping it (a month): the cost does not grow with history.
   For each group, metric and deployment (and ``all``, the union of a group's members and their
   activity across deployments):

   * ``members``: group members (after the deployment's ``excluded_users``);
   * ``active_members``: members with any event in the period;
   * ``users``: members who did the metric's actions (for ``active_users``: = active_members);
   * ``pct_of_members`` = 100 * users / members; ``pct_of_active_members`` = 100 * users /
     active_members (null when no member was active);
   * ``complete``: the period's stored denominator (``active_users_<period>``) is complete;
   * a group with fewer members than ``min_size`` gets no counts, only ``withheld_reason``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from renku_metrics.core.activity import DeploymentActivity
from renku_metrics.core.catalog import Catalog
from renku_metrics.core.config import Deployment
from renku_metrics.core.events import ALL_DEPLOYMENTS
from renku_metrics.core.events import KNOWN_ACTIONS as ACTIONS  # the bit order of action_days (activity.py)
from renku_metrics.core.layout import membership_key, membership_of_key, membership_prefix, metrics_key
from renku_metrics.core.periods import PERIOD_SUFFIX, Period, period_bounds, week_start
from renku_metrics.core.sources.groups import MEMBERSHIP_COLUMNS, Directory, directory_for, extract_membership
from renku_metrics.core.storage import Storage

ACTIVE_USERS = "active_users"
TABLES = {"week": "group_metrics_weekly", "month": "group_metrics_monthly"}
SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("snapshot_date", pa.date32(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("group_kind", pa.string(), nullable=False),
        pa.field("user_key", pa.string(), nullable=False),
    ]
)
COLUMNS = (
    "period_start",
    "period_end",
    "deployment",
    "group",
    "group_kind",
    "metric",
    "members",
    "active_members",
    "users",
    "pct_of_members",
    "pct_of_active_members",
    "membership_as_of",
    "complete",
    "withheld_reason",
)
# A partition this long or longer after its week's end keeps the snapshot it has.
RETAKE_WINDOW = dt.timedelta(days=7)


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Snapshot:
    deployment: str
    week: dt.date
    snapshot_date: dt.date
    key: str
    rows: int
    groups: int
    taken: bool  # False: an older partition kept the snapshot it had
    note: str = ""


def snapshot_index(storage: Storage, deployment: str) -> list[tuple[dt.date, dt.date, str]]:
    """(partition week, snapshot date, key) of every stored snapshot of a deployment, oldest first."""
    out = []
    for key in storage.list_keys(membership_prefix(deployment)):
        parsed = membership_of_key(key)
        if parsed is not None:
            out.append((*parsed, key))
    return sorted(out)


def take_snapshot(
    storage: Storage,
    deployment: Deployment,
    week: dt.date,
    now: dt.datetime,
    env: Mapping[str, str],
    directory: Directory | None = None,
    has_history: bool | None = None,
    cache: dict | None = None,
) -> Snapshot:
    """Store the membership snapshot of ``deployment`` for the weekly partition ``week``.

    A directory with history (the demo) is asked for membership on the week's end (or today if
    earlier); Keycloak for membership today. A partition whose week ended ``RETAKE_WINDOW`` or
    more ago (the next weekly run) and already has a snapshot keeps it. ``cache`` (a dict kept over one run)
    saves reading the directory again for another partition whose snapshot is of the same day.
    """
    if deployment.groups is None:
        raise ValueError(f"deployment {deployment.name!r} has no groups configured")
    week = week_start(week)
    today = now.astimezone(dt.timezone.utc).date()
    end = week + dt.timedelta(days=7)
    existing = [(w, s, k) for w, s, k in snapshot_index(storage, deployment.name) if w == week]
    on = min(today, end)
    if directory is None:
        directory, has_history = directory_for(deployment.name, deployment.sources, env, on)
    has_history = bool(has_history)
    snapshot_date = on if has_history else today
    if existing and not has_history and today >= end + RETAKE_WINDOW:
        _, kept_date, key = existing[-1]
        table = storage.read_parquet(key)
        return Snapshot(
            deployment.name,
            week,
            kept_date,
            key,
            table.num_rows,
            len(set(table.column("group").to_pylist())),
            taken=False,
            note=(
                f"kept the snapshot of {kept_date}: Keycloak keeps no membership history, so a snapshot "
                f"taken today ({today}) would not show week {week}"
            ),
        )
    where = f"deployment {deployment.name!r}"
    if cache is not None and snapshot_date in cache:
        frame = cache[snapshot_date]
    else:
        frame = extract_membership(deployment.groups, directory, where)
        if cache is not None:
            cache[snapshot_date] = frame
    table = pa.table(
        {
            "snapshot_date": pa.array([snapshot_date] * len(frame), pa.date32()),
            "group": pa.array(frame["group"].tolist(), pa.string()),
            "group_kind": pa.array(frame["group_kind"].tolist(), pa.string()),
            "user_key": pa.array(frame["user_key"].tolist(), pa.string()),
        },
        schema=SNAPSHOT_SCHEMA,
    )
    key = membership_key(deployment.name, week, snapshot_date)
    storage.write_parquet(key, table)
    for _, _, old in existing:  # written first, then the partition's other snapshot removed
        if old != key:
            storage.delete(old)
    return Snapshot(deployment.name, week, snapshot_date, key, len(frame), frame["group"].nunique(), taken=True)


def choose_snapshot(index: Sequence[tuple[dt.date, dt.date, str]], period_end: dt.date) -> tuple[dt.date, str] | None:
    """(snapshot date, key) for a period ending (exclusive) on ``period_end``: the latest snapshot
    taken on or before that day; before the first snapshot, the earliest one; None without any."""
    if not index:
        return None
    before = [(s, w, k) for w, s, k in index if s <= period_end]
    if before:
        s, _, k = max(before)
        return s, k
    s, _, k = min((s, w, k) for w, s, k in index)
    return s, k


def read_snapshot(storage: Storage, key: str) -> pd.DataFrame:
    return storage.read_parquet(key).to_pandas().loc[:, list(MEMBERSHIP_COLUMNS)]


# --------------------------------------------------------------------------- activity


def _day_mask(week: dt.date, start: dt.date, end: dt.date) -> int:
    """Bits i of the ISO week's days (Monday + i) that lie in [start, end)."""
    return sum(1 << i for i in range(7) if start <= week + dt.timedelta(days=i) < end)


def period_activity(state: DeploymentActivity, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Each user active in [start, end): index user_key, one bool column per action (excluded users left out)."""
    weeks = []
    w = week_start(start)
    while w < end:
        weeks.append(w)
        w += dt.timedelta(days=7)
    table = state.user_weeks(weeks)
    excluded = set(state.deployment.excluded_user_keys())
    if table.num_rows == 0:
        return pd.DataFrame(columns=list(ACTIONS), index=pd.Index([], name="user_key"), dtype=bool)
    users = np.array(table.column("user_id").to_pylist(), dtype=object)
    action_days = table.column("action_days").to_numpy().astype(np.uint64)
    masks = np.array([_day_mask(x, start, end) for x in table.column("week").to_pylist()], dtype=np.uint64)
    data = {
        a: ((action_days >> np.uint64(7 * i)) & masks) != 0  # this action on a day of the period
        for i, a in enumerate(ACTIONS)
    }
    frame = pd.DataFrame(data)
    frame["user_key"] = users
    frame = frame[~frame["user_key"].isin(excluded)]
    frame = frame[frame[list(ACTIONS)].any(axis=1)]
    return frame.groupby("user_key")[list(ACTIONS)].max()


# --------------------------------------------------------------------------- metrics


def _withheld_reason(min_size: int) -> str:
    return f"fewer than {min_size} members (groups.min_size): counts withheld so that individuals cannot be singled out"


def _group_rows(
    membership: pd.DataFrame,
    activity: pd.DataFrame,
    metrics: list[tuple[str, tuple[str, ...]]],
    as_of: Mapping[tuple[str, str], dt.date],
    min_size: Mapping[tuple[str, str], int],
) -> list[dict]:
    """Rows (without period and deployment) of every group of ``membership`` against ``activity``."""
    rows: list[dict] = []
    if membership.empty:
        return rows
    members = membership.drop_duplicates(["group", "group_kind", "user_key"])
    joined = members.merge(activity, how="left", left_on="user_key", right_index=True)
    flags = joined[list(ACTIONS)].fillna(False).astype(bool)
    columns = {"_members": pd.Series(1, index=joined.index), "_active": flags.any(axis=1)}
    for metric, actions in metrics:
        columns[f"_m_{metric}"] = flags[list(actions)].any(axis=1)
    counts = pd.DataFrame(columns).astype("int64")
    counts["group"], counts["group_kind"] = joined["group"], joined["group_kind"]
    sums = counts.groupby(["group", "group_kind"], sort=True).sum()
    for (group, kind), agg in zip(sums.index, sums.to_dict("records"), strict=True):
        n, active = int(agg["_members"]), int(agg["_active"])
        smallest = min_size[group, kind]
        withheld = n < smallest
        for metric, _ in [*metrics, (ACTIVE_USERS, ())]:
            users = active if metric == ACTIVE_USERS else int(agg[f"_m_{metric}"])
            rows.append(
                {
                    "group": group,
                    "group_kind": kind,
                    "metric": metric,
                    "members": None if withheld else n,
                    "active_members": None if withheld else active,
                    "users": None if withheld else users,
                    "pct_of_members": None if withheld or not n else round(100.0 * users / n, 2),
                    "pct_of_active_members": None if withheld or not active else round(100.0 * users / active, 2),
                    "membership_as_of": as_of[group, kind],
                    "withheld_reason": _withheld_reason(smallest) if withheld else None,
                }
            )
    return rows


def _stored_complete(storage: Storage, period: Period, start: dt.date) -> dict[str, bool]:
    """{deployment: complete} from the period's stored denominator (missing: nothing is complete)."""
    key = metrics_key(f"active_users_{PERIOD_SUFFIX[period]}", start)
    if not storage.exists(key):
        return {}
    frame = storage.read_parquet(key).to_pandas()
    return {r.deployment: bool(r.complete) for r in frame.itertuples()}


def group_metrics(
    storage: Storage,
    deployments: Sequence[Deployment],
    catalog: Catalog,
    period: Period,
    starts: Sequence[dt.date],
    states: Mapping[str, DeploymentActivity] | None = None,
) -> pd.DataFrame:
    """Group metrics of the periods beginning on ``starts`` (columns ``COLUMNS``, see the module doc)."""
    grouped = [d for d in deployments if d.groups is not None]
    states = dict(states or {})
    metrics = [(m.id, tuple(m.actions)) for m in catalog.computed()]
    indexes = {d.name: snapshot_index(storage, d.name) for d in grouped}
    snapshots: dict[str, pd.DataFrame] = {}
    out: list[dict] = []
    for start in sorted(set(starts)):
        _, end = period_bounds(period, start)
        complete = _stored_complete(storage, period, start)
        all_members, all_activity, all_as_of, all_min = [], [], {}, {}
        for d in grouped:
            if d.start_date >= end:
                continue
            chosen = choose_snapshot(indexes[d.name], end)
            if chosen is None:
                continue
            as_of, key = chosen
            if key not in snapshots:
                snapshots[key] = read_snapshot(storage, key)
            membership = snapshots[key]
            if excluded := set(d.excluded_user_keys()):
                membership = membership[~membership["user_key"].isin(excluded)]
            if d.name not in states:
                states[d.name] = DeploymentActivity.load(storage, d)
            activity = period_activity(states[d.name], start, end)
            distinct = membership[["group", "group_kind"]].drop_duplicates()
            pairs = set(zip(distinct["group"].tolist(), distinct["group_kind"].tolist(), strict=True))
            for row in _group_rows(
                membership, activity, metrics, dict.fromkeys(pairs, as_of), dict.fromkeys(pairs, d.groups.min_size)
            ):
                out.append({"period_start": start, "period_end": end, "deployment": d.name, **row})
                out[-1]["complete"] = complete.get(d.name, False)
            all_members.append(membership)
            all_activity.append(activity)
            for pair in pairs:
                all_as_of[pair] = min(all_as_of.get(pair, as_of), as_of)
                all_min[pair] = max(all_min.get(pair, 0), d.groups.min_size)
        if all_members:
            membership = pd.concat(all_members).drop_duplicates()
            activity = pd.concat(all_activity).groupby(level=0).max() if all_activity else pd.DataFrame()
            for row in _group_rows(membership, activity, metrics, all_as_of, all_min):
                out.append({"period_start": start, "period_end": end, "deployment": ALL_DEPLOYMENTS, **row})
                out[-1]["complete"] = complete.get(ALL_DEPLOYMENTS, False)
    return _frame(out)


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("members", "active_members", "users"):
        frame[col] = frame[col].astype("Int64")
    for col in ("pct_of_members", "pct_of_active_members"):
        frame[col] = frame[col].astype("float64")
    frame["complete"] = frame["complete"].astype(bool)
    for col in ("period_start", "period_end", "membership_as_of"):
        frame[col] = pd.Series([v for v in frame[col]], dtype="object")
    for col in ("deployment", "group", "group_kind", "metric"):
        frame[col] = frame[col].astype("object")
    frame["withheld_reason"] = pd.Series(
        [v if isinstance(v, str) else None for v in frame["withheld_reason"]], dtype="object"
    )
    return frame


def summary(frame: pd.DataFrame, metrics: Sequence[str] = ("start_session", "commit")) -> str:
    """A short text table of group metrics: per period, deployment and group, the members, the active
    members and each of ``metrics`` as "users (share of members)"; withheld groups say so."""
    if frame.empty:
        return "(no group metrics)"
    lines = []
    for (start, deployment, group), part in frame.groupby(["period_start", "deployment", "group"], sort=True):
        first = part.iloc[0]
        if isinstance(first["withheld_reason"], str):
            cells = ["withheld: " + first["withheld_reason"].split(":")[0]]
        else:
            cells = [f"members {int(first['members'])}", f"active {int(first['active_members'])}"]
            for metric in metrics:
                row = part[part["metric"] == metric]
                if len(row):
                    r = row.iloc[0]
                    cells.append(f"{metric} {int(r['users'])} ({r['pct_of_members']:.0f}%)")
        lines.append(f"  {start}  {deployment:<11} {group:<22} " + ", ".join(cells))
    return "\n".join(lines)
