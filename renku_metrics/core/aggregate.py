"""Weekly and monthly aggregation in DuckDB, straight over the Parquet files.

A period (ISO week from Monday 00:00 UTC, or calendar month in UTC) is computed
from exactly the daily raw-event objects it covers, so a run's cost depends on
the period, not on the length of history. No per-row Python, no Dagster.

Definitions (also in docs/design.md):

* active users of a deployment in a period: distinct user ids with at least one
  event of any action (login, commit, dataset creation, workflow run, session
  start) in the period, after the deployment's ``excluded_users``;
* a metric's users: distinct user ids with at least one event of any of the
  metric's catalog actions in the period;
* ``pct`` = 100 * users / active users, null when nobody was active;
* the ``all`` rollup counts distinct user ids across deployments: the same
  Keycloak-derived id on two deployments is one person; GitLab-only ids
  (``gitlab:<n>``) are per GitLab instance and so never merged across deployments;
* a row is ``complete`` when the period has ended, the deployment's history
  covers the whole period, every day's partition is extracted and every source
  read its whole window. Incomplete rows must not be presented as final.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import pandas as pd

from renku_metrics.core.catalog import Catalog
from renku_metrics.core.config import Deployment
from renku_metrics.core.coverage import DeploymentCoverage, coverage_for
from renku_metrics.core.events import ALL_DEPLOYMENTS, ROLLUP_USER_SQL
from renku_metrics.core.periods import Period, period_bounds
from renku_metrics.core.storage import Storage

_AGGREGATE_SQL = """
WITH kept AS (
    SELECT e.deployment, e.user_id, e.action
    FROM events e
    WHERE e.occurred_at >= $start AND e.occurred_at < $end
      AND NOT EXISTS (
          SELECT 1 FROM excluded x WHERE x.deployment = e.deployment AND x.user_id = e.user_id)
),
with_all AS (
    SELECT deployment, user_id, action FROM kept
    UNION ALL
    -- GitLab-only ids are per GitLab instance: keep them apart across deployments.
    SELECT $all_name, {rollup_user}, action
    FROM kept
),
active AS (
    SELECT deployment, count(DISTINCT user_id) AS active_users FROM with_all GROUP BY deployment
),
did AS (
    SELECT w.deployment, ma.metric, count(DISTINCT w.user_id) AS users
    FROM with_all w JOIN metric_actions ma ON w.action = ma.action
    GROUP BY w.deployment, ma.metric
)
SELECT d.deployment, m.metric,
       coalesce(did.users, 0) AS users,
       coalesce(active.active_users, 0) AS active_users
