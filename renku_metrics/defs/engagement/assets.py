"""Engagement assets: lifecycle, stickiness and new-user retention (group ``engagement``).

* ``lifecycle_weekly`` / ``lifecycle_monthly``: active users split into new,
  returning and resurrected, plus dormant, per deployment and period;
* ``stickiness_monthly``: mean weekly (and daily) active users over the month's
  active users;
* ``retention_weekly``: partitioned by cohort week W, the share of the users
  first seen in W who were active in each of W+1 .. W+8;
* ``activation_weekly``: partitioned by cohort week W, the share of the users
  first seen in W who did a core action within 7 and within 28 days.

Definitions are in ``renku_metrics.core.engagement`` and docs/engagement.md. Each
period is one Parquet object under ``metrics/<asset>/period=YYYY-MM-DD/``,
replaced whole on a rerun. Like the other aggregates, a backfill runs a quarter
of periods per run (13 weeks or 3 months), and each partition's materialization
carries its own numbers (``own_metadata``), also in a run over a range.

Retention rows only become final when W+8 has ended, so a run for cohort weeks
[a, b] also recomputes the 8 cohorts before ``a`` (whose later weeks have just
been filled in) and records a materialization for each of them, with that
cohort's own table and numbers: the weekly schedule, which runs the week just
ended, thereby keeps every open cohort current.
"""

import datetime as dt
from collections.abc import Callable

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from renku_metrics.core import engagement
from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.layout import metrics_key
from renku_metrics.defs.clock import run_now
from renku_metrics.defs.engagement.checks import (
    ACTIVATION_CHECKS,
    LIFECYCLE_CHECKS,
    RETENTION_CHECKS,
    STICKINESS_CHECKS,
    check_activation,
    check_lifecycle,
    check_retention,
    check_stickiness,
)
from renku_metrics.defs.keys import OWNERS, active_users_name, raw_events_deps
from renku_metrics.defs.metadata import markdown_table, own_metadata, period_backfill_policy
from renku_metrics.defs.partitions import period_partitions, period_starts
from renku_metrics.defs.resources import MetricsStorageResource

GROUP = "engagement"
LIFECYCLE = {"week": "lifecycle_weekly", "month": "lifecycle_monthly"}
STICKINESS = "stickiness_monthly"
RETENTION = "retention_weekly"
ACTIVATION = "activation_weekly"

_UNITS = {
    "week": "ISO week (Monday 00:00 UTC to Monday 00:00 UTC, key = the Monday)",
    "month": "calendar month in UTC (key = the 1st)",
}
_COMMON_BLIND = (
    "Cannot see: users whose only activity is invisible to every source (local CLI work never pushed, local "
    "sessions), logins lost to Keycloak's event expiration, activity before the deployment's start_date or on "
    "days not extracted. Active = any event of any action, after each deployment's excluded_users. The `all` "
    "rollup merges a person across deployments by their Keycloak-derived id (GitLab-only ids stay apart)."
)


def _complete_cell(row) -> str:
    return "yes" if row.complete else f"no: {row.coverage_note}"


