"""Speed and memory figures (not a test): `make benchmark [EVENTS=100000000]`.

Generates a synthetic history in the stored layout in a temporary directory
(5 deployments x 1,092 daily files with manifests, md5-hex user ids, 20,000
users per deployment at 100 million events; see bench_data.py) and prints, each
measured in a fresh child process with its own peak RSS and CPU time:

* the derived engagement state (``renku_metrics.core.activity``) built from raw
  for the whole history but its last week (what a first run after deleting
  ``state/`` costs), which leaves the state as last week's runs left it;
* a weekly run as the weekly job runs it, in one process: the week's
  ``aggregate_period`` (which stores the week's user sets), then ``lifecycle``,
  then ``retention`` (the new cohort and the 8 it refreshes), then ``activation``
  (the new cohort and the 4 it refreshes); and a monthly run
  (aggregate, lifecycle, stickiness);
* both after the whole 3-year history and in a store holding only its last year
  (hard links to the same files): the same weeks, so the ratio shows whether a
  run grows with the length of history (~1 = flat);
* in the weekly and monthly runs, the group metrics of 100 groups per deployment
  (``core/value/groups.py``; membership snapshots of 5 to 400 members written
  beforehand, untimed), read from the user sets the aggregate stores;
* the full-history recompute of every week (``aggregate_periods``) against the
  bare DuckDB query (distinct users per deployment, ISO week and action, plus
  active users, over all files at once) and their ratio;
The 3-year backfill through the UI, with Dagster's per-run overhead, is measured
on the production topology by ``make benchmark-backfill`` (bench_backfill.py).

``EVENTS`` sets the scale (default 2,000,000), ``BENCH_DATA=<dir>`` reuses (or
keeps) a generated history instead of a temporary one (its ``state/`` and
``metrics/`` are rebuilt; a temporary one-year store is made beside it).
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


def _dates(days: int, start: dt.date | None = None) -> dict:
    from renku_metrics_tests.bench_data import START

    start = start or START
    end = start + dt.timedelta(days=days)  # first day after the history
    last_week = end - dt.timedelta(days=end.weekday() or 7)  # the last full ISO week
    if last_week + dt.timedelta(days=7) > end:
        last_week -= dt.timedelta(days=7)
    year1_week = start + dt.timedelta(weeks=52)
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


GROUPS = 100


def _with_groups(storage, deployments: list, week: dt.date) -> list:
    """The deployments with ``groups`` configured, and a membership snapshot of ``GROUPS`` groups each
    (5 to 400 members drawn from the benchmark's user keys) for ``week``, taken at its end."""
    import dataclasses
    import hashlib
    import random

    import pyarrow as pa

    from renku_metrics.core.layout import membership_key
    from renku_metrics.core.sources.groups import GroupsSettings
    from renku_metrics.core.value.groups import SNAPSHOT_SCHEMA

    taken = week + dt.timedelta(days=7)
    out = []
    for n, dep in enumerate(deployments):
        rng = random.Random(n)
        rows = []
        for g in range(GROUPS):
            size = 5 + (g * 37) % 396
            for member in rng.sample(range(30_000), size):
                rows.append((f"group {g:03d}", hashlib.md5(f"bench-user-{member}".encode()).hexdigest()))
        table = pa.table(
            {
                "snapshot_date": pa.array([taken] * len(rows), pa.date32()),
                "group": [r[0] for r in rows],
                "group_kind": ["user_list"] * len(rows),
                "user_key": [r[1] for r in rows],
            },
            schema=SNAPSHOT_SCHEMA,
        )
        storage.write_parquet(membership_key(dep.name, week, taken), table)
        out.append(dataclasses.replace(dep, groups=GroupsSettings()))
    return out


# --------------------------------------------------------------------------- one figure, in a child process


def _figure(name: str, root: str, days: int, start: dt.date) -> dict:
    """Run one measured piece of work in this (fresh) process; a run's parts are timed one by one,
    with the process's peak RSS so far after each (the in-process executor runs a job's steps in
    one process, so the run's peak is the last one)."""
    from renku_metrics.core import engagement
    from renku_metrics.core.aggregate import aggregate_period, aggregate_periods
    from renku_metrics.core.catalog import load_catalog
    from renku_metrics.core.periods import period_starts_between
    from renku_metrics.core.storage import LocalStorage
    from renku_metrics.core.value.groups import group_metrics
    from renku_metrics_tests.bench_data import bench_deployments

    storage = LocalStorage(root)
    deployments = bench_deployments(DEPLOYMENTS, start)
    catalog = load_catalog()
    d = _dates(days, start)
    week, month = d["week"], d["month"]
    parts: dict[str, dict] = {}
    info = ""

    def part(label: str, work) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = usage.ru_utime + usage.ru_stime
        t0 = time.perf_counter()
        work()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        parts[label] = {
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu0,
            "peak_rss_mib": usage.ru_maxrss / 1024,
        }

    if name == "state_build":
        from renku_metrics.core.activity import DeploymentActivity

        seen = []
        part(
            "state",
            lambda: seen.extend(DeploymentActivity.load(storage, dep).first_seen().num_rows for dep in deployments),
        )
        info = f"{sum(seen):,} first-seen rows"
    elif name == "weekly_run":
        # What the weekly schedule's run does, in its order: the aggregate (which stores the week's
        # user sets), then lifecycle and retention (the new cohort and the 8 it refreshes).
        now = _now(week + dt.timedelta(days=7))
        cohorts = [week - dt.timedelta(weeks=k) for k in range(engagement.RETENTION_WEEKS, -1, -1)]
        part("aggregate", lambda: aggregate_period(storage, deployments, catalog, "week", week, now))
        part("lifecycle", lambda: engagement.lifecycle(storage, deployments, "week", week, now))
        part("retention", lambda: engagement.retention(storage, deployments, cohorts, now))
        grouped = _with_groups(storage, deployments, week)
        rows = []
        part("groups", lambda: rows.append(len(group_metrics(storage, grouped, catalog, "week", [week]))))
        info = f"{rows[0]:,} group-metric rows"
        # activation: the new cohort and the 4 it refreshes (their 28-day windows are still open)
        opened = [week - dt.timedelta(weeks=k) for k in range(max(engagement.ACTIVATION_DAYS) // 7, -1, -1)]
        part("activation", lambda: engagement.activation(storage, deployments, opened, now))
    elif name == "monthly_run":
        nxt = (month + dt.timedelta(days=32)).replace(day=1)
        now = _now(nxt)
        part("aggregate", lambda: aggregate_period(storage, deployments, catalog, "month", month, now))
        part("lifecycle", lambda: engagement.lifecycle(storage, deployments, "month", month, now))
        part("stickiness", lambda: engagement.stickiness(storage, deployments, month, now))
        grouped = _with_groups(storage, deployments, month - dt.timedelta(days=month.weekday()))
        part("groups", lambda: group_metrics(storage, grouped, catalog, "month", [month]))
    elif name == "recompute_weeks":
        starts = period_starts_between("week", start, d["end"])
        out = []
        part(
            "recompute",
            lambda: out.append(aggregate_periods(storage, deployments, catalog, "week", starts, _now(d["end"]))),
        )
        info = f"{len(out[0])} weeks"
    elif name == "bare_duckdb":
        import duckdb

        from renku_metrics.core.layout import raw_events_key
        from renku_metrics.core.periods import days_between

        paths = [
            storage.uri(raw_events_key(dep.name, day)) for dep in deployments for day in days_between(start, d["end"])
        ]
        rows = []

        def bare() -> None:
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET enable_progress_bar = false")
            rows.extend(
                con.execute(
                    """SELECT deployment, CAST(date_trunc('week', occurred_at) AS DATE) AS week, action,
                              count(DISTINCT user_id) AS users
                       FROM read_parquet($paths)
                       GROUP BY GROUPING SETS ((deployment, week, action), (deployment, week))""",
                    {"paths": paths},
                ).fetchall()
            )

        part("bare", bare)
        info = f"{len(rows)} rows"
    else:
        raise ValueError(f"unknown figure {name!r}")
    return {"parts": parts, "info": info}


def measure(name: str, root: Path, days: int, start: dt.date | None = None) -> dict:
    from renku_metrics_tests.bench_data import START

    """One figure in a child process: its parts' times and the child's own peak RSS."""
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
            "--start",
            (start or START).isoformat(),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line(label: str, fig: dict, info: str = "") -> str:
    extra = f"  ({info})" if info else ""
    return (
        f"{label:<62} {fig['seconds']:8.2f} s (CPU {fig['cpu_seconds']:7.2f} s)  "
        f"peak RSS {fig['peak_rss_mib']:6.0f} MiB{extra}"
    )


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


def _last_days(root: Path, dest: Path, start: dt.date, end: dt.date) -> None:
    """``dest``: a store holding the days ``start`` .. ``end`` (exclusive) of ``root``'s raw history (hard links)."""
    from renku_metrics.core.layout import raw_events_key
    from renku_metrics.core.periods import days_between

    for dep in range(DEPLOYMENTS):
        for day in days_between(start, end):
            day_dir = Path(raw_events_key(f"bench{dep}", day)).parent
            (dest / day_dir).mkdir(parents=True)
            for f in (root / day_dir).iterdir():
                os.link(f, dest / day_dir / f.name)


def _as_last_week_left_it(root: Path, days: int, start: dt.date) -> dict:
    """Delete ``state/`` and rebuild it from raw without the newest week, as last week's runs left
    it: the weekly run measured next finds its week new. Returns the measured build."""
    import shutil

    d = _dates(days, start)
    for derived in ("state", "metrics"):
        shutil.rmtree(root / derived, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="renku-metrics-holdout-", dir=root.parent) as holdout:
        _hold_out(root, Path(holdout), d["week"])
        try:
            return measure("state_build", root, days, start)
        finally:
            _hold_out(root, Path(holdout), d["week"], back=True)
            # The week arrives as the extract writes it: with its notes in the raw-change log.
            from renku_metrics.core.activity import record_raw_change
            from renku_metrics.core.storage import LocalStorage

            for dep in range(DEPLOYMENTS):
                record_raw_change(
                    LocalStorage(root), f"bench{dep}", [d["week"] + dt.timedelta(days=i) for i in range(7)]
                )


def scale_figures(root: Path, days: int) -> None:
    """The figures of issue 'scale': per-run costs, history growth, full-history recompute."""
    from renku_metrics_tests.bench_data import START

    # The same last weeks measured twice: after the whole (3-year) history, and in a store that
    # holds only their last year (hard links to the same files): the same events and users, so
    # the difference is the length of the history behind them.
    year = 364  # 52 weeks
    end = START + dt.timedelta(days=days)
    year_start = end - dt.timedelta(days=year)
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="renku-metrics-1y-", dir=root.parent) as one_year:
        one_year_root = Path(one_year) / "data"
        _last_days(root, one_year_root, year_start, end)
        for label, store, span, first in (("3y", root, days, START), ("1y", one_year_root, year, year_start)):
            built = _as_last_week_left_it(store, span, first)
            print(
                _line(
                    f"[{label}] derived state from raw, all but the last week", built["parts"]["state"], built["info"]
                )
            )
            for run in ("weekly_run", "monthly_run"):
                fig = measure(run, store, span, first)
                runs[f"{run}_{label}"] = fig["parts"]
                what = "week" if run == "weekly_run" else "month"
                for part_name, part_fig in fig["parts"].items():
                    print(_line(f"[{label}] {what}ly run: {part_name} of one {what}", part_fig), flush=True)
    recompute = measure("recompute_weeks", root, days)
    bare = measure("bare_duckdb", root, days)
    print(
        _line(
            "full-history recompute, every week (aggregate_periods)", recompute["parts"]["recompute"], recompute["info"]
        )
    )
    print(_line("bare DuckDB query: distinct users per deployment, week, action", bare["parts"]["bare"], bare["info"]))

    def sec(run: str, part_name: str) -> float:
        return runs[run][part_name]["seconds"]

    w3, w1, m3, m1 = "weekly_run_3y", "weekly_run_1y", "monthly_run_3y", "monthly_run_1y"
    for part_name in ("aggregate", "lifecycle", "retention", "groups", "activation"):
        print(
            f"weekly {part_name}, 3 years / 1 year of history: {sec(w3, part_name) / sec(w1, part_name):.2f} (~1 = flat)"
        )
    for part_name in ("aggregate", "lifecycle", "stickiness", "groups"):
        print(
            f"monthly {part_name}, 3 years / 1 year of history: {sec(m3, part_name) / sec(m1, part_name):.2f} (~1 = flat)"
        )
    print(
        f"3 years: weekly lifecycle / weekly aggregate: {sec(w3, 'lifecycle') / sec(w3, 'aggregate'):.2f}, "
        f"retention / weekly aggregate: {sec(w3, 'retention') / sec(w3, 'aggregate'):.2f} (target <= 2), "
        f"groups ({GROUPS} per deployment) / weekly aggregate: {sec(w3, 'groups') / sec(w3, 'aggregate'):.2f}"
        f", activation / weekly aggregate: {sec(w3, 'activation') / sec(w3, 'aggregate'):.2f} (target <= 2)"
    )
    peak = max(p["peak_rss_mib"] for fig in runs.values() for p in fig.values())
    print(f"largest peak RSS of a weekly or monthly run: {peak:.0f} MiB (bound: 2048)")
    r, b = recompute["parts"]["recompute"], bare["parts"]["bare"]
    print(
        f"full-history recompute / bare DuckDB query: {r['seconds'] / b['seconds']:.2f} "
        f"(CPU time {r['cpu_seconds'] / b['cpu_seconds']:.2f}; target <= 1.2), "
        f"peak RSS {r['peak_rss_mib']:.0f} vs {b['peak_rss_mib']:.0f} MiB"
    )
    print("(wall times depend on what else the machine runs; CPU times less so)")


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
    parser.add_argument("--start", type=dt.date.fromisoformat, default=None)
    args = parser.parse_args()
    if args.figure:
        from renku_metrics_tests.bench_data import START

        print(json.dumps(_figure(args.figure, args.root, args.days, args.start or START)))
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
        print("the 3-year backfill through the UI: make benchmark-backfill BENCH_DATA=<a kept history>")


if __name__ == "__main__":
    main()
