"""A 3-year backfill from the UI on the production topology, measured (not a test):
`make benchmark-backfill BENCH_DATA=<dir>`.

``benchmarks.py`` estimates this backfill from sample runs; this runs it. On
this machine, through the processes of ``prod_local`` (the code server with the
image's command, dagster-webserver, dagster-daemon, a PostgreSQL instance made
from the repository's ``dagster.yaml`` with one process per run; the storage
root and the run logs local, where production has S3), it:

* reads the history under ``--root`` (a local storage root holding
  ``raw_events/`` as ``bench_data.generate`` writes it: 5 deployments
  ``bench0..bench4`` from 2023-01-02, demo source) with the same deployments
  (a deployments file in a temporary directory), in a fresh PostgreSQL database
  (``--pg-db``, dropped and created; the server and role of the tests,
  RENKU_METRICS_TEST_PG_*) that is dropped at the end;
* launches, the way the UI's *Materialize* dialog does (the GraphQL mutation
  ``launchPartitionBackfill`` with the selected partition keys), two backfills
  at once: every complete ISO week of the history (156 for 1,092 days) of the
  weekly job's assets, and the 36 months the history touches of the monthly
  job's assets; by default as from the asset graph (an asset backfill),
  with ``--launch-from job`` as from the jobs' pages (a job backfill);
* waits until both backfills are completed, checks that every run succeeded
  and that every partition of every asset was materialized, and prints the
  wall time from the launch to both backfills completed;
* prints Dagster's share, per run, from the instance's run records and event
  logs: how long after the launch the backfill daemon created the run, its
  wait in the run queue, from its launch to RUN_START (a process started, the
  code location loaded), its steps' own time, and what remains of
  RUN_START..RUN_SUCCESS; and the sum of the steps' time against the wall time;
* prints the CPU time the run workers, the daemon, the code server, the
  webserver and PostgreSQL took meanwhile, and how busy the machine was.

Derived data under ``--root`` (``state/``, ``metrics/``, ``reports/``) makes
the runs cheaper than a first backfill: ``--fresh`` deletes them before
starting, else they are reported and kept. The storage root must be writable
and hold the raw events of the benchmark's deployments only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DAYS = 1092
DEPLOYMENTS = 5
JOBS = {"week": "weekly_metrics", "month": "monthly_metrics"}
DERIVED = ("state", "metrics", "reports")  # what runs write under the storage root
FINISHED = ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")


def periods(days: int) -> dict[str, list[str]]:
    """Partition keys: the complete ISO weeks of the history, and every month it touches."""
    from renku_metrics_tests.bench_data import START

    end = START + dt.timedelta(days=days)  # the first day after the history
    first_monday = START + dt.timedelta(days=(7 - START.weekday()) % 7)
    weeks = []
    week = first_monday
    while week + dt.timedelta(days=7) <= end:
        weeks.append(week.isoformat())
        week += dt.timedelta(days=7)
    months = []
    month = START.replace(day=1)
    while month < end:
        months.append(month.isoformat())
        month = (month + dt.timedelta(days=32)).replace(day=1)
    return {"week": weeks, "month": months}


def write_deployments(path: Path, count: int) -> None:
    """The benchmark's deployments (``bench_data.bench_deployments``) as a deployments file."""
    from renku_metrics.core.config import load_config
    from renku_metrics_tests.bench_data import bench_deployments

    wanted = bench_deployments(count)
    entries = [
        {
            "name": d.name,
            "start_date": d.start_date.isoformat(),
            "launched_on_start_date": d.launched_on_start_date,
            "sources": {name: settings.model_dump(mode="json") for name, settings in d.sources.items()},
        }
        for d in wanted
    ]
    path.write_text(yaml.safe_dump({"deployments": entries}, sort_keys=False))
    loaded = load_config(path, env={}).deployments
    if [(d.name, d.start_date, d.launched_on_start_date) for d in loaded] != [
        (d.name, d.start_date, d.launched_on_start_date) for d in wanted
    ]:
        raise RuntimeError(f"{path} does not load as the benchmark's deployments")


def fresh_database(name: str) -> dict:
    """Drop and create database ``name`` on the tests' PostgreSQL server; its connection parameters."""
    import psycopg2

    from renku_metrics_tests.conftest import pg_params

    params = pg_params()
    admin = psycopg2.connect(**{**params, "dbname": "postgres"})
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return {**params, "dbname": name}


def drop_database(params: dict) -> None:
    import psycopg2

    admin = psycopg2.connect(**{**params, "dbname": "postgres"})
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{params["dbname"]}" WITH (FORCE)')
    admin.close()


