import os
import signal
import subprocess
import sys
import textwrap
import time

import boto3
import pyarrow as pa
import pytest

from renku_metrics.core.storage import LocalStorage, StorageError, open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/metrics-root", endpoint_url=endpoint)


def test_roundtrip_list_replace_delete(storage):
    storage.write_bytes("a/b/one.txt", b"1")
    storage.write_bytes("a/b/one.txt", b"2")  # replace, not append
    storage.write_bytes("a/two.txt", b"x")
    storage.write_json("c/m.json", {"k": 1})
    assert storage.read_bytes("a/b/one.txt") == b"2"
    assert storage.list_keys("a/") == ["a/b/one.txt", "a/two.txt"]
    assert storage.read_json("c/m.json") == {"k": 1}
    assert storage.exists("a/two.txt") and not storage.exists("a/three.txt")
    storage.delete("a/two.txt")
    storage.delete("a/two.txt")  # deleting twice is fine
    assert storage.list_keys("a/") == ["a/b/one.txt"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("a/two.txt")
    table = pa.table({"x": [1, 2, 3]})
    storage.write_parquet("p/t.parquet", table)
    assert storage.read_parquet("p/t.parquet").equals(table)
    with storage.local_paths(["p/t.parquet"]) as paths:
        assert os.path.exists(paths[0])


def test_s3_layout_is_under_prefix(s3_endpoint, s3_bucket):
    storage = open_storage(f"s3://{s3_bucket}/team/metrics", endpoint_url=s3_endpoint)
    storage.write_bytes("raw_events/x.parquet", b"data")
    keys = [
        o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]
    ]
    assert keys == ["team/metrics/raw_events/x.parquet"]
    assert storage.uri("raw_events/x.parquet") == f"s3://{s3_bucket}/team/metrics/raw_events/x.parquet"


def test_s3_missing_bucket_is_a_clear_error(s3_endpoint):
    storage = open_storage("s3://no-such-bucket-xyz/p", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError, match="s3://no-such-bucket-xyz/p/k.txt.*NoSuchBucket"):
        storage.write_bytes("k.txt", b"1")


def test_bad_roots():
    with pytest.raises(StorageError, match="no bucket name"):
        open_storage("s3:///prefix")
    with pytest.raises(StorageError, match="only local directories and s3://"):
        open_storage("gs://bucket/x")


def test_process_killed_mid_write_leaves_old_object_intact(tmp_path):
    root = tmp_path / "root"
    LocalStorage(root).write_bytes("day/events.parquet", b"old complete object")
    # A child process starts replacing the object with a large payload written
    # slowly, and is killed with SIGKILL in the middle of it.
    script = textwrap.dedent(
        f"""
        import os, time
        from renku_metrics.core import storage as s
        real_fdopen = os.fdopen
        class Slow:
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *a): self.f.close()
            def write(self, data):
                for i in range(0, len(data), 1024):
                    self.f.write(data[i:i + 1024]); self.f.flush()
                    if i == 4096: print("writing", flush=True)
                    time.sleep(0.01)
            def flush(self): self.f.flush()
            def fileno(self): return self.f.fileno()
        s.os.fdopen = lambda fd, mode: Slow(real_fdopen(fd, mode))
        s.LocalStorage({str(root)!r}).write_bytes("day/events.parquet", b"n" * 10_000_000)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    storage = LocalStorage(root)
    assert storage.read_bytes("day/events.parquet") == b"old complete object"
    assert storage.list_keys("day/") == ["day/events.parquet"]  # the partial temp file is never listed
