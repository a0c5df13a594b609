"""Checks of the weekly and monthly aggregates: blocking consistency checks,
warning checks of the catalog's targets, and freshness."""

import datetime as dt

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetKey, MetadataValue, build_time_partition_freshness_checks

from renku_metrics.core.catalog import Catalog, Metric, Target
from renku_metrics.core.config import MetricsConfig
from renku_metrics.defs.checks import missing_deployments

AGGREGATE_CHECKS = {
    "users_within_active_users": ("Every metric's users are at most the period's active users.", True),
    "pct_within_0_100": ("pct lies within 0..100, and is null only when nobody was active.", True),
    "one_row_per_key": ("Exactly one row per deployment, period and metric.", True),
    "deployments_present": (
        "Every configured deployment measured in the period has a row; deployments with missing "
        "days are explicitly marked incomplete.",
        True,
    ),
}


def check_aggregate(frame: pd.DataFrame, config: MetricsConfig, key_columns: list[str]) -> dict[str, tuple[bool, dict]]:
    """Evaluate the blocking aggregate checks on one or more periods' rows (plain pandas)."""
    out: dict[str, tuple[bool, dict]] = {}
    if "users" in frame:
        over = frame[frame["users"] > frame["active_users"]]
        out["users_within_active_users"] = (over.empty, {"violating_rows": len(over)})
        bad_pct = frame[
            (frame["pct"].notna() & ((frame["pct"] < 0) | (frame["pct"] > 100)))
            | (frame["pct"].isna() & (frame["active_users"] > 0))
            | (frame["pct"].notna() & (frame["active_users"] == 0))
        ]
        out["pct_within_0_100"] = (bad_pct.empty, {"violating_rows": len(bad_pct)})
    else:
        negative = frame[frame["active_users"] < 0]
        out["users_within_active_users"] = (negative.empty, {"violating_rows": len(negative)})
        out["pct_within_0_100"] = (True, {"violating_rows": 0, "note": "denominator table has no pct"})
    dupes = frame[frame.duplicated(subset=key_columns, keep=False)]
    out["one_row_per_key"] = (dupes.empty, {"duplicate_rows": len(dupes)})
    missing = missing_deployments(frame, config)
    incomplete = frame.loc[~frame["complete"], ["period_start", "deployment", "coverage_note"]].drop_duplicates()
    out["deployments_present"] = (
        not missing,
        {
            "missing": MetadataValue.md("\n".join(f"- {m}" for m in missing) or "none"),
            "incomplete_rows": MetadataValue.md(
                "\n".join(f"- {r.period_start} {r.deployment}: {r.coverage_note}" for r in incomplete.itertuples())
                or "none"
            ),
        },
    )
    return out


def target_checks(catalog: Catalog, period: str) -> list[tuple[str, Metric, Target]]:
    """(check name, metric, target) of every catalog target on this period."""
    out = []
    for metric in catalog.computed():
        for target in metric.targets:
            if target.period == period:
                out.append(
                    (f"target_{metric.id}_{target.deployment}_{target.check_name[len('target_') :]}", metric, target)
                )
    return out


def evaluate_target(
    check_name: str, frame: pd.DataFrame, metric: Metric, target: Target, today: dt.date
) -> AssetCheckResult:
    """Warning check: is the target met in the latest period of ``frame``?"""
    rows = frame[(frame["metric"] == metric.id) & (frame["deployment"] == target.deployment)]
    meta = {"target": target.describe(), "deadline": target.by.isoformat()}
    if rows.empty:
        return AssetCheckResult(
            check_name=check_name,
            passed=False,
            severity=AssetCheckSeverity.WARN,
            metadata={**meta, "status": f"no row for deployment {target.deployment!r}"},
        )
    row = rows.sort_values("period_start").iloc[-1]
    value = None if pd.isna(row[target.measure]) else float(row[target.measure])
    met = target.met_by(value)
    status = "met" if met else "not met"
    if not row["complete"]:
        status += " (period incomplete: provisional)"
    if not met and today > target.by:
        status += "; deadline passed"
    meta.update(
        {
            "value": value if value is not None else MetadataValue.null(),
            "threshold": target.value,
            "period_start": str(row["period_start"]),
            "status": status,
        }
    )
    return AssetCheckResult(check_name=check_name, passed=bool(met), severity=AssetCheckSeverity.WARN, metadata=meta)


def build_weekly_freshness_checks(keys: list[AssetKey]):
    """The last complete week must be aggregated by Tuesday 00:00 UTC."""
    return build_time_partition_freshness_checks(assets=keys, deadline_cron="0 0 * * 2", timezone="UTC")
