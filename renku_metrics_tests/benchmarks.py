"""Speed and memory figures (not a test): `make benchmark [EVENTS=100000000]`.

Generates a synthetic history in the stored layout in a temporary directory
(5 deployments x 1,092 daily files with manifests, md5-hex user ids, 20,000
users per deployment at 100 million events; see bench_data.py) and prints, each
measured in a fresh child process with its own peak RSS:

* one week's ``aggregate_period`` (what the weekly schedule runs);
* the derived engagement state (``renku_metrics.core.activity``) built from raw
  for the whole history but its last week (what a first run after deleting
  ``state/`` costs);
* one month's ``stickiness``, and one week's ``lifecycle`` and one cohort week's
  ``retention`` as weekly runs (the week they look at is new to the state) after
  3 years and after 1 year of history (the ratio shows whether a run grows with
  history; ~1 = flat);
* the full-history recompute of every week (``aggregate_periods``) against the
  bare DuckDB query (distinct users per deployment, ISO week and action, plus
  active users, over all files at once) and their ratio;
* a 3-year backfill of the weekly and monthly assets from the UI, one run per
  period (156 + 36 runs): sample runs of each job and the start-up of a run
  process, measured, and the total they add up to.

``EVENTS`` sets the scale (default 2,000,000), ``BENCH_DATA=<dir>`` reuses (or
keeps) a generated history instead of a temporary one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAYS = 1092
DEPLOYMENTS = 5


def _dates(days: int) -> dict:
    from renku_metrics_tests.bench_data import START

    end = START + dt.timedelta(days=days)  # first day after the history
    last_week = end - dt.timedelta(days=end.weekday() or 7)  # the last full ISO week
    if last_week + dt.timedelta(days=7) > end:
        last_week -= dt.timedelta(days=7)
    year1_week = START + dt.timedelta(weeks=52)
    last_month = (end - dt.timedelta(days=1)).replace(day=1)
    if (last_month.replace(day=28) + dt.timedelta(days=4)).replace(day=1) > end:
        last_month = (last_month - dt.timedelta(days=1)).replace(day=1)
    return {
        "end": end,
        "week": last_week,
        "month": last_month,
        "year1_week": year1_week,
        "cohort": last_week - dt.timedelta(weeks=8),  # its 8 later weeks have all ended
        "year1_cohort": year1_week - dt.timedelta(weeks=8),
    }


def _now(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(6), dt.timezone.utc)


# --------------------------------------------------------------------------- one figure, in a child process


def _figure(name: str, root: str, days: int) -> dict:
    """Run one measured piece of work in this (fresh) process."""
    from renku_metrics.core import engagement
    from renku_metrics.core.aggregate import aggregate_period, aggregate_periods
    from renku_metrics.core.catalog import load_catalog
    from renku_metrics.core.periods import period_starts_between
    from renku_metrics.core.storage import LocalStorage
    from renku_metrics_tests.bench_data import START, bench_deployments

    storage = LocalStorage(root)
    deployments = bench_deployments(DEPLOYMENTS)
    catalog = load_catalog()
    d = _dates(days)
    info = ""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    if name == "state_build":
        from renku_metrics.core.activity import DeploymentActivity

        users = sum(DeploymentActivity.load(storage, dep).first_seen().num_rows for dep in deployments)
        info = f"{users:,} first-seen rows"
    elif name == "aggregate_week":
        aggregate_period(storage, deployments, catalog, "week", d["week"], _now(d["end"]))
    elif name == "stickiness_month":
        engagement.stickiness(storage, deployments, d["month"], _now(d["end"]))
    elif name in ("lifecycle_week", "lifecycle_week_1y"):
        week = d["week"] if name == "lifecycle_week" else d["year1_week"]
        engagement.lifecycle(storage, deployments, "week", week, _now(week + dt.timedelta(days=7)))
    elif name in ("retention_week", "retention_week_1y"):
        cohort = d["cohort"] if name == "retention_week" else d["year1_cohort"]
        engagement.retention(storage, deployments, cohort, _now(cohort + dt.timedelta(weeks=9)))
    elif name == "recompute_weeks":
        starts = period_starts_between("week", START, d["end"])
        out = aggregate_periods(storage, deployments, catalog, "week", starts, _now(d["end"]))
        info = f"{len(out)} weeks"
    elif name == "bare_duckdb":
        import duckdb

        from renku_metrics.core.layout import raw_events_key
        from renku_metrics.core.periods import days_between

        paths = [
            storage.uri(raw_events_key(dep.name, day)) for dep in deployments for day in days_between(START, d["end"])
        ]
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        rows = con.execute(
            """SELECT deployment, CAST(date_trunc('week', occurred_at) AS DATE) AS week, action,
                      count(DISTINCT user_id) AS users
               FROM read_parquet($paths)
               GROUP BY GROUPING SETS ((deployment, week, action), (deployment, week))""",
            {"paths": paths},
        ).fetchall()
        info = f"{len(rows)} rows"
    else:
        raise ValueError(f"unknown figure {name!r}")
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu0,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "info": info,
    }


def measure(name: str, root: Path, days: int) -> dict:
    """One figure in a child process: its time and the child's own peak RSS."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "renku_metrics_tests.benchmarks",
            "--figure",
            name,
            "--root",
            str(root),
            "--days",
            str(days),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line(label: str, fig: dict) -> str:
    extra = f"  ({fig['info']})" if fig.get("info") else ""
    return (
        f"{label:<62} {fig['seconds']:8.2f} s (CPU {fig['cpu_seconds']:7.2f} s)  "
        f"peak RSS {fig['peak_rss_mib']:6.0f} MiB{extra}"
    )