def markdown_lifecycle(frame: pd.DataFrame) -> str:
    lines = [
        "| period | deployment | active | new | returning | resurrected | dormant | quick ratio | history complete "
        "| complete |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in frame.itertuples():
        quick = "-" if pd.isna(r.quick_ratio) else f"{r.quick_ratio:.2f}"
        lines.append(
            f"| {r.period_start} | {r.deployment} | {r.active_users} | {r.new_users} | {r.returning_users} | {r.resurrected_users} "
            f"| {r.dormant_users} | {quick} | {'yes' if r.history_complete else 'no'} | {_complete_cell(r)} |"
        )
    return "\n".join(lines)


def markdown_stickiness(frame: pd.DataFrame) -> str:
    def ratio(v) -> str:
        return "-" if pd.isna(v) else f"{100 * v:.1f}%"

    lines = [
        "| period | deployment | MAU | mean WAU (weeks) | WAU/MAU | mean DAU (days) | DAU/MAU | complete |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in frame.itertuples():
        wau = "-" if pd.isna(r.mean_weekly_active_users) else f"{r.mean_weekly_active_users:.1f}"
        dau = "-" if pd.isna(r.mean_daily_active_users) else f"{r.mean_daily_active_users:.1f}"
        lines.append(
            f"| {r.period_start} | {r.deployment} | {r.monthly_active_users} | {wau} ({r.weeks}) | {ratio(r.wau_mau)} "
            f"| {dau} ({r.days}) | {ratio(r.dau_mau)} | {_complete_cell(r)} |"
        )
    return "\n".join(lines)


def markdown_retention(frame: pd.DataFrame, weeks: int = engagement.RETENTION_WEEKS) -> str:
    header = " | ".join(f"W+{k}" for k in range(1, weeks + 1))
    lines = [
        f"| cohort week | deployment | cohort | {header} | complete |",
        "|" + " --- |" * (weeks + 4),
    ]
    for r in frame.itertuples():
        cells = []
        for k in range(1, weeks + 1):
            value = getattr(r, engagement.retention_column(k))
            cells.append("-" if pd.isna(value) else f"{value:.0f}%")
        lines.append(
            f"| {r.period_start} | {r.deployment} | {r.cohort_users} | {' | '.join(cells)} | {_complete_cell(r)} |"
        )
    return "\n".join(lines)


def headline_lifecycle(last: pd.DataFrame) -> dict:
    meta = {}
    for r in last.itertuples():
        for col in ("active_users", "new_users", "returning_users", "resurrected_users", "dormant_users"):
            meta[f"{r.deployment}/{col}"] = int(getattr(r, col))
        if not pd.isna(r.quick_ratio):
            meta[f"{r.deployment}/quick_ratio"] = float(r.quick_ratio)
    return meta


def headline_stickiness(last: pd.DataFrame) -> dict:
    meta = {}
    for r in last.itertuples():
        meta[f"{r.deployment}/monthly_active_users"] = int(r.monthly_active_users)
        for col in ("wau_mau", "dau_mau"):
            value = getattr(r, col)
            if not pd.isna(value):
                meta[f"{r.deployment}/{col}"] = float(value)
    return meta


def headline_retention(frame: pd.DataFrame, weeks: int = engagement.RETENTION_WEEKS) -> dict:
    """Cohort size of the newest cohort; week-1 and week-N retention of the newest cohorts that have them."""
    meta = {}
    for name, rows in frame.sort_values("period_start").groupby("deployment", sort=False):
        meta[f"{name}/cohort_users"] = int(rows["cohort_users"].iloc[-1])
        for k in (1, weeks):
            col = engagement.retention_column(k)
            known = rows[rows[col].notna()]
            if not known.empty:
                meta[f"{name}/{col}"] = float(known[col].iloc[-1])
                meta[f"{name}/{col}_cohort"] = str(known["period_start"].iloc[-1])
    return meta


def markdown_activation(frame: pd.DataFrame) -> str:
    def share(value, users) -> str:
        return "-" if pd.isna(value) else f"{value:.0f}% ({users})"

    lines = [
        "| cohort week | deployment | cohort | core action within 7 days | within 28 days | complete |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in frame.itertuples():
        lines.append(
            f"| {r.period_start} | {r.deployment} | {r.cohort_users} | {share(r.activation_7d, r.activated_7d)} "
            f"| {share(r.activation_28d, r.activated_28d)} | {_complete_cell(r)} |"
        )
    return "\n".join(lines)


def headline_activation(frame: pd.DataFrame) -> dict:
    """Cohort size of the newest cohort; 7- and 28-day activation of the newest cohorts that have them."""
    meta = {}
    for name, rows in frame.sort_values("period_start").groupby("deployment", sort=False):
        meta[f"{name}/cohort_users"] = int(rows["cohort_users"].iloc[-1])
        for n in engagement.ACTIVATION_DAYS:
            col = engagement.activation_column(n)
            known = rows[rows[col].notna()]
            if not known.empty:
                meta[f"{name}/{col}"] = float(known[col].iloc[-1])
                meta[f"{name}/{col}_cohort"] = str(known["period_start"].iloc[-1])
    return meta


# --------------------------------------------------------------------------- assets


def _build(
    config: MetricsConfig,
    name: str,
    period: str,
    description: str,
    checks: dict[str, tuple[str, bool]],
    compute: Callable[[object, list[dt.date], dt.datetime], pd.DataFrame],
    evaluate: Callable[[pd.DataFrame, MetricsConfig], dict[str, tuple[bool, dict]]],
    markdown: Callable[[pd.DataFrame], str],
    headline: Callable[[pd.DataFrame, pd.DataFrame], dict],
    refresh_before: int = 0,
) -> AssetsDefinition:
    partitions = period_partitions(period, config.earliest_start)
    first_start = dt.date.fromisoformat(partitions.get_first_partition_key())
    key = AssetKey(name)
    # After the period's aggregate in the same run: the weekly aggregate stores each week's user sets
    # (state/user_weeks) as a by-product of its scan, which these assets then read instead of raw events.
    deps = [*raw_events_deps(config.deployments), AssetDep(active_users_name(period))]

    @asset(
        key=key,
        partitions_def=partitions,
        deps=deps,
        backfill_policy=period_backfill_policy(period),
        group_name=GROUP,
        owners=OWNERS,
        kinds={"duckdb", "parquet"},
        description=description,
        check_specs=[AssetCheckSpec(n, asset=key, description=t, blocking=b) for n, (t, b) in checks.items()],
    )
    def _asset(context: AssetExecutionContext, metrics_storage: MetricsStorageResource) -> MaterializeResult:
        storage = metrics_storage.get_storage()
        requested = period_starts(context, period)
        extra = []
        if refresh_before:
            day = requested[0] - dt.timedelta(weeks=refresh_before)
            extra = [d for d in (day + dt.timedelta(weeks=i) for i in range(refresh_before)) if d >= first_start]
        now = run_now(context)  # the wall clock, or the run tag renku_metrics/now
        frame = compute(storage, [*extra, *requested], now)
        for start, rows in frame.groupby("period_start", sort=True):
            storage.write_frame(metrics_key(name, start), rows.reset_index(drop=True))

        def own(start: dt.date) -> dict:
            rows = frame[frame["period_start"] == start]
            return {
                "period": start.isoformat(),
                "dagster/row_count": len(rows),
                "dagster/uri": MetadataValue.path(storage.uri(metrics_key(name, start))),
                "table": markdown_table(markdown(rows)),
                "complete": bool(rows["complete"].all()),
                **headline(rows, rows),
            }

        for start in extra:
            context.log_event(
                AssetMaterialization(
                    asset_key=key,
                    partition=start.isoformat(),
                    description=f"Refreshed by the run for {requested[0]}..{requested[-1]}: its later weeks have ended since.",
                    metadata=own(start),
                )
            )
        own_metadata(context, key, {start.isoformat(): own(start) for start in requested})
        results = [
            AssetCheckResult(check_name=n, passed=bool(passed), metadata=m)
            for n, (passed, m) in evaluate(frame, config).items()
        ]
        return MaterializeResult(check_results=results)

    return _asset


def build_engagement_assets(config: MetricsConfig) -> dict[str, list[AssetsDefinition]]:
    """The engagement assets, keyed by the period whose job runs them ("week", "month")."""
    deployments = config.deployments
    warmup = engagement.HISTORY_WARMUP_WEEKS
    weeks = engagement.RETENTION_WEEKS
    history_read = (
        "Depends on more than the period's own days (first seen needs the whole history): reads the derived "
        "state under state/ (each user's first seen day and the weekly user sets, kept current from raw events "
        "at every run, so a run's cost does not grow with history; the weekly aggregate of the same run stores "
        "its week's user sets as it scans them, so a weekly run reads no raw events here); the dependency on raw "
        "events is declared only for the period's days, so after backfilling older days, rematerialize these "
        "partitions."
    )
    history_flag = (
        f"`history_complete` is false unless at least {warmup} weeks of gap-free history (every day extracted, "
        "every source complete) precede the period: otherwise users active before extraction began or during a "
        "gap look new. `complete` requires it as well."
    )
    lifecycle_assets = {}
    for period in ("week", "month"):
        name = LIFECYCLE[period]
        lifecycle_assets[period] = _build(
            config,
            name,
            period,
            description=(
                f"Lifecycle of active users per deployment and {_UNITS[period]}, plus the all rollup. "
                "new = first event ever in the extracted history falls in the period; returning = also active in "
                "the previous period; resurrected = not active in the previous period but at some earlier time; "
                "dormant = active in the previous period, not in this one (a positive count). "
                "new + returning + resurrected = active_users. quick_ratio = (new + resurrected) / dormant. "
                "Columns: deployment, period, period_start, period_end, previous_period_start, active_users, "
                "new_users, returning_users, resurrected_users, dormant_users, previous_active_users, quick_ratio, "
                "history_weeks, history_complete, complete, coverage_note, computed_at. "
                f"{history_read} {history_flag} `complete` also needs this and the previous period ended and "
                f"fully extracted. {_COMMON_BLIND}"
            ),
            checks=LIFECYCLE_CHECKS,
            compute=lambda storage, starts, now, period=period: engagement.lifecycle(
                storage, deployments, period, starts, now
            ),
            evaluate=check_lifecycle,
            markdown=markdown_lifecycle,
            headline=lambda frame, last: headline_lifecycle(last),
        )
    stickiness_asset = _build(
        config,
        STICKINESS,
        "month",
        description=(
            f"Stickiness per deployment and {_UNITS['month']}, plus the all rollup. "
            "wau_mau = mean of the weekly active users of the ISO weeks lying entirely inside the month (3 or 4 "
            "weeks; weeks straddling a month boundary are left out so that each week's users are a subset of the "
            "month's and the value is final when the month ends) / the month's active users. "
            "dau_mau = mean daily active users over all days of the month (zero-activity days included) / the "
            "month's active users. Columns: deployment, period, period_start, period_end, monthly_active_users, "
            "weeks, mean_weekly_active_users, wau_mau, days, mean_daily_active_users, dau_mau, complete, "
            "coverage_note, computed_at. Reads the weekly user sets of the weeks overlapping the month. An unfinished month averages only "
            f"the weeks and days ended so far and is complete=false. {_COMMON_BLIND}"
        ),
        checks=STICKINESS_CHECKS,
        compute=lambda storage, starts, now: engagement.stickiness(storage, deployments, starts, now),
        evaluate=check_stickiness,
        markdown=markdown_stickiness,
        headline=lambda frame, last: headline_stickiness(last),
    )
    retention_asset = _build(
        config,
        RETENTION,
        "week",
        description=(
            "Retention of new users per deployment, partitioned by cohort week W (ISO week, key = the Monday), "
            "plus the `all` rollup. cohort_users = users whose first event ever in the extracted history falls "
            f"in W; retained_wK = how many of them were active in week W+K and retention_wK = 100 * retained_wK "
            f"/ cohort_users, for K = 1..{weeks}; both are null while W+K has not ended. `complete` is false until "
            f"W+{weeks} has ended with all of W..W+{weeks} extracted in full and history_complete holds. "
            "Columns: deployment, period, period_start, period_end, cohort_users, retained_w1..retained_w8, "
            "retention_w1..retention_w8, weeks_observed, observed_until, history_weeks, history_complete, "
            "complete, coverage_note, computed_at. "
            f"Depends on earlier and later days than W: first seen over the whole history and the {weeks} weeks "
            "after W, read from the derived state under state/ (kept current from raw events at every run); the "
            "dependency on raw events is declared only "
            f"for W's days. A run for weeks [a, b] also recomputes the {weeks} cohorts before a, whose later weeks "
            f"have ended since, and records their materializations. {history_flag} Cohort weeks before a "
            f"deployment's start_date have no row for it; the week containing start_date is history_complete=false. "
            f"{_COMMON_BLIND}"
        ),
        checks=RETENTION_CHECKS,
        compute=lambda storage, starts, now: engagement.retention(storage, deployments, starts, now),
        evaluate=check_retention,
        markdown=markdown_retention,
        headline=lambda frame, last: headline_retention(frame),
        refresh_before=weeks,
    )
    longest = max(engagement.ACTIVATION_DAYS)
    activation_asset = _build(
        config,
        ACTIVATION,
        "week",
        description=(
            "Activation of new users per deployment, partitioned by cohort week W (ISO week, key = the Monday), "
            "plus the `all` rollup. cohort_users = users whose first event ever in the extracted history falls "
            "in W; activated_7d / activated_28d = how many of them did a core action (commit, dataset creation, "
            "workflow run, session start; not a login) on one of the 7 / 28 days starting with the day they were "
            "first seen, activation_7d / activation_28d the same as a percentage of the cohort. Each is null "
            f"until 7 / 28 days after W has ended; `complete` is false until {longest} days after W has ended "
            "(observed_until) with all of those days extracted in full and history_complete holds. In `all`, a "
            "user is new when first seen on any deployment, and a core action on any deployment counts. "
            "Columns: deployment, period, period_start, period_end, cohort_users, activated_7d, activated_28d, "
            "activation_7d, activation_28d, observed_until, history_weeks, history_complete, complete, "
            "coverage_note, computed_at. Reads first seen and the core-action days of the user weeks W..W+4 from "
            "the derived state under state/ (kept current from raw events at every run); the dependency on raw "
            f"events is declared only for W's days. A run for weeks [a, b] also recomputes the 4 cohorts before "
            f"a, whose windows have run on since, and records their materializations. {history_flag} "
            f"{_COMMON_BLIND}"
        ),
        checks=ACTIVATION_CHECKS,
        compute=lambda storage, starts, now: engagement.activation(storage, deployments, starts, now),
        evaluate=check_activation,
        markdown=markdown_activation,
        headline=lambda frame, last: headline_activation(frame),
        refresh_before=longest // 7,
    )
    return {
        "week": [lifecycle_assets["week"], retention_asset, activation_asset],
        "month": [lifecycle_assets["month"], stickiness_asset],
    }