FROM deployments d
CROSS JOIN metric_list m
LEFT JOIN active ON active.deployment = d.deployment
LEFT JOIN did ON did.deployment = d.deployment AND did.metric = m.metric
ORDER BY d.position, m.position
""".replace("{rollup_user}", ROLLUP_USER_SQL)


@dataclass
class PeriodAggregate:
    core_actions: pd.DataFrame
    active_users: pd.DataFrame
    excluded_users: dict[str, int]
    coverage: dict[str, DeploymentCoverage]


def aggregate_period(
    storage: Storage,
    deployments: list[Deployment] | tuple[Deployment, ...],
    catalog: Catalog,
    period: Period,
    start: dt.date,
    now: dt.datetime,
) -> PeriodAggregate:
    """Core-action users and active users of every deployment (and ``all``) in one period."""
    start, end = period_bounds(period, start)
    today = now.astimezone(dt.timezone.utc).date()
    ended = today >= end
    measured = [d for d in deployments if d.start_date < end]
    coverage = {d.name: coverage_for(storage, d, start, end, today) for d in measured}
    keys = [k for c in coverage.values() for k in c.event_keys]
    metrics = catalog.computed()

    con = duckdb.connect()
    try:
        with storage.local_paths(keys) as paths:
            if paths:
                con.read_parquet(paths).create_view("events")
            else:
                con.execute(
                    "CREATE TABLE events (deployment VARCHAR, user_id VARCHAR, action VARCHAR, occurred_at TIMESTAMPTZ)"
                )
            names = [d.name for d in measured] + [ALL_DEPLOYMENTS]
            con.register("deployments", pd.DataFrame({"deployment": names, "position": range(len(names))}))
            con.register(
                "metric_list", pd.DataFrame({"metric": [m.id for m in metrics], "position": range(len(metrics))})
            )
            pairs = catalog.metric_actions()
            con.register("metric_actions", pd.DataFrame(pairs, columns=["metric", "action"]))
            excluded = [(d.name, key) for d in measured for key in d.excluded_user_keys()]
            con.register("excluded", pd.DataFrame(excluded, columns=["deployment", "user_id"]))
            params = {
                "start": dt.datetime.combine(start, dt.time(), dt.timezone.utc),
                "end": dt.datetime.combine(end, dt.time(), dt.timezone.utc),
                "all_name": ALL_DEPLOYMENTS,
            }
            rows = con.execute(_AGGREGATE_SQL, params).df()
            excluded_counts = dict(
                con.execute(
                    """SELECT x.deployment, count(DISTINCT x.user_id) FROM excluded x
                       WHERE EXISTS (SELECT 1 FROM events e WHERE e.deployment = x.deployment
                                     AND e.user_id = x.user_id AND e.occurred_at >= $start AND e.occurred_at < $end)
                       GROUP BY x.deployment""",
                    {"start": params["start"], "end": params["end"]},
                ).fetchall()
            )
    finally:
        con.close()

    def complete_of(name: str) -> bool:
        if name == ALL_DEPLOYMENTS:
            return bool(coverage) and all(c.is_complete(ended) for c in coverage.values())
        return coverage[name].is_complete(ended)

    def note_of(name: str) -> str:
        if name == ALL_DEPLOYMENTS:
            return "; ".join(f"{n}: {c.note(ended)}" for n, c in coverage.items() if c.note(ended))
        return coverage[name].note(ended)

    computed_at = pd.Timestamp(now).tz_convert("UTC")
    meta_cols = {
        "period": period,
        "period_start": start,
        "period_end": end,
    }
    rows["pct"] = (100.0 * rows["users"] / rows["active_users"]).where(rows["active_users"] > 0)
    rows["pct"] = rows["pct"].round(2)
    titles = {m.id: m.title for m in metrics}
    statuses = {m.id: m.status for m in metrics}
    core = pd.DataFrame(
        {
            "deployment": rows["deployment"],
            **{k: v for k, v in meta_cols.items()},
            "metric": rows["metric"],
            "title": rows["metric"].map(titles),
            "status": rows["metric"].map(statuses),
            "users": rows["users"].astype("int64"),
            "active_users": rows["active_users"].astype("int64"),
            "pct": rows["pct"].astype("float64"),
        }
    )
    core["complete"] = core["deployment"].map(complete_of).astype(bool)
    core["coverage_note"] = core["deployment"].map(note_of)
    core["computed_at"] = computed_at

    active = (
        rows.drop_duplicates("deployment")[["deployment", "active_users"]].reset_index(drop=True)
        if len(rows)
        else pd.DataFrame({"deployment": names, "active_users": 0})
    )
    active_users = pd.DataFrame(
        {
            "deployment": active["deployment"],
            **{k: v for k, v in meta_cols.items()},
            "active_users": active["active_users"].astype("int64"),
        }
    )
    excluded_total = {n: int(excluded_counts.get(n, 0)) for n in coverage}
    excluded_total[ALL_DEPLOYMENTS] = sum(excluded_total.values())
    active_users["excluded_users"] = active_users["deployment"].map(excluded_total).astype("int64")
    active_users["days_expected"] = (
        active_users["deployment"]
        .map(
            lambda n: (
                sum(c.days_expected for c in coverage.values()) if n == ALL_DEPLOYMENTS else coverage[n].days_expected
            )
        )
        .astype("int64")
    )
    active_users["days_extracted"] = (
        active_users["deployment"]
        .map(
            lambda n: (
                sum(c.days_extracted for c in coverage.values()) if n == ALL_DEPLOYMENTS else coverage[n].days_extracted
            )
        )
        .astype("int64")
    )
    active_users["complete"] = active_users["deployment"].map(complete_of).astype(bool)
    active_users["coverage_note"] = active_users["deployment"].map(note_of)
    active_users["computed_at"] = computed_at
    for frame in (core, active_users):
        for col in ("period_start", "period_end"):
            frame[col] = pd.to_datetime(frame[col]).dt.date
    return PeriodAggregate(
        core_actions=core, active_users=active_users, excluded_users=excluded_total, coverage=coverage
    )
