"""A day's manifest (``_manifest.json``): what one extraction of one UTC day stored.

Written last, after the day's events (and rejected records): its presence means
the day was extracted. Read and written only through :class:`Manifest`.
Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from renku_metrics.core.integrity import DamagedFileError, deployment_of_key, read_manifest_json
from renku_metrics.core.layout import day_of_key, manifest_key
from renku_metrics.core.storage import Storage

# One source's entry in ``sources``: complete, coverage_note, events, rejected,
# stats (and kept_from_previous_extract when an incomplete re-read kept older events).
SourceInfo = dict[str, Any]


@dataclass
class Manifest:
    deployment: str
    date: str  # YYYY-MM-DD
    extracted_at: str  # ISO timestamp of the extraction
    row_count: int
    rejected_count: int
    users: int
    repeated_from_earlier_days: int
    by_action: dict[str, int]
    sources: dict[str, SourceInfo] = field(default_factory=dict)
    # Rows breaking each blocking raw-event check; any violation withholds the day.
    checks: dict[str, int] = field(default_factory=dict)
    # {storage key: {"size", "sha256"}} of every file the day stored (core.integrity), and the
    # files about to replace them while a rewrite is under way (a crash then is not damage).
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    # {neighbouring day: what is wrong with its stored file} for days whose event ids could not
    # be read to de-duplicate against (re-extracting the damaged day settles them).
    dedup_unchecked_days: dict[str, str] = field(default_factory=dict)

    @property
    def day(self) -> dt.date:
        return dt.date.fromisoformat(self.date)

    @property
    def has_events(self) -> bool:
        return self.row_count > 0

    @property
    def complete(self) -> bool:
        """Every source read its whole window."""
        return all(info.get("complete", True) for info in self.sources.values())

    @property
    def withheld(self) -> bool:
        """The day failed a blocking check: its events are not published, the aggregates leave it out."""
        return any(self.checks.values())

    def failed_checks(self) -> list[str]:
        return [f"{name} ({n} rows)" for name, n in sorted(self.checks.items()) if n]

    def source(self, name: str) -> SourceInfo:
        return self.sources.get(name, {})

    def incomplete_notes(self) -> list[str]:
        """``"YYYY-MM-DD source: note"`` for every source that did not read its whole window."""
        return [
            f"{self.date} {name}: {info.get('coverage_note') or 'window not fully read'}"
            for name, info in sorted(self.sources.items())
            if not info.get("complete", True)
        ]

    def accepts(self, key: str) -> list[dict[str, Any]]:
        """The size-and-checksum records the file at ``key`` may match (none: not recorded)."""
        return [r for r in (self.files.get(key), self.pending.get(key)) if r]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Manifest:
        return cls(
            deployment=raw["deployment"],
            date=raw["date"],
            extracted_at=raw.get("extracted_at", ""),
            row_count=int(raw.get("row_count", 0)),
            rejected_count=int(raw.get("rejected_count", 0)),
            users=int(raw.get("users", 0)),
            repeated_from_earlier_days=int(raw.get("repeated_from_earlier_days", 0)),
            by_action=dict(raw.get("by_action", {})),
            sources=dict(raw.get("sources", {})),
            checks={k: int(v) for k, v in (raw.get("checks") or {}).items()},
            files=dict(raw.get("files") or {}),
            pending=dict(raw.get("pending") or {}),
            dedup_unchecked_days=dict(raw.get("dedup_unchecked_days") or {}),
        )

    def write(self, storage: Storage) -> None:
        storage.write_json(manifest_key(self.deployment, self.day), self.to_json())

    @classmethod
    def read(cls, storage: Storage, deployment: str, day: dt.date) -> Manifest | None:
        """The stored manifest of the day, or None if the day was never extracted."""
        key = manifest_key(deployment, day)
        if not storage.exists(key):
            return None
        return cls.read_key(storage, key)

    @classmethod
    def read_key(cls, storage: Storage, key: str) -> Manifest:
        """The manifest at ``key``; a DamagedFileError (one line naming it) if it cannot be read."""
        raw = read_manifest_json(storage, deployment_of_key(key), key)
        try:
            return cls.from_json(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedFileError(
                deployment_of_key(key),
                day_of_key(key),
                storage.uri(key),
                f"not a manifest ({type(exc).__name__}: {exc})",
            ) from None
