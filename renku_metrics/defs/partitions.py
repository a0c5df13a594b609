"""The partitions, defined once: UTC days per deployment, ISO weeks, calendar months.

Weeks start on Monday 00:00 UTC (``day_offset=1``; Dagster's default would be
Sunday) and are keyed by that Monday; months are keyed by their 1st. Every
definition uses the same timezone, as partition mappings require.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    AssetExecutionContext,
    DailyPartitionsDefinition,
    MonthlyPartitionsDefinition,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
)

from renku_metrics.core.periods import period_starts_between

TIMEZONE = "UTC"


def daily_partitions(start: dt.date) -> DailyPartitionsDefinition:
    return DailyPartitionsDefinition(start_date=start.isoformat(), timezone=TIMEZONE)


def weekly_partitions(start: dt.date) -> WeeklyPartitionsDefinition:
    """ISO weeks; the first is the week containing ``start``."""
    monday = start - dt.timedelta(days=start.weekday())
    return WeeklyPartitionsDefinition(start_date=monday.isoformat(), day_offset=1, timezone=TIMEZONE)


def monthly_partitions(start: dt.date) -> MonthlyPartitionsDefinition:
    """Calendar months; the first is the month containing ``start``."""
    return MonthlyPartitionsDefinition(start_date=start.replace(day=1).isoformat(), timezone=TIMEZONE)


def period_partitions(period: str, start: dt.date) -> TimeWindowPartitionsDefinition:
    """Weekly or monthly partitions (``period`` is "week" or "month")."""
    return weekly_partitions(start) if period == "week" else monthly_partitions(start)


def period_starts(context: AssetExecutionContext, period: str) -> list[dt.date]:
    """First days of the periods a run covers (one partition, or a single-run range)."""
    window = context.partition_time_window
    return period_starts_between(period, window.start.date(), window.end.date())
