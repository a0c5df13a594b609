"""Checks of the weekly digest: was it delivered to every channel that should have it."""

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey

from renku_metrics.core.value.digest_delivery import Outcome
from renku_metrics.defs.metadata import table

DELIVERED_CHECK = "delivered"


def digest_check_specs(key: AssetKey) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            DELIVERED_CHECK,
            asset=key,
            description=(
                "Every configured channel has this week's digest, or is rightly not sent it (a backfilled week, the "
                "week in progress). Fails (error) naming each channel that refused it after its retries, or whose "
                "earlier send was interrupted before its result was recorded; the run then fails too."
            ),
        )
    ]


def delivered_result(key: AssetKey, outcomes: list[Outcome]) -> AssetCheckResult:
    failed = [o for o in outcomes if o.failed]
    return AssetCheckResult(
        asset_key=key,
        check_name=DELIVERED_CHECK,
        passed=not failed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "channels": len(outcomes),
            "failed_channels": ", ".join(o.channel for o in failed) or "none",
            "outcomes": table([{"channel": o.channel, "outcome": o.outcome, "detail": o.detail} for o in outcomes]),
        },
    )