# --------------------------------------------------------------------------- one run's times


@dataclass
class RunTimes:
    """A run's moments (epoch seconds) from its record and its event log."""

    run_id: str
    backfill: str  # "weekly" or "monthly"
    partition: str
    job: str
    status: str
    created: float
    enqueued: float | None = None
    dequeued: float | None = None  # RUN_STARTING: handed to the run launcher
    started: float | None = None  # RUN_START: the run's process runs the job
    ended: float | None = None  # RUN_SUCCESS / RUN_FAILURE
    steps: dict[str, float] = field(default_factory=dict)  # step key -> STEP_START..STEP_SUCCESS

    @property
    def step_seconds(self) -> float:
        return sum(self.steps.values())

    @property
    def launch_to_start(self) -> float:
        return self.started - self.dequeued

    @property
    def queue_wait(self) -> float:
        return self.dequeued - (self.enqueued or self.created)

    @property
    def remainder(self) -> float:
        return self.ended - self.started - self.step_seconds

    @property
    def in_slot(self) -> float:
        """Dequeued to ended: the time the run holds one of the queue's slots."""
        return self.ended - self.dequeued


def _partition(tags) -> str:
    """A run's partition: its tag, or the range of a run of a multi-run asset backfill."""
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    first = tags.get("dagster/asset_partition_range_start", "")
    last = tags.get("dagster/asset_partition_range_end", "")
    return first if first == last else f"{first}..{last}"


def run_times(instance, backfill_id: str, label: str) -> list[RunTimes]:
    from dagster import DagsterEventType, RunsFilter

    out = []
    for record in instance.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id})):
        run = record.dagster_run
        times = RunTimes(
            run_id=run.run_id,
            backfill=label,
            partition=_partition(run.tags),
            job=run.job_name,
            status=run.status.value,
            created=record.create_timestamp.timestamp(),
        )
        step_start: dict[str, float] = {}
        for event in instance.all_logs(run.run_id):
            kind = event.dagster_event_type
            if kind == DagsterEventType.RUN_ENQUEUED:
                times.enqueued = event.timestamp
            elif kind == DagsterEventType.RUN_STARTING:
                times.dequeued = event.timestamp
            elif kind == DagsterEventType.RUN_START:
                times.started = event.timestamp
            elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
                times.ended = event.timestamp
            elif kind == DagsterEventType.STEP_START:
                step_start[event.step_key] = event.timestamp
            elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                if event.step_key in step_start:
                    times.steps[event.step_key] = event.timestamp - step_start[event.step_key]
        out.append(times)
    return out


# --------------------------------------------------------------------------- report