def _forget_week(root: Path, week: dt.date) -> None:
    """Make ``week`` new to the derived state, as if just extracted: the next run reads its manifests and raw
    files, rebuilds its user weeks and folds it into first seen, exactly what a weekly run does."""
    import pyarrow.parquet as pq

    from renku_metrics.core import activity
    from renku_metrics.core.layout import day_index_key, first_seen_key, user_weeks_key

    days = {(week + dt.timedelta(days=i)).isoformat() for i in range(7)}
    for dep in (f"bench{i}" for i in range(DEPLOYMENTS)):
        (root / user_weeks_key(dep, week)).unlink(missing_ok=True)
        index_path = root / day_index_key(dep)
        index = json.loads(index_path.read_text())
        index["days"] = {d: v for d, v in index["days"].items() if d not in days}
        index_path.write_text(json.dumps(index))
        seen_path = root / first_seen_key(dep)
        table = pq.read_table(seen_path)
        meta = json.loads(table.schema.metadata[activity._META])
        meta["days"] = {d: v for d, v in meta["days"].items() if d not in days}
        pq.write_table(activity._with_meta(table, meta), seen_path, compression="zstd")


def _hold_out(root: Path, holdout: Path, week: dt.date, back: bool = False) -> None:
    """Move the raw days of ``week`` aside (or back): the state is then built without the newest week."""
    from renku_metrics.core.layout import raw_events_key

    for dep in range(DEPLOYMENTS):
        for i in range(7):
            day_dir = root / Path(raw_events_key(f"bench{dep}", week + dt.timedelta(days=i))).parent
            aside = holdout / day_dir.relative_to(root)
            src, dst = (aside, day_dir) if back else (day_dir, aside)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)


