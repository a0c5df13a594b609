"""Blocking checks of the engagement views (plain pandas over the computed rows)."""

import datetime as dt

import pandas as pd
from dagster import MetadataValue

from renku_metrics.core import engagement
from renku_metrics.core.config import MetricsConfig
from renku_metrics.defs.checks import duplicate_rows, missing_deployments

_ONE_ROW = ("one_row_per_key", "Exactly one row per deployment and period.", True)
_PRESENT = (
    "deployments_present",
    "Every configured deployment whose history has begun by the end of the period has a row, plus `all`; "
    "rows that are not final are marked complete=false with a coverage_note.",
    True,
)
LIFECYCLE_CHECKS = {
    "states_add_up": (
        "new + returning + resurrected = active users, returning + dormant = the previous period's active "
        "users, and no count is negative.",
        True,
    ),
    _ONE_ROW[0]: _ONE_ROW[1:],
    _PRESENT[0]: _PRESENT[1:],
}
STICKINESS_CHECKS = {
    "ratios_within_0_1": (
        "wau_mau and dau_mau lie within 0..1, and are null only when nobody was active in the month "
        "(or no full week / day of it has ended yet).",
        True,
    ),
    _ONE_ROW[0]: _ONE_ROW[1:],
    _PRESENT[0]: _PRESENT[1:],
}
RETENTION_CHECKS = {
    "retained_within_cohort": (
        "0 <= retained users <= cohort users in every later week; values are null exactly for the weeks "
        "that have not ended yet.",
        True,
    ),
    _ONE_ROW[0]: _ONE_ROW[1:],
    _PRESENT[0]: _PRESENT[1:],
}

ACTIVATION_CHECKS = {
    "activated_within_cohort": (
        "0 <= users activated within 7 days <= within 28 days <= cohort users; values are null exactly while "
        "the window has not ended for the whole cohort (7 or 28 days after the cohort week).",
        True,
    ),
    _ONE_ROW[0]: _ONE_ROW[1:],
    _PRESENT[0]: _PRESENT[1:],
}


def _deployments_present(frame: pd.DataFrame, config: MetricsConfig) -> tuple[bool, dict]:
    missing = missing_deployments(frame, config)
    incomplete = frame.loc[~frame["complete"], ["period_start", "deployment", "coverage_note"]]
    return (
        not missing,
        {
            "missing": MetadataValue.md("\n".join(f"- {m}" for m in missing) or "none"),
            "incomplete_rows": len(incomplete),
            "incomplete": MetadataValue.md(
                "\n".join(
                    f"- {r.period_start} {r.deployment}: {r.coverage_note}" for r in incomplete.tail(20).itertuples()
                )
                or "none"
            ),
        },
    )


def _one_row(frame: pd.DataFrame) -> tuple[bool, dict]:
    dupes = duplicate_rows(frame, ["deployment", "period_start"])
    return dupes == 0, {"duplicate_rows": dupes}


def check_lifecycle(frame: pd.DataFrame, config: MetricsConfig) -> dict[str, tuple[bool, dict]]:
    counts = frame[list(engagement.LIFECYCLE_COUNTS)]
    bad = frame[
        (frame["new_users"] + frame["returning_users"] + frame["resurrected_users"] != frame["active_users"])
        | (frame["returning_users"] + frame["dormant_users"] != frame["previous_active_users"])
        | (counts < 0).any(axis=1)
    ]
    return {
        "states_add_up": (bad.empty, {"violating_rows": len(bad)}),
        "one_row_per_key": _one_row(frame),
        "deployments_present": _deployments_present(frame, config),
    }


def check_stickiness(frame: pd.DataFrame, config: MetricsConfig) -> dict[str, tuple[bool, dict]]:
    bad = pd.Series(False, index=frame.index)
    for ratio, n in (("wau_mau", "weeks"), ("dau_mau", "days")):
        value = frame[ratio]
        bad |= value.notna() & ((value < 0) | (value > 1))
        bad |= value.isna() & (frame["monthly_active_users"] > 0) & (frame[n] > 0)
        bad |= value.notna() & ((frame["monthly_active_users"] == 0) | (frame[n] == 0))
    return {
        "ratios_within_0_1": (not bad.any(), {"violating_rows": int(bad.sum())}),
        "one_row_per_key": _one_row(frame),
        "deployments_present": _deployments_present(frame, config),
    }


def check_retention(
    frame: pd.DataFrame, config: MetricsConfig, weeks: int = engagement.RETENTION_WEEKS
) -> dict[str, tuple[bool, dict]]:
    bad = pd.Series(False, index=frame.index)
    for k in range(1, weeks + 1):
        value = frame[engagement.retained_column(k)]
        observed = frame["weeks_observed"] >= k
        bad |= value.notna() & ((value < 0) | (value > frame["cohort_users"])).fillna(False).astype(bool)
        bad |= value.isna() == observed
    return {
        "retained_within_cohort": (not bad.any(), {"violating_rows": int(bad.sum())}),
        "one_row_per_key": _one_row(frame),
        "deployments_present": _deployments_present(frame, config),
    }


def check_activation(frame: pd.DataFrame, config: MetricsConfig) -> dict[str, tuple[bool, dict]]:
    # A window's values are null exactly until the run's day (computed_at) reaches its end.
    today = frame["computed_at"].iloc[0].date() if len(frame) else None
    bad = pd.Series(False, index=frame.index)
    previous = None
    for n in engagement.ACTIVATION_DAYS:
        value = frame[engagement.activated_column(n)]
        observed = frame["period_end"].map(lambda end, n=n: today >= end + dt.timedelta(days=n))
        bad |= value.notna() & ((value < 0) | (value > frame["cohort_users"])).fillna(False).astype(bool)
        if previous is not None:
            bad |= (value.notna() & previous.notna() & (previous > value)).fillna(False).astype(bool)
        bad |= value.isna() == observed
        previous = value
    return {
        "activated_within_cohort": (not bad.any(), {"violating_rows": int(bad.sum())}),
        "one_row_per_key": _one_row(frame),
        "deployments_present": _deployments_present(frame, config),
    }


# --------------------------------------------------------------------------- metadata
