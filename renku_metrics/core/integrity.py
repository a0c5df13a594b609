"""Damaged stored files: recorded sizes and checksums, verified when read, and a store scan.

Every file of an extracted day (events, rejected records, withheld events) is
recorded in the day's manifest with its size and SHA-256 (``Manifest.files``).
A reader that gets the bytes of such a file checks them (``check_bytes``) and,
for Parquet, that the file parses; a file that fails is a ``DamagedFileError``
whose one-line message names the deployment, the day, the storage URI, what is
wrong and the command that repairs it (re-extracting the day replaces it).

A replaced file and its manifest are two writes. So that a crash between them
is never mistaken for damage, the manifest names the coming file as ``pending``
before the file is replaced, and drops it after (``Manifest.accepts``).

``verify_store`` scans a store (``python -m renku_metrics verify``): damaged or
missing files, and manifests that cannot be read. Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from renku_metrics.core.layout import (
    MANIFEST_FILE,
    day_of_key,
    is_events_key,
    is_manifest_key,
    raw_events_key,
    raw_events_prefix,
)
from renku_metrics.core.storage import Storage, StorageError

log = logging.getLogger(__name__)

FileRecord = dict[str, object]  # {"size": bytes, "sha256": hex}


def file_record(data: bytes) -> FileRecord:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def parquet_bytes(table: pa.Table) -> bytes:
    """The bytes ``Storage.write_parquet`` writes for ``table`` (zstd)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def repair_command(deployment: str, day: dt.date | str) -> str:
    return f"python -m renku_metrics extract --deployment {deployment} --day {day}"


class DamagedFileError(StorageError):
    """A stored file that cannot be used; the message is one line naming it and its repair."""

    def __init__(self, deployment: str, day: dt.date | str, uri: str, problem: str) -> None:
        self.deployment, self.day, self.uri, self.problem = deployment, str(day), uri, problem
        super().__init__(
            f"damaged stored file: deployment {deployment!r}, day {day}, {uri}: {problem} "
            f"(repair: {repair_command(deployment, day)})"
        )


def check_bytes(data: bytes, accepted: Iterable[FileRecord], parquet: bool, thorough: bool = True) -> str | None:
    """What is wrong with ``data`` (None if nothing): a size or checksum that matches none of the
    ``accepted`` records, or, when none is recorded, Parquet that does not parse (a matching
    checksum already proves the bytes are the ones written). Not ``thorough``: only the Parquet
    footer is read (a truncated file fails there), for readers that parse the file next anyway."""
    accepted = [a for a in accepted if a]
    if accepted:
        size = len(data)
        if all(int(a.get("size", -1)) != size for a in accepted):
            return f"{size} bytes, the manifest records {int(accepted[0].get('size', -1))}"
        digest = hashlib.sha256(data).hexdigest()
        if all(a.get("sha256") != digest for a in accepted):
            return "its SHA-256 checksum differs from the one the manifest records"
        return None
    if parquet:
        try:
            parsed = pq.ParquetFile(io.BytesIO(data))
            if thorough:
                parsed.read()
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError... on a damaged file
            return f"not a readable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return None


def read_manifest_json(storage: Storage, deployment: str, key: str) -> dict:
    """The manifest at ``key`` as JSON, or a DamagedFileError naming it."""
    data = storage.read_bytes(key)
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise DamagedFileError(
            deployment, day_of_key(key), storage.uri(key), f"not readable JSON ({exc.msg}, {len(data)} bytes)"
        ) from None
    if not isinstance(raw, dict):
        raise DamagedFileError(deployment, day_of_key(key), storage.uri(key), "not a JSON object")
    return raw


def read_checked(storage: Storage, deployment: str, key: str, accepted: Iterable[FileRecord]) -> bytes:
    """The bytes at ``key``, checked against the manifest's records (and parsed if Parquet)."""
    data = storage.read_bytes(key)
    problem = check_bytes(data, accepted, parquet=key.endswith(".parquet"), thorough=False)
    if problem:
        raise DamagedFileError(deployment, day_of_key(key), storage.uri(key), problem)
    return data


def deployment_of_key(key: str) -> str:
    """The deployment of a per-day key (``raw_events/deployment=<name>/date=.../...``)."""
    part = key.split("/")[1] if key.count("/") >= 2 else ""
    return part.split("=", 1)[1] if "=" in part else "?"


def damaged_local_files(storage: Storage, keys: list[str], paths: list[str]) -> list[DamagedFileError]:
    """The files among ``keys`` (local copies at ``paths``) that are damaged: wrong size against
    their manifest, or Parquet that does not parse. For a scan that failed on one of them."""
    from renku_metrics.core.manifest import Manifest

    found = []
    for key, path in zip(keys, paths, strict=True):
        deployment = deployment_of_key(key)
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            manifest = Manifest.read(storage, deployment, day_of_key(key))
            accepted = manifest.accepts(key) if manifest else []
        except DamagedFileError as exc:
            found.append(exc)
            accepted = []
        problem = check_bytes(data, accepted, parquet=key.endswith(".parquet"))
        if problem:
            found.append(DamagedFileError(deployment, day_of_key(key), storage.uri(key), problem))
    return found


# -- the store scan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    deployment: str
    day: str
    uri: str
    problem: str

    @property
    def repair(self) -> str:
        return repair_command(self.deployment, self.day)

    def line(self) -> str:
        return f"{self.deployment} {self.day} {self.uri}: {self.problem}\n  repair: {self.repair}"


def _deployments(storage: Storage) -> list[str]:
    names = set()
    for key in storage.list_keys("raw_events/"):
        part = key.split("/", 2)[1] if key.count("/") >= 2 else ""
        if part.startswith("deployment="):
            names.add(part[len("deployment=") :])
    return sorted(names)


def verify_store(
    storage: Storage, deployment: str | None = None, since: dt.date | None = None
) -> tuple[int, list[Finding]]:
    """Check every extracted day (of ``deployment``, from ``since``): its manifest reads, and every
    file it records exists with the recorded size and checksum (and parses, for Parquet); an events
    file without a manifest is reported too. Returns (days checked, findings)."""
    from renku_metrics.core.manifest import Manifest

    findings: list[Finding] = []
    checked = 0
    for name in [deployment] if deployment else _deployments(storage):
        keys = storage.list_keys(raw_events_prefix(name))
        days: dict[dt.date, set[str]] = {}
        for key in keys:
            if is_manifest_key(key) or is_events_key(key):
                days.setdefault(day_of_key(key), set()).add(key.rsplit("/", 1)[-1])
        for day, files in sorted(days.items()):
            if since and day < since:
                continue
            checked += 1
            events_key = raw_events_key(name, day)
            if MANIFEST_FILE not in files:
                findings.append(
                    Finding(name, day.isoformat(), storage.uri(events_key), "events file without a manifest")
                )
                continue
            try:
                manifest = Manifest.read(storage, name, day)
            except DamagedFileError as exc:
                findings.append(Finding(name, day.isoformat(), exc.uri, exc.problem))
                continue
            expected = dict(manifest.files)
            if not expected and manifest.has_events and not manifest.withheld:
                expected = {events_key: {}}  # a manifest written before sizes were recorded
            for key, record in sorted(expected.items()):
                try:
                    data = storage.read_bytes(key)
                except FileNotFoundError:
                    findings.append(Finding(name, day.isoformat(), storage.uri(key), "missing"))
                    continue
                problem = check_bytes(data, manifest.accepts(key) or [record], parquet=key.endswith(".parquet"))
                if problem:
                    findings.append(Finding(name, day.isoformat(), storage.uri(key), problem))
    return checked, findings
