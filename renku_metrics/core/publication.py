"""A period's two aggregate tables are published as a pair, or not at all.

``active_users_*`` and ``core_actions_*`` of a period are two objects, written
one after the other. A process killed between the two writes (or a write that
failed) would leave one table of the new run beside the other of an earlier
run, computed perhaps with another ``excluded_users`` list: the two would
disagree on the number of active users while both said ``complete``.

So both tables of a period carry the same ``publication_id``: a digest of the
pair's content (both tables, without ``computed_at``). A rerun that computes the
same numbers writes the same id (reruns stay idempotent); a pair cut by a crash
holds two different ids unless both tables were unchanged anyway. A reader accepts a period only when both tables
hold it under the same id; otherwise the period's rows of both tables are
marked not complete with a note saying so (``mark_unpaired``), so that
``complete_only`` leaves them out, and the schedules aggregate the period again
(a rerun replaces both tables and converges). Tables written before this column
existed carry no id on either side and are accepted as they are.

Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pandas as pd

from renku_metrics.core.layout import metrics_key
from renku_metrics.core.periods import PERIOD_SUFFIX, Period
from renku_metrics.core.storage import Storage

PUBLICATION_COLUMN = "publication_id"
PAIR = ("active_users", "core_actions")


def table_names(period: Period) -> tuple[str, str]:
    """(``active_users_<suffix>``, ``core_actions_<suffix>``) of a period."""
    suffix = PERIOD_SUFFIX[period]
    return f"active_users_{suffix}", f"core_actions_{suffix}"


def publish_period(
    storage: Storage, period: Period, start: dt.date, active_users: pd.DataFrame, core_actions: pd.DataFrame
) -> str:
    """Write both tables of the period starting ``start`` under one publication id; return the id."""
    publication = publication_id(active_users, core_actions)
    active_name, core_name = table_names(period)
    storage.write_frame(metrics_key(active_name, start), active_users.assign(**{PUBLICATION_COLUMN: publication}))
    storage.write_frame(metrics_key(core_name, start), core_actions.assign(**{PUBLICATION_COLUMN: publication}))
    return publication


def publication_id(active_users: pd.DataFrame, core_actions: pd.DataFrame) -> str:
    """The digest of a period's pair: the same numbers give the same id, in any process."""
    digest = hashlib.sha256()
    for frame in (active_users, core_actions):
        content = frame.drop(columns=["computed_at", PUBLICATION_COLUMN], errors="ignore")
        digest.update(",".join(map(str, content.columns)).encode())
        digest.update(pd.util.hash_pandas_object(content, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]


def _ids_by_period(frame: pd.DataFrame) -> dict[str, str | None]:
    """{period_start as ISO text: its publication id (None for tables written before the id)}."""
    if frame.empty:
        return {}
    starts = pd.to_datetime(frame["period_start"]).dt.date.astype(str)
    if PUBLICATION_COLUMN not in frame:
        return dict.fromkeys(starts, None)
    ids = frame[PUBLICATION_COLUMN].where(frame[PUBLICATION_COLUMN].notna(), None)
    out: dict[str, str | None] = {}
    for start, pid in zip(starts, ids, strict=True):
        out.setdefault(start, pid)
    return out


def unpaired_periods(frame: pd.DataFrame, other: pd.DataFrame) -> dict[str, str]:
    """{period_start: why} for the periods of ``frame`` that ``other`` does not hold under the same id."""
    mine, theirs = _ids_by_period(frame), _ids_by_period(other)
    out = {}
    for start, pid in mine.items():
        if start not in theirs:
            out[start] = "missing"
        elif pid != theirs[start]:
            out[start] = "from another run"
    return out


def mark_unpaired(frame: pd.DataFrame, other: pd.DataFrame, name: str, other_name: str) -> pd.DataFrame:
    """``frame`` (one of the pair's tables, read from the store) with the rows of every period that
    ``other`` does not hold under the same publication id marked not complete, with a note."""
    unpaired = unpaired_periods(frame, other)
    if not unpaired:
        return frame
    frame = frame.copy()
    starts = pd.to_datetime(frame["period_start"]).dt.date.astype(str)
    for start, why in unpaired.items():
        rows = starts == start
        note = (
            f"not published as a pair: {other_name} of this period is {why} (a run interrupted between "
            f"writing {name} and {other_name}); aggregate the period again"
        )
        frame.loc[rows, "complete"] = False
        previous = frame.loc[rows, "coverage_note"].fillna("")
        frame.loc[rows, "coverage_note"] = [f"{note}; {p}" if p else note for p in previous]
    return frame


def stored_pair_complete(storage: Storage, period: Period, start: dt.date) -> bool:
    """Whether both tables of the period are stored as one pair and every row of them is complete."""
    active_name, core_name = table_names(period)
    frames = []
    for name in (active_name, core_name):
        key = metrics_key(name, start)
        if not storage.exists(key):
            return False
        frames.append(storage.read_parquet(key).to_pandas())
    active, core = frames
    if unpaired_periods(active, core) or unpaired_periods(core, active):
        return False
    return bool(active["complete"].all()) and bool(core["complete"].all())
