"""Where the metrics data lives: a local directory or an S3 prefix, same layout.

The layout of keys under the root is in ``renku_metrics.core.layout``.

Every write replaces one whole object and becomes visible whole or not at all:
locally through a temporary file and an atomic rename, on S3 through a single
PUT. No Dagster in here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pandas as pd

STORAGE_ENV = "RENKU_METRICS_STORAGE"
DEFAULT_ROOT = "./data"


class StorageError(RuntimeError):
    """Storage unreachable or misconfigured; the message names the root and key."""


class Storage(ABC):
    """An object store rooted at ``root`` (a directory or ``s3://bucket/prefix``)."""

    root: str

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace the object at ``key`` atomically."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """All keys under ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    @contextlib.contextmanager
    def local_paths(self, keys: list[str]) -> Iterator[list[str]]:
        """Local file paths for ``keys`` (downloaded to a temporary directory on S3)."""

    # Parquet and JSON helpers shared by both kinds.
    def write_parquet(self, key: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write_bytes(key, buffer.getvalue())

    def write_frame(self, key: str, frame: pd.DataFrame) -> None:
        self.write_parquet(key, pa.Table.from_pandas(frame, preserve_index=False))

    def read_parquet(self, key: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(key)))

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike) -> None:
        self.path = Path(root).expanduser().resolve()
        self.root = str(self.path)

    def _file(self, key: str) -> Path:
        return self.path / key

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, flush to disk, then rename: a reader (or a
        # crash) sees the old object or the new one, never half of one.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(self.uri(key)) from None

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        base = self._file(prefix)
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return []
        keys = []
        # os.walk: ten times faster than Path.rglob over a history of daily partitions.
        for directory, _, files in os.walk(start):
            relative = Path(directory).relative_to(self.path).as_posix()
            for name in files:
                if not name.startswith(".tmp-"):
                    key = name if relative == "." else f"{relative}/{name}"
                    if key.startswith(prefix):
                        keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(key).unlink()

    def uri(self, key: str) -> str:
        return str(self._file(key))

    @contextlib.contextmanager
    def local_paths(self, keys: list[str]) -> Iterator[list[str]]:
        yield [str(self._file(k)) for k in keys]


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.root = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        return StorageError(f"S3 {action} of {self.uri(key)} failed: {code}: {exc}")

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:  # botocore errors: ClientError, EndpointConnectionError...
            raise self._fail("write", key, exc) from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.uri(key)) from None
        except Exception as exc:
            raise self._fail("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("lookup", key, exc) from exc

    def list_keys(self, prefix: str) -> list[str]:
        keys = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except Exception as exc:
            raise self._fail("listing", prefix, exc) from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    @contextlib.contextmanager
    def local_paths(self, keys: list[str]) -> Iterator[list[str]]:
        # DuckDB's httpfs extension would download itself at run time, which is
        # impossible offline: fetch the (small, per-period) objects instead.
        tmp = tempfile.mkdtemp(prefix="renku-metrics-")
        try:
            paths = []
            for index, key in enumerate(keys):
                path = os.path.join(tmp, f"{index:06d}-{os.path.basename(key)}")
                with open(path, "wb") as handle:
                    handle.write(self.read_bytes(key))
                paths.append(path)
            yield paths
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def make_s3_client(endpoint_url: str | None = None, region_name: str | None = None) -> Any:
    """A boto3 S3 client; credentials from the standard AWS variables and files."""
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None, region_name=region_name
    )


def open_storage(root: str | None = None, client: Any = None, endpoint_url: str | None = None) -> Storage:
    """Storage for a root: a local directory or ``s3://bucket[/prefix]``.

    ``root`` defaults to $RENKU_METRICS_STORAGE, then ``./data``.
    """
    root = root or os.environ.get(STORAGE_ENV) or DEFAULT_ROOT
    if root.startswith("s3://"):
        parsed = urlparse(root)
        if not parsed.netloc:
            raise StorageError(f"storage root {root!r}: no bucket name (expected s3://bucket/prefix)")
        return S3Storage(parsed.netloc, parsed.path, client or make_s3_client(endpoint_url))
    if "://" in root:
        raise StorageError(f"storage root {root!r}: only local directories and s3:// are supported")
    return LocalStorage(root)