def _stats(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return (
        f"mean {statistics.fmean(values):7.2f} s  median {statistics.median(values):7.2f} s  "
        f"max {max(values):7.2f} s  sum {sum(values):9.1f} s"
    )


def report(runs: list[RunTimes], launched: float, completed: float, slots: int) -> None:
    done = [r for r in runs if None not in (r.dequeued, r.started, r.ended)]
    wall = completed - launched
    print(f"total wall time, launch to both backfills completed: {wall:8.1f} s ({wall / 60:.1f} min)")
    if not done:
        return
    first_created = min(r.created for r in runs)
    last_ended = max(r.ended for r in done)
    print(f"  launch to the first run created (backfill daemon):   {first_created - launched:8.1f} s")
    print(f"  launch to the last run created:                      {max(r.created for r in runs) - launched:8.1f} s")
    print(f"  launch to the last run ended:                        {last_ended - launched:8.1f} s")
    print(f"  last run ended to both backfills completed:          {completed - last_ended:8.1f} s")
    print(f"per run ({len(done)} runs; mean, median, max, sum):")
    rows = [
        ("backfill launch to run created", [r.created - launched for r in done]),
        ("queue wait (enqueued to dequeued)", [r.queue_wait for r in done]),
        ("dequeued to RUN_START (process start, code load)", [r.launch_to_start for r in done]),
        ("steps' own time (STEP_START..STEP_SUCCESS)", [r.step_seconds for r in done]),
        ("remainder of RUN_START..RUN_SUCCESS", [r.remainder for r in done]),
        ("Dagster's per-run overhead (dequeued to end, minus steps)", [r.in_slot - r.step_seconds for r in done]),
        ("run in its slot (dequeued to RUN_SUCCESS)", [r.in_slot for r in done]),
    ]
    for label, values in rows:
        print(f"  {label:<58} {_stats(values)}")
    for label in sorted({r.backfill for r in done}, reverse=True):
        mine = [r for r in done if r.backfill == label]
        steps = sorted({k for r in mine for k in r.steps})
        print(f"  {label} backfill: {len(mine)} runs of job {', '.join(sorted({r.job for r in mine}))}")
        for step in steps:
            print(f"    step {step:<51} {_stats([r.steps[step] for r in mine if step in r.steps])}")
        print(f"    {'Dagster overhead per run':<56} {_stats([r.in_slot - r.step_seconds for r in mine])}")
    steps_total = sum(r.step_seconds for r in done)
    in_slots = sum(r.in_slot for r in done)
    first_dequeued = min(r.dequeued for r in done)
    span = last_ended - first_dequeued
    print(f"sum of the steps' own time: {steps_total:9.1f} s = {100 * steps_total / wall:5.1f} % of the wall time")
    print(
        f"sum of the runs' time in a slot: {in_slots:9.1f} s; Dagster's share of it: "
        f"{100 * (in_slots - steps_total) / in_slots:5.1f} %"
    )
    print(
        f"run slots ({slots}) busy from the first run dequeued to the last run ended ({span:.1f} s): "
        f"{100 * in_slots / (slots * span):5.1f} %"
    )
    running = _max_concurrent(done)
    print(f"most runs in progress at once: {running}")


def _max_concurrent(runs: list[RunTimes]) -> int:
    edges = sorted([(r.dequeued, 1) for r in runs] + [(r.ended, -1) for r in runs], key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


# --------------------------------------------------------------------------- CPU


def _stat(path: Path) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command (state first)."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _ticks(pid: int) -> tuple[float, float]:
    """CPU seconds of process ``pid``: its own, and that of its ended (reaped) children."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    hz = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / hz, (int(fields[13]) + int(fields[14])) / hz


def _children(pid: int) -> list[list[str]]:
    return [f for f in map(_stat, Path("/proc").glob("[0-9]*/stat")) if f and int(f[1]) == pid]


def _ended_children(pid: int) -> tuple[int, float]:
    """Children of ``pid`` that ended but were not reaped yet: how many, and their CPU seconds."""
    ended = [f for f in _children(pid) if f[0] == "Z"]
    return len(ended), sum(int(v) for f in ended for v in f[11:15]) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu() -> float | None:
    """CPU seconds of the local PostgreSQL server: its postmaster's ended children (backends of
    connections closed since) and its live processes. None when it is not on this machine."""
    hz = os.sysconf("SC_CLK_TCK")
    stats = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = path.read_text().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, IndexError, ValueError):
            continue
        if comm == "postgres":
            stats[int(path.parent.name)] = rest.split()
    postmasters = [pid for pid, f in stats.items() if int(f[1]) not in stats]
    if len(postmasters) != 1:
        return None
    ended = sum(int(v) for v in stats[postmasters[0]][13:15])
    return (ended + sum(int(v) for f in stats.values() for v in f[11:13])) / hz


def _machine_cpu() -> tuple[float, float]:
    """Seconds of all CPUs since boot: (busy, total), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / hz, sum(values[:8]) / hz


class CpuMeter:
    """CPU time of the topology's processes between ``start()`` and ``stop()``. Run workers are
    children of dagster-daemon (the run launcher starts them): their time (with that of their own
    children, such as the compute log capture's) is the daemon's children's once the launcher has
    reaped them, and read from /proc while they are ended but not reaped."""

    def __init__(self, prod) -> None:
        self.prod = prod

    def _sample(self) -> dict[str, tuple[float, float]]:
        out = {name: _ticks(proc.pid) for name, proc in self.prod.processes.items()}
        own, children = out["daemon"]
        out["daemon"] = (own, children + _ended_children(self.prod.processes["daemon"].pid)[1])
        return out

    def start(self) -> None:
        self.before, self.machine_before, self.pg_before = self._sample(), _machine_cpu(), _postgres_cpu()

    def stop(self, timeout: float = 60) -> None:
        """After the last run workers have exited (their runs ended at RUN_SUCCESS)."""
        deadline = time.monotonic() + timeout
        daemon = self.prod.processes["daemon"].pid
        while any(f[0] != "Z" for f in _children(daemon)) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.after, self.machine_after, self.pg_after = self._sample(), _machine_cpu(), _postgres_cpu()

    def report(self, runs: int) -> None:
        own = {n: self.after[n][0] - self.before[n][0] for n in self.after}
        workers = self.after["daemon"][1] - self.before["daemon"][1]
        busy = self.machine_after[0] - self.machine_before[0]
        total = self.machine_after[1] - self.machine_before[1]
        print("CPU time, launch to completed (user + system):")
        print(f"  run worker processes (dagster api execute_run)  {workers:8.1f} s = {workers / runs:5.2f} s per run")
        for name in ("daemon", "code-server", "webserver"):
            print(f"  {name + ' (own)':<47} {own[name]:8.1f} s = {own[name] / runs:5.2f} s per run")
        ours = workers + sum(own.values())
        print(f"  {'these processes together':<47} {ours:8.1f} s = {ours / runs:5.2f} s per run")
        if self.pg_before is not None and self.pg_after is not None:
            pg = self.pg_after - self.pg_before
            print(f"  {'PostgreSQL (all its databases)':<47} {pg:8.1f} s = {pg / runs:5.2f} s per run")
        print(
            f"  machine, all processes (PostgreSQL and anything else running): {busy:8.1f} s of "
            f"{total:.1f} s of {os.cpu_count()} CPUs = {100 * busy / total:5.1f} % busy"
        )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="local storage root holding raw_events/ (bench_data.generate)")
    parser.add_argument("--days", type=int, default=DAYS, help="days of history from 2023-01-02")
    parser.add_argument("--deployments", type=int, default=DEPLOYMENTS)
    parser.add_argument(
        "--launch-from",
        choices=("assets", "job"),
        default="assets",
        help="as from the asset graph (an asset backfill, default) or from the jobs' pages (a job backfill)",
    )
    parser.add_argument(
        "--events", type=int, help="when --root holds no raw_events/, generate a history of this many events there"
    )
    parser.add_argument("--fresh", action="store_true", help="delete state/, metrics/, reports/ under --root first")
    parser.add_argument("--limit", type=int, help="only the first LIMIT weeks and months (to try the set-up)")
    parser.add_argument("--pg-db", default="renku_metrics_bench", help="database made afresh for the instance")
    parser.add_argument("--ports", help="code server and webserver ports, e.g. 3200,3201 (default: free ones)")
    parser.add_argument(
        "--instance",
        default="{}",
        help="YAML mapping of dagster.yaml sections replacing the repository's keys of those sections, "
        "e.g. '{run_queue: {dequeue_interval_seconds: 5}}' (to compare settings)",
    )
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait for the backfills")
    parser.add_argument("--keep", action="store_true", help="keep the database and the working directory")
    args = parser.parse_args(argv)

    from dagster import DagsterInstance

    from renku_metrics_tests.bench_data import bench_deployments
    from renku_metrics_tests.prod_local import ProdLocal

    root = Path(args.root).resolve()
    if not (root / "raw_events").is_dir() and args.events:
        from renku_metrics_tests.bench_data import generate

        made = generate(root, args.events, deployments=args.deployments, days=args.days)
        print(f"generated {made['events']:,} events under {root}")
    if not (root / "raw_events").is_dir():
        print(f"{root}: no raw_events/ (generate it with renku_metrics_tests.bench_data.generate)", file=sys.stderr)
        return 2
    stored = sorted(p.name.removeprefix("deployment=") for p in (root / "raw_events").iterdir())
    expected = [d.name for d in bench_deployments(args.deployments)]
    if stored != expected:
        print(f"{root}: raw events of {stored}, not of the benchmark's {expected}", file=sys.stderr)
        return 2
    derived = [name for name in DERIVED if (root / name).exists()]
    if derived and args.fresh:
        for name in derived:
            shutil.rmtree(root / name)
        print(f"deleted {', '.join(derived)} under {root}")
    elif derived:
        print(f"kept {', '.join(derived)} under {root} (--fresh deletes them): runs reuse what they hold")
    keys = {period: values[: args.limit] for period, values in periods(args.days).items()}
    ports = tuple(int(p) for p in args.ports.split(",")) if args.ports else None
    overrides = yaml.safe_load(args.instance) or {}

    work = Path(tempfile.mkdtemp(prefix="renku-metrics-bench-backfill-"))
    deployments = work / "deployments.yaml"
    write_deployments(deployments, args.deployments)
    pg = fresh_database(args.pg_db)
    prod = ProdLocal(work, pg, None, str(root), None, deployments, instance_overrides=overrides, ports=ports)
    status = 1
    try:
        t0 = time.perf_counter()
        with prod:
            print(f"topology up in {time.perf_counter() - t0:.1f} s (webserver {prod.url}, database {args.pg_db})")
            os.environ.update({k: v for k, v in prod.common.items() if k.startswith("DAGSTER_")})
            instance = DagsterInstance.from_config(str(prod.home))
            slots = _settings(instance, overrides)
            job_assets = _job_assets(prod)
            cpu = CpuMeter(prod)
            backfills = {}
            cpu.start()
            launched = time.time()
            for period in ("week", "month"):
                job = JOBS[period]
                backfills[period] = prod.launch_backfill_as_ui(
                    job_assets[job], keys[period], job if args.launch_from == "job" else None
                )
            for period, backfill_id in backfills.items():
                job = JOBS[period]
                print(
                    f"launched ({'job page' if args.launch_from == 'job' else 'asset graph'}) backfill "
                    f"{backfill_id}: {len(keys[period])} partitions {keys[period][0]}..{keys[period][-1]} of "
                    + ", ".join("/".join(k) for k in job_assets[job]),
                    flush=True,
                )
            statuses = _wait(instance, prod, list(backfills.values()), args.timeout)
            completed = time.time()
            cpu.stop()
            runs = {
                period: run_times(instance, backfill_id, f"{JOBS[period].split('_')[0]}")
                for period, backfill_id in backfills.items()
            }
            ok = _verify(instance, runs, keys, job_assets, statuses)
            every = [r for period in runs.values() for r in period]
            report(every, launched, completed, slots)
            cpu.report(len(every))
            instance.dispose()
            status = 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept the working directory {work} and the database {args.pg_db}")
        else:
            drop_database(pg)
            shutil.rmtree(work, ignore_errors=True)
    return status


