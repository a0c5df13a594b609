"""Checks of the weekly and monthly aggregates: blocking consistency checks (one set
for the core actions, one for the denominator), coverage checks (warning: days missing
or read incompletely; error: a deployment with no extracted day) and freshness.
Targets are checks of their own asset, ``target_status`` (renku_metrics.defs.targets)."""

import datetime as dt

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey, MetadataValue

from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.coverage import DeploymentCoverage
from renku_metrics.core.events import ALL_DEPLOYMENTS
from renku_metrics.defs.checks import duplicate_rows, missing_deployments
from renku_metrics.defs.freshness import MONTHLY_DEADLINE, WEEKLY_DEADLINE, FreshnessRule

_ONE_ROW = "one_row_per_key"
_PRESENT = (
    "Every configured deployment measured in the period has a row, plus `all`; deployments with missing "
    "days are explicitly marked incomplete."
)
_COVERAGE = (
    "Warning: every deployment's days of the period are extracted and every source read its whole window. "
    "Fails (warning) on a period that is not over yet, has days not extracted or sources read incompletely, "
    "naming the missing days and the incomplete sources: such rows are provisional."
)
_DAYS = (
    "A deployment with no extracted day at all in a period whose days have begun fails this check (error "
    "severity): its zeros mean 'not extracted', not 'nobody was active'. Extract the days, then rerun."
)

# name -> (description, blocking); the non-blocking ones carry their own severity.
CORE_CHECKS = {
    "users_within_active_users": ("Every metric's users are at most the period's active users.", True),
    "pct_within_0_100": ("pct lies within 0..100, and is null only when nobody was active.", True),
    _ONE_ROW: ("Exactly one row per deployment, period and metric.", True),
    "deployments_present": (_PRESENT, True),
    "days_extracted": (_DAYS, False),
    "coverage_complete": (_COVERAGE, False),
}
ACTIVE_CHECKS = {
    "active_users_consistent": (
        "Active and excluded users are not negative, and the `all` rollup is at least every deployment's "
        "active users and at most their sum.",
        True,
    ),
    _ONE_ROW: ("Exactly one row per deployment and period.", True),
    "deployments_present": (_PRESENT, True),
    "days_extracted": (_DAYS, False),
    "coverage_complete": (_COVERAGE, False),
}


def _present(frame: pd.DataFrame, config: MetricsConfig) -> tuple[bool, dict]:
    missing = missing_deployments(frame, config)
    return not missing, {"missing": MetadataValue.md("\n".join(f"- {m}" for m in missing) or "none")}


def check_core(frame: pd.DataFrame, config: MetricsConfig) -> dict[str, tuple[bool, dict]]:
    """The blocking checks of core-action rows (one or more periods; plain pandas)."""
    over = frame[frame["users"] > frame["active_users"]]
    bad_pct = frame[
        (frame["pct"].notna() & ((frame["pct"] < 0) | (frame["pct"] > 100)))
        | (frame["pct"].isna() & (frame["active_users"] > 0))
        | (frame["pct"].notna() & (frame["active_users"] == 0))
    ]
    dupes = duplicate_rows(frame, ["deployment", "period_start", "metric"])
    return {
        "users_within_active_users": (over.empty, {"violating_rows": len(over)}),
        "pct_within_0_100": (bad_pct.empty, {"violating_rows": len(bad_pct)}),
        _ONE_ROW: (dupes == 0, {"duplicate_rows": dupes}),
        "deployments_present": _present(frame, config),
    }


def check_active(frame: pd.DataFrame, config: MetricsConfig) -> dict[str, tuple[bool, dict]]:
    """The blocking checks of the denominator rows (one or more periods; plain pandas)."""
    bad = []
    negative = frame[(frame["active_users"] < 0) | (frame["excluded_users"] < 0)]
    bad += [f"{r.period_start} {r.deployment}: negative count" for r in negative.itertuples()]
    for period_start, rows in frame.groupby("period_start"):
        parts = rows[rows["deployment"] != ALL_DEPLOYMENTS]["active_users"]
        rollup = rows[rows["deployment"] == ALL_DEPLOYMENTS]["active_users"]
        for value in rollup:
            if len(parts) and not (parts.max() <= value <= parts.sum()):
                bad.append(f"{period_start} all: {value} outside {parts.max()}..{parts.sum()}")
    dupes = duplicate_rows(frame, ["deployment", "period_start"])
    return {
        "active_users_consistent": (
            not bad,
            {"violations": len(bad), "details": MetadataValue.md("\n".join(f"- {b}" for b in bad[:50]) or "none")},
        ),
        _ONE_ROW: (dupes == 0, {"duplicate_rows": dupes}),
        "deployments_present": _present(frame, config),
    }


def _days(days: list[dt.date]) -> str:
    """Days as compact ranges: 2026-06-01..2026-06-03, 2026-06-05."""
    runs: list[list[dt.date]] = []
    for day in sorted(days):
        if runs and day - runs[-1][-1] == dt.timedelta(days=1):
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(r[0].isoformat() if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs)


def check_coverage(
    periods: list[tuple[dt.date, bool, dict[str, DeploymentCoverage]]],
) -> dict[str, AssetCheckResult]:
    """``days_extracted`` (error) and ``coverage_complete`` (warning) of the periods of a run.

    ``periods``: (period start, period ended, coverage per measured deployment).
    """
    lines, empty = [], []
    missing_total = incomplete_total = 0
    for start, ended, coverage in periods:
        for name, cov in coverage.items():
            if cov.is_complete(ended):
                continue
            parts = []
            if cov.missing_days:
                parts.append(f"days not extracted: {_days(cov.missing_days)}")
            if cov.incomplete_sources:
                parts.append("incomplete sources: " + "; ".join(cov.incomplete_sources))
            if not ended:
                parts.append("period not over yet")
            if cov.history_starts_inside:
                parts.append("deployment history starts inside this period")
            lines.append(f"- {start} **{name}**: " + "; ".join(parts))
            missing_total += len(cov.missing_days)
            incomplete_total += len(cov.incomplete_sources)
            if cov.days_extracted == 0 and cov.missing_days:
                empty.append(f"- {start} **{name}**: none of its days extracted ({_days(cov.missing_days)})")
    return {
        "coverage_complete": AssetCheckResult(
            check_name="coverage_complete",
            passed=not lines,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "missing_days": missing_total,
                "incomplete_sources": incomplete_total,
                "details": MetadataValue.md("\n".join(lines[:100]) or "every day extracted in full"),
            },
        ),
        "days_extracted": AssetCheckResult(
            check_name="days_extracted",
            passed=not empty,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "deployments_without_days": len(empty),
                "details": MetadataValue.md("\n".join(empty[:100]) or "every deployment has extracted days"),
            },
        ),
    }


def period_freshness_rules(period: str, first: dt.date, keys: list[AssetKey]) -> dict[AssetKey, FreshnessRule]:
    """The week just ended must be aggregated by Tuesday 00:00 UTC, the month just
    ended by the 2nd, 00:00 UTC."""
    deadline = WEEKLY_DEADLINE if period == "week" else MONTHLY_DEADLINE
    return {key: FreshnessRule(period, first, deadline) for key in keys}
