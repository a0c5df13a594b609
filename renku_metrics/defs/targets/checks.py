"""A warning check per target on ``target_status``: fails when the target is off track
or missed, and shows the target's trajectory (value, expected, projected, status per
period) in its metadata."""

from __future__ import annotations

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, MetadataValue

from renku_metrics.core.value.targets import Target

FAILING = ("off_track", "missed")
# Periods of the trajectory shown in a check's metadata (the latest ones).
TRAJECTORY_PERIODS = 26


def target_check_specs(key: AssetKey, targets: tuple[Target, ...]) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            t.check_name,
            asset=key,
            description=(
                f"Target {t.id} ({t.owner}): {t.describe()}. {t.why} Warning when off track or missed; "
                "the metadata shows the trajectory."
            ),
        )
        for t in targets
    ]


def _num(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.4g}"


def trajectory_markdown(rows: pd.DataFrame) -> str:
    """The target's periods as a markdown table (latest last)."""
    lines = ["| period | value | expected | projected | goal | status |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows.sort_values("period_start").tail(TRAJECTORY_PERIODS).itertuples():
        lines.append(
            f"| {r.period_start} | {_num(r.value)} | {_num(r.expected)} | {_num(r.projected)} | {_num(r.goal)} "
            f"| {r.status} |"
        )
    return "\n".join(lines)


def target_check_result(key: AssetKey, target: Target, rows: pd.DataFrame) -> AssetCheckResult:
    """The check of ``target`` from its rows of one evaluation (``rows``: that target's periods)."""
    latest = rows.sort_values("period_start").iloc[-1]
    status = str(latest["status"])
    metadata = {
        "status": status,
        "reason": str(latest["reason"]),
        "target": target.describe(),
        "owner": target.owner,
        "period_start": str(latest["period_start"]),
        "deadline": target.by.isoformat(),
        "goal": float(target.value),
        "trajectory": MetadataValue.md(trajectory_markdown(rows)),
    }
    for name in ("value", "expected", "projected", "baseline"):
        value = latest[name]
        metadata[name] = MetadataValue.null() if pd.isna(value) else float(value)
    return AssetCheckResult(
        asset_key=key,
        check_name=target.check_name,
        passed=status not in FAILING,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
    )