def _settings(instance, overrides: dict) -> int:
    """Prints the run queue's settings in effect; the number of backfill runs that may run at once."""
    queue = instance.get_concurrency_config().run_queue_config
    limits = [t for t in queue.tag_concurrency_limits or [] if t["key"] == "dagster/backfill" and "value" not in t]
    slots = min([queue.max_concurrent_runs, *[t["limit"] for t in limits]])
    print(
        f"instance: at most {queue.max_concurrent_runs} runs at once, {slots} backfill runs; dequeue every "
        f"{instance.run_coordinator.dequeue_interval_seconds} s; run monitoring every "
        f"{instance.run_monitoring_poll_interval_seconds} s" + (f"; overrides {overrides}" if overrides else "")
    )
    return slots


def _job_assets(prod) -> dict[str, list[tuple[str, ...]]]:
    """Each period job's assets, as the webserver lists them."""
    nodes = prod.graphql("{ assetNodes { assetKey { path } jobNames } }")["assetNodes"]
    out = {}
    for job in JOBS.values():
        out[job] = sorted(tuple(n["assetKey"]["path"]) for n in nodes if job in n["jobNames"])
        if not out[job]:
            raise RuntimeError(f"the webserver lists no asset of job {job}")
    return out


def _wait(instance, prod, backfill_ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = {b: instance.get_backfill(b).status.value for b in backfill_ids}
        if all(s in FINISHED for s in statuses.values()):
            return statuses
        for name, proc in prod.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{prod.log(name)[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"backfills not completed within {timeout:.0f} s: {statuses}")
        time.sleep(1)


def _verify(instance, runs: dict[str, list[RunTimes]], keys, job_assets, statuses) -> bool:
    """Every run succeeded, every partition in exactly one run, every partition of every asset materialized."""
    from collections import Counter

    from dagster import AssetKey

    def covered(partition: str, period_keys: list[str]) -> list[str]:
        first, _, last = partition.partition("..")
        return [k for k in period_keys if first <= k <= (last or first)]

    ok = True
    for period, backfill_runs in runs.items():
        job = JOBS[period]
        failed = [r for r in backfill_runs if r.status != "SUCCESS"]
        counts = Counter(k for r in backfill_runs for k in covered(r.partition, keys[period]))
        odd = sorted(k for k in set(keys[period]) | set(counts) if counts[k] != 1 or k not in keys[period])
        print(
            f"{job}: {len(backfill_runs)} runs, {len(failed)} not SUCCESS, "
            f"{len(keys[period]) - len(odd)}/{len(keys[period])} partitions with exactly one run"
        )
        if failed or odd:
            ok = False
            print(f"  runs not SUCCESS: {[(r.partition, r.status) for r in failed][:10]}")
            print(f"  partitions without exactly one run: {odd[:10]}")
        for key in job_assets[job]:
            have = instance.get_materialized_partitions(AssetKey(list(key)))
            missing = sorted(set(keys[period]) - set(have))
            print(f"  {'/'.join(key)}: {len(keys[period]) - len(missing)}/{len(keys[period])} partitions materialized")
            if missing:
                ok = False
                print(f"    missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    for backfill_id, value in statuses.items():
        print(f"backfill {backfill_id}: {value}")
        ok = ok and value == "COMPLETED_SUCCESS"
    return ok


if __name__ == "__main__":
    sys.exit(main())
