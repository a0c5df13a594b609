"""Where the metrics data lives: a local directory or an S3 prefix, same layout.

The layout of keys under the root is in ``renku_metrics.core.layout``.

Every write replaces one whole object and becomes visible whole or not at all:
locally through a temporary file and an atomic rename, on S3 through a single
PUT. Local files get the usual permissions (0666 less the umask).

A root is checked when it is opened (a mistyped ``s3:/bucket`` or a path under a
file is refused, never taken as some local directory), and ``Storage.check()``
verifies before a run that it can be used (bucket exists, credentials accepted,
endpoint reachable), with a message saying which and never a secret. Copies of
S3 objects for DuckDB go to a per-process temporary directory, removed when done
and, after a crash, by the next process that opens S3 storage. No Dagster in here.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pandas as pd

STORAGE_ENV = "RENKU_METRICS_STORAGE"
DEFAULT_ROOT = "./data"
# Something that starts like a URL ("s3:/x", "gs://x", "file:x"): never a local directory here.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# A scheme missing its colon ("s3//bucket/x", "https//host"), or a well-known scheme's name as the
# first directory ("s3/bucket/x"): almost a URI, never silently a directory under the working directory.
_ALMOST_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*//")
_SCHEME_AS_DIRECTORY = re.compile(r"^(s3|s3a|s3n|gs|gcs|az|abfss?|wasbs?|hdfs|https?|file|ftp|sftp)/", re.IGNORECASE)
# S3 bucket naming rules (lower case letters, digits, dots and hyphens; 3 to 63 characters).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Where S3 objects are copied for DuckDB: one subdirectory per process, "<pid>-<random>".
TEMP_PARENT = "renku-metrics-tmp"


def _file_mode() -> int:
    """0666 less the process umask (mkstemp would leave 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
    def list_keys(self, prefix: str, start_after: str | None = None) -> list[str]:
        """All keys under ``prefix`` (only those sorting after ``start_after``, if given), sorted."""

    @abstractmethod
    def list_versions(self, prefix: str) -> dict[str, str]:
        """{key: version} of all keys under ``prefix``; a version changes whenever the object is replaced."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError, saying what is wrong, unless the root can be read and written."""

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


# A write that failed for lack of space: disk full, quota exceeded, or over the process's file-size limit.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _free_bytes(directory: Path) -> int | str:
    try:
        st = os.statvfs(directory)
    except OSError:
        return "unknown"
    return st.f_bavail * st.f_frsize


def _sweep_stale_parts(directory: Path) -> None:
    """Remove ``.tmp-<pid>-*.part`` files that a killed process left behind (its pid no longer runs)."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.startswith(".tmp-") and name.endswith(".part"):
                pid = name[5:].split("-", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(directory / name)


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike) -> None:
        self.path = Path(root).expanduser().resolve()
        self.root = str(self.path)
        # The root, or its nearest existing ancestor, must be a directory.
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            where = "is" if existing == self.path else f"lies under {existing}, which is"
            raise StorageError(f"storage root {str(root)!r}: {self.root} {where} a file, not a directory")

    def check(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage root {self.root}: cannot create the directory: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StorageError(f"storage root {self.root}: the directory is not writable")

    def _file(self, key: str) -> Path:
        return self.path / key

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, flush to disk, then rename: a reader (or a
        # crash) sees the old object or the new one, never half of one.
        _sweep_stale_parts(target.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".tmp-{os.getpid()}-", suffix=".part")
        try:
            os.fchmod(fd, _file_mode())
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
                raise StorageError(
                    f"storage root {self.root}: cannot write {target}: {exc.strerror} ({len(data)} bytes needed, "
                    f"{_free_bytes(target.parent)} bytes free there): free space or move the storage root; "
                    "the previous object is unchanged"
                ) from None
            raise

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(self.uri(key)) from None

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def list_keys(self, prefix: str, start_after: str | None = None) -> list[str]:
        return sorted(self._walk(prefix, start_after))

    def _walk(self, prefix: str, start_after: str | None = None) -> dict[str, str]:
        """{key: local path} of the files under ``prefix`` (scandir on strings: fast over many days),
        only keys after ``start_after`` when given (directories that cannot hold one are not entered)."""
        base = self._file(prefix)
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return {}
        root = str(self.path)
        found = {}
        pending = [str(start)]
        while pending:
            directory = pending.pop()
            relative = directory[len(root) + 1 :].replace(os.sep, "/") if directory != root else ""
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        # Only directories that can hold keys under the prefix (a month's days, not all).
                        below = f"{relative}/{entry.name}/" if relative else f"{entry.name}/"
                        if not (below.startswith(prefix) or prefix.startswith(below)):
                            continue
                        if start_after is not None and below < start_after and not start_after.startswith(below):
                            continue  # every key in it sorts before start_after
                        pending.append(entry.path)
                    elif not entry.name.startswith(".tmp-"):
                        key = f"{relative}/{entry.name}" if relative else entry.name
                        if key.startswith(prefix) and (start_after is None or key > start_after):
                            found[key] = entry.path
        return found

    def list_versions(self, prefix: str) -> dict[str, str]:
        versions = {}
        for key, path in sorted(self._walk(prefix).items()):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                # Every write is a new file renamed into place: a new inode and mtime.
                versions[key] = f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"
        return versions

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

    @staticmethod
    def _code(exc: Exception) -> str | None:
        """The S3 error code of a botocore ClientError; None for errors without a response."""
        response = getattr(exc, "response", None) or {}
        return (response.get("Error") or {}).get("Code") or None

    def _endpoint(self) -> str:
        return getattr(getattr(self.client, "meta", None), "endpoint_url", None) or "the S3 endpoint"

    def _fail(self, action: str, key: str | None, exc: Exception) -> StorageError:
        where = self.uri(key) if key is not None else self.root
        code = self._code(exc)
        if code is None:  # no response at all: connection refused or reset, timeout, DNS
            return StorageError(
                f"S3 {action} of {where} failed: cannot reach {self._endpoint()} ({type(exc).__name__})"
            )
        if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and key is None):
            return StorageError(f"S3 {action} of {where} failed: bucket {self.bucket!r} does not exist ({code})")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return StorageError(
                f"S3 {action} of {where} failed: credentials rejected ({code}: check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or the profile in use)"
            )
        if code in ("AccessDenied", "403", "Forbidden"):
            return StorageError(
                f"S3 {action} of {where} failed: access denied ({code}: the credentials lack permission "
                "on this bucket or prefix, or the key is wrong)"
            )
        return StorageError(f"S3 {action} of {where} failed: {code}: {exc}")

    def check(self) -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
        except Exception as exc:
            raise self._fail("check", None, exc) from exc

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
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("lookup", key, exc) from exc

    def list_keys(self, prefix: str, start_after: str | None = None) -> list[str]:
        keys = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        after = {"StartAfter": self._key(start_after)} if start_after is not None else {}
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix), **after):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except Exception as exc:
            raise self._fail("listing", prefix, exc) from exc
        return sorted(keys)

    def list_versions(self, prefix: str) -> dict[str, str]:
        versions = {}
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", []):
                    versions[obj["Key"][strip:]] = f"{obj['ETag']}-{obj['LastModified'].isoformat()}-{obj['Size']}"
        except Exception as exc:
            raise self._fail("listing", prefix, exc) from exc
        return versions

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
        tmp = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=temp_parent())
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


def temp_parent() -> str:
    """The parent of the per-process temporary directories; leftovers of dead processes are removed."""
    parent = os.path.join(tempfile.gettempdir(), TEMP_PARENT)
    os.makedirs(parent, exist_ok=True)
    sweep_stale_temp(parent)
    return parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale_temp(parent: str) -> list[str]:
    """Remove the temporary directories of processes that no longer run (killed mid-run)."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(parent):
            pid, _, _ = name.partition("-")
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                removed.append(name)
    return removed


def endpoint_without_credentials(url: str, where: str = "S3 endpoint URL") -> str:
    """``url``, refused (StorageError) when it carries ``user:password@``: such a URL ends up in logs
    and messages. Credentials come from the environment (AWS_ACCESS_KEY_ID...) only."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        shown = f"{parts.scheme}://***@{parts.netloc.rsplit('@', 1)[-1]}"
        raise StorageError(
            f"{where} {shown} carries credentials (user:password@): give them through AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or a profile or role), never in the URL"
        )
    return url


def make_s3_client(endpoint_url: str | None = None, region_name: str | None = None) -> Any:
    """A boto3 S3 client; credentials from the standard AWS variables and files (never from the URL)."""
    import boto3

    if endpoint_url:
        endpoint_without_credentials(endpoint_url)
    elif os.environ.get("AWS_ENDPOINT_URL"):
        endpoint_url = endpoint_without_credentials(os.environ["AWS_ENDPOINT_URL"], "AWS_ENDPOINT_URL")
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, region_name=region_name)


def open_storage(root: str | None = None, client: Any = None, endpoint_url: str | None = None) -> Storage:
    """Storage for a root: a local directory or ``s3://bucket[/prefix]``.

    ``root`` defaults to $RENKU_METRICS_STORAGE, then ``./data``.
    """
    root = root or os.environ.get(STORAGE_ENV) or DEFAULT_ROOT
    if root != root.strip() or any(ord(c) < 32 for c in root):
        raise StorageError(f"storage root {root!r}: leading/trailing spaces or control characters")
    if root.startswith("s3://"):
        parsed = urlparse(root)
        if not parsed.netloc:
            raise StorageError(f"storage root {root!r}: no bucket name (expected s3://bucket/prefix)")
        if not _BUCKET.match(parsed.netloc):
            raise StorageError(
                f"storage root {root!r}: {parsed.netloc!r} is not a valid S3 bucket name (expected s3://bucket/prefix)"
            )
        if parsed.query or parsed.fragment or "//" in parsed.path:
            raise StorageError(f"storage root {root!r}: expected s3://bucket/prefix without '?', '#' or '//'")
        # Whoever made the client (boto3 also reads AWS_ENDPOINT_URL itself): no credentials in the URL.
        if endpoint_url:
            endpoint_without_credentials(endpoint_url)
        if os.environ.get("AWS_ENDPOINT_URL"):
            endpoint_without_credentials(os.environ["AWS_ENDPOINT_URL"], "AWS_ENDPOINT_URL")
        return S3Storage(parsed.netloc, parsed.path, client or make_s3_client(endpoint_url))
    if _ALMOST_URI.match(root) or _SCHEME_AS_DIRECTORY.match(root):
        raise StorageError(
            f"storage root {root!r}: looks like a URI but is not one (expected s3://bucket/prefix; "
            f"a local directory of that name: ./{re.sub('/+', '/', root).rstrip('/')})"
        )
    if _SCHEME.match(root):
        raise StorageError(
            f"storage root {root!r}: only local directories and s3://bucket/prefix are supported "
            "(an s3 root needs two slashes)"
        )
    return LocalStorage(root)
