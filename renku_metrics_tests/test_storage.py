import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import boto3
import pyarrow as pa
import pytest

from renku_metrics.core.storage import LocalStorage, StorageError, open_storage, temp_parent
from renku_metrics_tests.conftest import free_port
from renku_metrics_tests.simulators.s3_proxy import S3FaultProxy


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


def test_list_keys_after_a_position(storage):
    keys = [
        "log/2025-01-01/20250101T100000Z_a",
        "log/2025-01-01/20250101T120000Z_b",
        "log/2025-01-02/20250102T080000Z_c",
        "log/2025-01-10/20250110T080000Z_d",
        "logbook/x",
    ]
    for key in keys:
        storage.write_bytes(key, b"")
    assert storage.list_keys("log/") == keys[:4]
    assert storage.list_keys("log/", start_after="log/2025-01-01/20250101T110000Z") == keys[1:4]
    assert storage.list_keys("log/", start_after="log/2025-01-01/20250101T120000Z_b") == keys[2:4]
    assert storage.list_keys("log/", start_after="log/2025-01-05/") == keys[3:4]
    assert storage.list_keys("log/", start_after="log/2025-02") == []
    assert storage.list_keys("log/", start_after="a") == keys[:4]


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


# -- bad roots, unusable storage, faults ----------------------------------------------------


@pytest.mark.parametrize(
    "root,message",
    [
        ("s3:/bucket/prefix", "only local directories and s3://bucket/prefix are supported"),
        ("s3:bucket", "only local directories and s3://bucket/prefix are supported"),
        ("S3://bucket/x", "only local directories and s3://bucket/prefix are supported"),
        ("file:///tmp/x", "only local directories"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://bucket//x", "without '?', '#' or '//'"),
        (" s3://bucket/x", "leading/trailing spaces"),
        ("data\n", "leading/trailing spaces or control characters"),
    ],
)
def test_malformed_roots_are_refused_with_one_line(root, message):
    with pytest.raises(StorageError, match=re.escape(message)) as info:
        open_storage(root)
    assert "\n" not in str(info.value).replace(repr(root), "")


def test_a_root_under_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match=r"lies under .*afile, which is a file, not a directory"):
        open_storage(str(tmp_path / "afile" / "data"))
    with pytest.raises(StorageError, match=r"afile is a file, not a directory"):
        open_storage(str(tmp_path / "afile"))


