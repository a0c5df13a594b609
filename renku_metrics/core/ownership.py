"""Who owns each project, pseudonymously, and the actions derived from it at extraction.

The extract of a day (``renku_metrics.core.extract.extract_day``) asks the
deployment's *ownership source* (the one source object with a ``project_owners``
method: GitLab on Renku 1, the demo source) about every project of the day's
commits and session starts, stores the answer as the day's **project snapshot**
(``projects/deployment=<d>/date=<day>/projects.parquet``: ids and user keys only)
and adds one derived event per qualifying event (``events.DERIVED_ACTIONS``):

* ``collaborate``: a ``commit`` to a project the committer does not own, or to a
  fork of a project the committer does not own;
* ``start_shared_session``: a ``start_session`` on a project the user does not own.

A derived event has the user, time, project and source of the event it comes
from and its own stable id, so the weekly and monthly aggregation counts it like
any other action: the catalog maps metrics to these actions and nothing in the
aggregation knows about ownership. Active users do not change (the derived event
sits beside an event of the same user at the same time).

Ownership at the time of the event: the snapshot of a day is taken when the day
is first extracted (for the daily schedule, within hours of the day's end) and
reused when the day is extracted again, so a project transferred on Wednesday
counts Monday's commits by its old owner and Thursday's by its new one. A project
that cannot be found (deleted, or unknown to the source) has no owner: its events
derive nothing and are counted in the source's stats (``ownership_unknown_projects``).

Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

from renku_metrics.core.events import make_event_id
from renku_metrics.core.layout import projects_key
from renku_metrics.core.storage import Storage

PROJECTS_SCHEMA = pa.schema(
    [
        pa.field("project_id", pa.string(), nullable=False),
        pa.field("owner", pa.string(), nullable=True),  # user key (as in events); null when unknown
        pa.field("forked_from", pa.string(), nullable=True),  # upstream project id of a fork
        pa.field("visibility", pa.string(), nullable=True),
        pa.field("found", pa.bool_(), nullable=False),  # false: the source did not know the project
    ]
)

# Which event action, done by someone other than the project's owner, derives which action.
_DERIVES = {"commit": "collaborate", "start_session": "start_shared_session"}


@dataclass(frozen=True)
class ProjectRecord:
    """One project as an ownership source reports it: ids and a user key, never a name or path."""

    project_id: str
    owner: str | None  # the owner's user key (md5 hex of the Keycloak id, or gitlab:<id>)
    forked_from: str | None = None
    visibility: str | None = None


class OwnershipSource(Protocol):
    def project_owners(self, project_ids: list[str]) -> dict[str, ProjectRecord | None]:
        """{project id: its record, or None when the source does not know the project (deleted)}."""
        ...


def ownership_source(sources: Mapping[str, Any]) -> tuple[str, OwnershipSource] | None:
    """(source type, source) of the deployment's source that knows project owners, if any."""
    for name, source in sources.items():
        if callable(getattr(source, "project_owners", None)):
            return name, source
    return None


def snapshot_table(records: Mapping[str, ProjectRecord | None]) -> pa.Table:
    ids = sorted(records)
    return pa.table(
        {
            "project_id": ids,
            "owner": [r.owner if r else None for r in (records[i] for i in ids)],
            "forked_from": [r.forked_from if r else None for r in (records[i] for i in ids)],
            "visibility": [r.visibility if r else None for r in (records[i] for i in ids)],
            "found": [records[i] is not None for i in ids],
        },
        schema=PROJECTS_SCHEMA,
    )


def read_snapshot(storage: Storage, deployment: str, day: dt.date) -> dict[str, ProjectRecord | None]:
    """The project snapshot stored for ``day`` ({} when there is none)."""
    key = projects_key(deployment, day)
    if not storage.exists(key):
        return {}
    out: dict[str, ProjectRecord | None] = {}
    for row in storage.read_parquet(key).to_pylist():
        out[row["project_id"]] = (
            ProjectRecord(row["project_id"], row["owner"], row["forked_from"], row["visibility"])
            if row["found"]
            else None
        )
    return out