def scale_figures(root: Path, days: int) -> None:
    """The figures of issue 'scale': per-run costs, history growth, full-history recompute."""
    import shutil

    d = _dates(days)
    figs = {}
    shutil.rmtree(root / "state", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="renku-metrics-holdout-", dir=root.parent) as holdout:
        # The derived state as last week's runs left it: everything but the newest week.
        _hold_out(root, Path(holdout), d["week"])
        try:
            figs["state_build"] = measure("state_build", root, days)
        finally:
            _hold_out(root, Path(holdout), d["week"], back=True)
    print(_line("derived state from raw, whole history but the last week", figs["state_build"]), flush=True)
    for name, label in (
        ("aggregate_week", "one week's aggregate_period (weekly schedule)"),
        ("stickiness_month", "one month's stickiness"),
        ("lifecycle_week", "one week's lifecycle, 3 years of history"),
        ("lifecycle_week_1y", "one week's lifecycle, 1 year of history"),
        ("retention_week", "one cohort week's retention, 3 years of history"),
        ("retention_week_1y", "one cohort week's retention, 1 year of history"),
        ("recompute_weeks", "full-history recompute, every week (aggregate_periods)"),
        ("bare_duckdb", "bare DuckDB query: distinct users per deployment, week, action"),
    ):
        # Each engagement figure is a weekly run: the newest week it looks at is new to the state.
        if name == "lifecycle_week_1y":
            _forget_week(root, d["year1_week"])
        elif name == "retention_week":
            _forget_week(root, d["week"])
        elif name == "retention_week_1y":
            _forget_week(root, d["year1_cohort"] + dt.timedelta(weeks=8))
        figs[name] = measure(name, root, days)
        print(_line(label, figs[name]), flush=True)
    ratio = lambda a, b: figs[a]["seconds"] / figs[b]["seconds"]  # noqa: E731
    print(f"lifecycle 3 years / 1 year of history: {ratio('lifecycle_week', 'lifecycle_week_1y'):.2f} (~1 = flat)")
    print(f"retention 3 years / 1 year of history: {ratio('retention_week', 'retention_week_1y'):.2f} (~1 = flat)")
    print(
        f"lifecycle / weekly aggregate: {ratio('lifecycle_week', 'aggregate_week'):.2f}, "
        f"retention / weekly aggregate: {ratio('retention_week', 'aggregate_week'):.2f}"
    )
    cpu = figs["recompute_weeks"]["cpu_seconds"] / figs["bare_duckdb"]["cpu_seconds"]
    print(
        f"full-history recompute / bare DuckDB query: {ratio('recompute_weeks', 'bare_duckdb'):.2f} "
        f"(CPU time {cpu:.2f}; target <= 1.2)"
    )
    print("(wall times depend on what else the machine runs; CPU times less so)")


# --------------------------------------------------------------------------- per-period backfill (UI)

BACKFILL_SAMPLE_WEEKS = 6
BACKFILL_SAMPLE_MONTHS = 2


def _backfill_sample(root: str, days: int) -> dict:
    """In this (fresh) process: the weekly and monthly jobs run one period per run, as a
    UI backfill launches them (the in-process executor), on the last weeks and months
    of the history; mean seconds per run."""
    import warnings

    import dagster
    from dagster import DagsterInstance

    from renku_metrics.core.config import MetricsConfig
    from renku_metrics.definitions import build_defs
    from renku_metrics_tests.bench_data import bench_deployments

    for category in (dagster.BetaWarning, dagster.PreviewWarning, dagster.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)
    d = _dates(days)
    config = MetricsConfig(path="bench", deployments=tuple(bench_deployments(DEPLOYMENTS)))
    defs = build_defs(config=config, storage_root=root)
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    out = {}
    with tempfile.TemporaryDirectory(prefix="renku-metrics-bench-home-") as home:
        with DagsterInstance.local_temp(home) as instance:
            for job, starts in (
                ("weekly_metrics", [d["week"] - dt.timedelta(weeks=i) for i in range(BACKFILL_SAMPLE_WEEKS)]),
                ("monthly_metrics", [d["month"]]),
            ):
                if job == "monthly_metrics":
                    for _ in range(BACKFILL_SAMPLE_MONTHS - 1):
                        starts.append((starts[-1] - dt.timedelta(days=1)).replace(day=1))
                job_def = defs.resolve_job_def(job)
                t0 = time.perf_counter()
                for start in starts:
                    result = job_def.execute_in_process(
                        instance=instance, partition_key=start.isoformat(), run_config=quiet
                    )
                    assert result.success, (job, start)
                out[job] = (time.perf_counter() - t0) / len(starts)
    return out


