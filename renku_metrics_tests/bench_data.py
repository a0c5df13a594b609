"""Synthetic raw-event history in the stored layout, generated fast (DuckDB, no per-event Python).

Used by ``make benchmark`` (renku_metrics_tests/benchmarks.py). The history has
``deployments`` deployments of ``days`` daily partitions each (events Parquet in
EVENT_SCHEMA, then the manifest, exactly where the raw events asset puts them),
``events`` events in all, and md5-hex user ids (2 % GitLab-only ``gitlab:<n>``
ids). Users join over time (a deployment's pool of ``users`` grows linearly over
the history) and older users are more active, so there are new, returning,
resurrected and dormant users in every week. Neighbouring deployments share half
of their users, so the ``all`` rollup merges people across deployments.
Deterministic: the same arguments give the same files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import duckdb

from renku_metrics.core.config import Deployment
from renku_metrics.core.events import ACTIONS
from renku_metrics.core.layout import manifest_key, raw_events_key
from renku_metrics.core.sources.demo import Settings as DemoSettings

START = dt.date(2023, 1, 2)  # a Monday
# Share of events per action (login, commit, create_dataset, run_workflow, start_session).
ACTION_WEIGHTS = (0.50, 0.25, 0.03, 0.07, 0.15)
CHUNK_DAYS = 91


def bench_deployments(count: int, start: dt.date = START) -> list[Deployment]:
    return [
        Deployment(name=f"bench{i}", start_date=start, sources={"demo": DemoSettings()}, launched_on_start_date=True)
        for i in range(count)
    ]


def users_for(events: int) -> int:
    """Users per deployment: 20,000 at 100 million events, proportionally fewer below (at least 500)."""
    return max(500, round(20_000 * events / 100_000_000))


_ACTION_CASE = (
    "CASE "
    + " ".join(f"WHEN a < {sum(ACTION_WEIGHTS[: i + 1]):.4f} THEN '{action}'" for i, action in enumerate(ACTIONS))
    + f" ELSE '{ACTIONS[0]}' END"
)

_CHUNK_SQL = f"""
CREATE OR REPLACE TEMP TABLE chunk AS
WITH rows AS (
    SELECT k, i,
           (hash(k * 1000003 + i, 11) % 1000000) / 1e6 AS r_user,
           (hash(k * 1000003 + i, 13) % 1000000) / 1e6 AS a,
           CAST(hash(k * 1000003 + i, 17) % 86400000000 AS BIGINT) AS micros
    FROM range($k0, $k1) t(k), range($per_day) s(i)
),
picked AS (
    SELECT k, i, a, micros,
           -- the pool grows over the history; older (lower) users are picked more often
           CAST(floor(pow(r_user, 1.6) * greatest(50, $users * (k + 60) / ($days + 60))) AS BIGINT)
             + $offset AS g
    FROM rows
)
SELECT md5($name || '/' || CAST(k AS VARCHAR) || '/' || CAST(i AS VARCHAR)) AS event_id,
       $name AS deployment,
       CAST($start AS TIMESTAMPTZ) + to_days(CAST(k AS INTEGER)) + to_microseconds(micros) AS occurred_at,
       CASE WHEN g % 50 = 0 THEN 'gitlab:' || CAST(g AS VARCHAR) ELSE md5('bench-user-' || CAST(g AS VARCHAR)) END
         AS user_id,
       {_ACTION_CASE} AS action,
       CAST(i % 997 AS VARCHAR) AS project_id,
       CASE WHEN i % 3 = 0 THEN 'public' WHEN i % 3 = 1 THEN 'private' ELSE 'internal' END AS project_visibility,
       'demo' AS source,
       k
FROM picked
"""


def generate(root: Path, events: int, deployments: int = 5, days: int = 1092, start: dt.date = START) -> dict:
    """Write the history under ``root`` (a local storage root); returns what was written."""
    per_day = max(1, events // (deployments * days))
    users = users_for(events)
    root = Path(root)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    stage = root / ".stage"
    root.mkdir(parents=True, exist_ok=True)
    extracted_at = dt.datetime.combine(start + dt.timedelta(days=days), dt.time(1), dt.timezone.utc).isoformat()
    try:
        for d in range(deployments):
            name = f"bench{d}"
            for k0 in range(0, days, CHUNK_DAYS):
                k1 = min(days, k0 + CHUNK_DAYS)
                con.execute(
                    _CHUNK_SQL,
                    {
                        "k0": k0,
                        "k1": k1,
                        "per_day": per_day,
                        "users": users,
                        "days": days,
                        "offset": d * (users // 2),
                        "name": name,
                        "start": start.isoformat(),
                    },
                )
                con.execute(
                    f"COPY (SELECT * FROM chunk ORDER BY k, occurred_at) TO '{stage}' "
                    "(FORMAT parquet, PARTITION_BY (k), COMPRESSION zstd, OVERWRITE_OR_IGNORE true, "
                    "FILENAME_PATTERN 'events')"
                )
                summary = con.execute(
                    "SELECT k, count(*), count(DISTINCT user_id), "
                    + ", ".join(f"count(*) FILTER (WHERE action = '{a}')" for a in ACTIONS)
                    + " FROM chunk GROUP BY k ORDER BY k"
                ).fetchall()
                for k, rows, distinct_users, *by_action in summary:
                    day = start + dt.timedelta(days=int(k))
                    target = root / raw_events_key(name, day)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    (written,) = (stage / f"k={k}").iterdir()  # one file per day
                    os.replace(written, target)
                    manifest = {
                        "deployment": name,
                        "date": day.isoformat(),
                        "extracted_at": extracted_at,
                        "row_count": rows,
                        "rejected_count": 0,
                        "users": distinct_users,
                        "repeated_from_earlier_days": 0,
                        "by_action": dict(zip(ACTIONS, by_action, strict=True)),
                        "sources": {"demo": {"complete": True, "coverage_note": "", "events": rows, "rejected": 0}},
                    }
                    (root / manifest_key(name, day)).write_text(json.dumps(manifest))
    finally:
        con.close()
    for leftover in sorted(stage.rglob("*"), reverse=True) if stage.exists() else []:
        leftover.rmdir() if leftover.is_dir() else leftover.unlink()
    if stage.exists():
        stage.rmdir()
    return {"events": per_day * deployments * days, "deployments": deployments, "days": days, "users": users}