def resolve(
    source: OwnershipSource, known: Mapping[str, ProjectRecord | None], project_ids: Iterable[str]
) -> dict[str, ProjectRecord | None]:
    """``known`` completed with the records of ``project_ids`` and of the projects they were forked from."""
    records = dict(known)
    wanted = sorted({p for p in project_ids if p not in records})
    if wanted:
        records.update(_checked(source.project_owners(wanted), wanted))
    upstream = sorted({r.forked_from for r in records.values() if r and r.forked_from} - set(records))
    if upstream:
        records.update(_checked(source.project_owners(upstream), upstream))
    return records


def _checked(got: Mapping[str, ProjectRecord | None], wanted: list[str]) -> dict[str, ProjectRecord | None]:
    missing = [p for p in wanted if p not in got]
    if missing:
        raise ValueError(f"ownership source gave no answer for projects {missing[:5]}")
    return {p: got[p] for p in wanted}


def is_foreign(user: str, project: str, records: Mapping[str, ProjectRecord | None], forks_count: bool) -> bool:
    """Whether ``user`` works on someone else's project: the project's owner is known and is not the
    user or, with ``forks_count``, the project is a fork of a project whose known owner is not the user."""
    record = records.get(project)
    if record is None:
        return False
    if record.owner is not None and record.owner != user:
        return True
    if forks_count and record.forked_from:
        upstream = records.get(record.forked_from)
        return upstream is not None and upstream.owner is not None and upstream.owner != user
    return False


def derived_events(frame: pd.DataFrame, records: Mapping[str, ProjectRecord | None]) -> pd.DataFrame:
    """The derived events (``DERIVED_ACTIONS``) of the canonical events in ``frame``."""
    candidates = frame[frame["action"].isin(list(_DERIVES)) & frame["project_id"].notna()]
    rows = []
    for r in candidates.itertuples(index=False):
        if is_foreign(r.user_id, str(r.project_id), records, forks_count=r.action == "commit"):
            action = _DERIVES[r.action]
            rows.append(
                {
                    "event_id": make_event_id(r.deployment, r.source, "derived", r.event_id, action),
                    "deployment": r.deployment,
                    "occurred_at": r.occurred_at,
                    "user_id": r.user_id,
                    "action": action,
                    "project_id": r.project_id,
                    "project_visibility": r.project_visibility,
                    "source": r.source,
                }
            )
    return pd.DataFrame(rows, columns=list(frame.columns))


def add_ownership_actions(
    storage: Storage, deployment: str, day: dt.date, frame: pd.DataFrame, sources: Mapping[str, Any]
) -> tuple[pd.DataFrame, str | None, dict[str, int]]:
    """``frame`` (the day's valid events) with the derived events added (sorted as validated events
    are), the name of the ownership source (None: the deployment has none, nothing is derived) and
    the numbers for its stats. Stores the day's project snapshot (kept from an earlier extract of the
    day, completed with projects it did not hold)."""
    found = ownership_source(sources)
    base = frame[~frame["action"].isin(list(_DERIVES.values()))]
    if found is None:
        return frame, None, {}
    name, source = found
    used = base[base["action"].isin(list(_DERIVES)) & base["project_id"].notna()]["project_id"].astype(str)
    stored = read_snapshot(storage, deployment, day)
    records = resolve(source, stored, used)
    if records != stored:
        storage.write_parquet(projects_key(deployment, day), snapshot_table(records))
    derived = derived_events(base, records)
    out = pd.concat([base, derived], ignore_index=True) if len(derived) else base
    out = out.sort_values(["occurred_at", "event_id"], kind="stable").reset_index(drop=True)
    stats = {
        "ownership_projects": len(set(used)),
        "ownership_unknown_projects": sum(1 for p in set(used) if records.get(p) is None),
        **{f"derived_{a}": int((derived["action"] == a).sum()) if len(derived) else 0 for a in _DERIVES.values()},
    }
    return out, name, stats