def _run_start_seconds() -> float:
    """What a launched run pays before its first step: a fresh Python process loading the
    code location (the default run launcher starts one process per run)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-W", "ignore", "-c", "from renku_metrics.definitions import defs; defs.get_repository_def()"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def per_period_backfill_figures(root: Path, days: int) -> None:
    """A 3-year backfill of the weekly and monthly aggregates from the UI: one run per period
    (156 weekly + 36 monthly runs), estimated from measured sample runs and the measured
    start-up of a run process. Each weekly run holds aggregate, lifecycle and retention;
    each monthly run aggregate, lifecycle and stickiness."""
    out = subprocess.run(
        [sys.executable, "-m", "renku_metrics_tests.benchmarks", "--figure", "backfill_sample", "--root", str(root)]
        + ["--days", str(days)],
        check=True,
        capture_output=True,
        text=True,
    )
    per_run = json.loads(out.stdout.strip().splitlines()[-1])
    start = min(_run_start_seconds() for _ in range(3))
    weekly, monthly = per_run["weekly_metrics"], per_run["monthly_metrics"]
    total = 156 * (weekly + start) + 36 * (monthly + start)
    print(f"{'one weekly run (in-process executor), mean of ' + str(BACKFILL_SAMPLE_WEEKS):<58} {weekly:8.2f} s")
    print(f"{'one monthly run (in-process executor), mean of ' + str(BACKFILL_SAMPLE_MONTHS):<58} {monthly:8.2f} s")
    print(f"{'start of a run process (loading the code location)':<58} {start:8.2f} s")
    print(
        f"3-year UI backfill, 156 weekly + 36 monthly runs, one at a time: ~{total / 60:.1f} min "
        f"(runs in parallel divide it by the run queue's concurrency)"
    )


def personal_data_figures() -> None:
    """Personal-data detection on 1 MB adversarial strings (the old regex took minutes on these)."""
    from renku_metrics.core.events import looks_personal

    for label, text in (
        ("no '@'", "a" * 1_000_000),
        ("'a@' repeated", "a@" * 500_000),
        ("long domain", "a@" + "b" * 999_998),
    ):
        t0 = time.perf_counter()
        looks_personal(text)
        print(f"personal-data check, 1 MB {label}: {1000 * (time.perf_counter() - t0):.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=int(os.environ.get("EVENTS") or 2_000_000))
    parser.add_argument("--data", default=os.environ.get("BENCH_DATA") or None)
    parser.add_argument("--figure")
    parser.add_argument("--root")
    parser.add_argument("--days", type=int, default=DAYS)
    args = parser.parse_args()
    if args.figure == "backfill_sample":
        print(json.dumps(_backfill_sample(args.root, args.days)))
        return
    if args.figure:
        print(json.dumps(_figure(args.figure, args.root, args.days)))
        return
    personal_data_figures()

    from renku_metrics_tests.bench_data import generate

    with tempfile.TemporaryDirectory(prefix="renku-metrics-bench-") as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "data"
        if (root / "raw_events").exists():
            print(f"using the history already generated under {root}")
        else:
            t0 = time.perf_counter()
            made = generate(root, args.events, deployments=DEPLOYMENTS, days=args.days)
            seconds = time.perf_counter() - t0
            print(
                f"generated {made['events']:,} events, {made['deployments']} deployments x {made['days']} days, "
                f"{made['users']:,} users per deployment, in {seconds:.1f} s"
            )
        scale_figures(root, args.days)
        per_period_backfill_figures(root, args.days)


if __name__ == "__main__":
    main()