def test_local_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        storage = LocalStorage(tmp_path / "root")
        storage.write_bytes("a/b.parquet", b"x")
        assert (os.stat(tmp_path / "root" / "a" / "b.parquet").st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
    storage.check()  # a writable directory passes


def test_check_says_what_is_wrong_with_s3(s3_endpoint, s3_bucket):
    open_storage(f"s3://{s3_bucket}/p", endpoint_url=s3_endpoint).check()
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-xyz/p failed: bucket 'no-such-bucket-xyz' does not"):
        open_storage("s3://no-such-bucket-xyz/p", endpoint_url=s3_endpoint).check()
    port = free_port()
    with pytest.raises(StorageError, match=rf"s3://{s3_bucket}/p failed: cannot reach http://127.0.0.1:{port}"):
        open_storage(f"s3://{s3_bucket}/p", endpoint_url=f"http://127.0.0.1:{port}").check()


@pytest.mark.parametrize(
    "code,message",
    [
        ("InvalidAccessKeyId", "credentials rejected (InvalidAccessKeyId: check AWS_ACCESS_KEY_ID"),
        ("SignatureDoesNotMatch", "credentials rejected (SignatureDoesNotMatch"),
        ("AccessDenied", "access denied (AccessDenied"),
    ],
)
def test_rejected_credentials_are_named_without_the_secret(s3_endpoint, s3_bucket, code, message, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-1234")
    with S3FaultProxy(s3_endpoint) as proxy:
        proxy.fail("error", code=code, status=403)
        storage = open_storage(f"s3://{s3_bucket}/p", endpoint_url=proxy.url)
        with pytest.raises(StorageError) as info:
            storage.check()
    assert message in str(info.value) and f"s3://{s3_bucket}/p" in str(info.value)
    assert "very-secret-value-1234" not in str(info.value)


@pytest.mark.parametrize("operation", ["exists", "read", "list", "write"])
def test_access_denied_on_every_operation_names_the_s3_uri(s3_endpoint, s3_bucket, operation):
    with S3FaultProxy(s3_endpoint) as proxy:
        storage = open_storage(f"s3://{s3_bucket}/p", endpoint_url=proxy.url)
        storage.write_bytes("m/x.parquet", b"1")
        proxy.fail("error", code="AccessDenied", status=403)
        call = {
            "exists": lambda: storage.exists("m/x.parquet"),
            "read": lambda: storage.read_bytes("m/x.parquet"),
            "list": lambda: storage.list_keys("m/"),
            "write": lambda: storage.write_bytes("m/x.parquet", b"2"),
        }[operation]
        with pytest.raises(StorageError, match=rf"s3://{s3_bucket}/p/m/.* failed: (access denied|403)"):
            call()


def test_connection_resets_are_clear_storage_errors_or_survived(s3_endpoint, s3_bucket):
    with S3FaultProxy(s3_endpoint) as proxy:
        storage = open_storage(f"s3://{s3_bucket}/p", endpoint_url=proxy.url)
        proxy.fail("reset", times=1)
        storage.write_bytes("k.txt", b"survives one reset")  # botocore retries a dropped connection
        assert storage.read_bytes("k.txt") == b"survives one reset"
        proxy.fail("reset")  # every request from now on
        for call in (lambda: storage.read_bytes("k.txt"), lambda: storage.exists("k.txt"), storage.check):
            with pytest.raises(StorageError, match=rf"s3://{s3_bucket}/p.* failed: cannot reach {proxy.url}"):
                call()


def test_temp_copies_of_a_killed_process_are_removed(s3_endpoint, s3_bucket, tmp_path):
    parent = temp_parent()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = os.path.join(parent, f"{dead.pid}-abc123")
    os.makedirs(leftover)
    open(os.path.join(leftover, "000000-events.parquet"), "wb").write(b"x")
    storage = open_storage(f"s3://{s3_bucket}/p", endpoint_url=s3_endpoint)
    storage.write_bytes("a.parquet", b"1")
    with storage.local_paths(["a.parquet"]) as paths:
        assert os.path.dirname(paths[0]).startswith(os.path.join(parent, f"{os.getpid()}-"))
        assert not os.path.exists(leftover)  # swept when this process made its own
    assert not os.path.exists(os.path.dirname(paths[0]))


def _demo(tmp_path, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RENKU_METRICS_")}
    environment.update(DAGSTER_HOME=str(tmp_path / "dagster_home"), **env)
    os.makedirs(environment["DAGSTER_HOME"], exist_ok=True)
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("")  # as make demo provides
    return subprocess.run(
        [sys.executable, "-m", "renku_metrics.defs.demo_run", "--weeks", "1", "--today", "2025-03-12"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )


def test_make_demo_errors_are_one_line(tmp_path, s3_endpoint):
    (tmp_path / "afile").write_text("x")
    cases = [
        ({"RENKU_METRICS_STORAGE": "s3:/bucket/x"}, "an s3 root needs two slashes"),
        ({"RENKU_METRICS_STORAGE": str(tmp_path / "afile" / "data")}, "which is a file, not a directory"),
        (
            {"RENKU_METRICS_STORAGE": "s3://no-such-bucket-demo/x", "AWS_ENDPOINT_URL": s3_endpoint},
            "bucket 'no-such-bucket-demo' does not exist",
        ),
    ]
    for env, message in cases:
        done = _demo(tmp_path, **env)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("renku-metrics: ") and message in lines[0], done.stderr


def _ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:") and ("Z" in line or "X" in line) for line in status)
    except FileNotFoundError:
        return True


def test_killing_the_demo_parent_ends_the_demo_run(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENKU_METRICS_")}
    env.update(DAGSTER_HOME=str(home), RENKU_METRICS_STORAGE=str(tmp_path / "data"))
    output = tmp_path / "demo.out"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\n"
            f"child = subprocess.Popen([sys.executable, '-m', 'renku_metrics.defs.demo_run', '--today', '2025-06-02'], "
            f"stdout=open({str(output)!r}, 'w'), stderr=subprocess.STDOUT)\n"
            "print(child.pid, flush=True)\n"
            "child.wait()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    child = int(parent.stdout.readline())
    while "Dagster instance" not in output.read_text() and not _ended(child):
        time.sleep(0.1)
    assert not _ended(child), output.read_text()
    os.kill(parent.pid, signal.SIGKILL)  # only the parent, as when make is killed
    parent.wait(30)
    for _ in range(600):  # the child ends on its own (a bound against hanging, not a timing check)
        if _ended(child):
            break
        time.sleep(0.1)
    assert _ended(child), "the demo run kept running after its parent was killed"
    assert "Data under" not in output.read_text()  # it stopped mid-run, not at the end


# -- almost-S3 roots and endpoints carrying credentials ------------------------------------------


@pytest.mark.parametrize("root", ["s3//bucket/prefix", "S3//bucket", "https//host/x", "s3/bucket/prefix", "gs/b/x"])
def test_an_almost_s3_root_is_refused_before_anything_is_written(root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError, match=re.escape("looks like a URI but is not one (expected s3://bucket/prefix")):
        open_storage(root)
    assert list(tmp_path.iterdir()) == []  # nothing under the working directory
    # Spelled as a local path it is one.
    assert open_storage("./" + root).root == str(tmp_path / root.replace("//", "/"))


@pytest.mark.parametrize("variable", [False, True])
def test_an_endpoint_url_with_credentials_is_refused_without_showing_them(variable, monkeypatch):
    url = "https://AKIAEXAMPLE:s3cr3t-p4ss@s3.example.org:9000"
    if variable:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    with pytest.raises(StorageError) as info:
        open_storage("s3://bucket/prefix", endpoint_url=None if variable else url)
    message = str(info.value)
    assert "carries credentials (user:password@)" in message and "https://***@s3.example.org:9000" in message
    assert "s3cr3t" not in message and "AKIAEXAMPLE" not in message


def test_an_amalthea_endpoint_url_with_credentials_is_a_config_error():
    from renku_metrics.core.errors import ConfigError
    from renku_metrics.core.sources.amalthea import Settings

    settings = Settings(bucket="audit", endpoint_url="http://user:pw@minio.local:9000")
    with pytest.raises(ConfigError, match=r"x.endpoint_url: carries credentials \(http://\*\*\*@minio.local:9000\)"):
        settings.validate("x")


def test_a_full_disk_names_the_path_and_the_space_needed(tmp_path):
    """The kernel refuses the write (here: the process's file-size limit, EFBIG, as ENOSPC would)."""
    script = textwrap.dedent(
        f"""
        import resource, signal
        from renku_metrics.core.storage import LocalStorage, StorageError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a signal
        storage = LocalStorage({str(tmp_path / "root")!r})
        storage.write_bytes("raw/day.parquet", b"old")
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            storage.write_bytes("raw/day.parquet", b"x" * 100_000)
        except StorageError as exc:
            print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert "\n" not in line
    target = tmp_path / "root" / "raw" / "day.parquet"
    assert line.startswith(
        f"storage root {tmp_path / 'root'}: cannot write {target}: File too large (100000 bytes needed, "
    )
    assert "bytes free there" in line and "the previous object is unchanged" in line
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["day.parquet"]  # no partial file left


def test_the_dagster_resource_refuses_an_endpoint_with_credentials(monkeypatch):
    from renku_metrics.defs.resources import MetricsStorageResource

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    resource = MetricsStorageResource(root="s3://bucket/prefix", endpoint_url="http://minio:pa55word@minio.local:9000")
    with pytest.raises(StorageError) as info:
        resource.get_storage()
    assert "http://***@minio.local:9000 carries credentials" in str(info.value) and "pa55word" not in str(info.value)
    # Also when only the environment holds it (boto3 reads AWS_ENDPOINT_URL by itself).
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:pa55word@minio.local:9000")
    with pytest.raises(StorageError, match=r"AWS_ENDPOINT_URL http://\*\*\*@minio.local:9000 carries credentials"):
        MetricsStorageResource(root="s3://bucket/prefix").get_storage()
