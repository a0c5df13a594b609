"""Periods, defined once: ISO weeks (Monday 00:00 UTC) and calendar months (UTC).

A period is keyed by its first day (the Monday, or the 1st); it covers the
half-open day range ``[start, end)``. Plain Python, no Dagster.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterator
from typing import Literal

Period = Literal["week", "month"]
PERIODS: tuple[Period, ...] = ("week", "month")
# Table-name suffix of each period (``core_actions_weekly``).
PERIOD_SUFFIX = {"week": "weekly", "month": "monthly"}


def week_start(day: dt.date) -> dt.date:
    """The Monday of the ISO week containing ``day``."""
    return day - dt.timedelta(days=day.weekday())


def period_start_of(period: Period, day: dt.date) -> dt.date:
    """First day of the period containing ``day``."""
    if period == "week":
        return week_start(day)
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r} (week or month)")


def period_bounds(period: Period, start: dt.date) -> tuple[dt.date, dt.date]:
    """[start, end) of the period that begins on ``start`` (a Monday or a 1st)."""
    if period == "week":
        if start.weekday() != 0:
            raise ValueError(f"a week starts on a Monday, {start} is not one")
        return start, start + dt.timedelta(days=7)
    if period == "month":
        if start.day != 1:
            raise ValueError(f"a month starts on the 1st, got {start}")
        days = calendar.monthrange(start.year, start.month)[1]
        return start, start + dt.timedelta(days=days)
    raise ValueError(f"unknown period {period!r} (week or month)")


def previous_period_start(period: Period, start: dt.date) -> dt.date:
    """Start of the period just before the one starting on ``start``."""
    period_bounds(period, start)  # validates ``start``
    if period == "week":
        return start - dt.timedelta(days=7)
    return (start - dt.timedelta(days=1)).replace(day=1)


def period_starts_between(period: Period, start: dt.date, end: dt.date) -> list[dt.date]:
    """Starts of the periods beginning in [start, end); ``start`` must be a period start."""
    starts = []
    while start < end:
        starts.append(start)
        start = period_bounds(period, start)[1]
    return starts


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """The days [start, end)."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def iter_days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    day = start
    while day < end:
        yield day
        day += dt.timedelta(days=1)


def full_weeks_in_month(month_start: dt.date) -> list[dt.date]:
    """Mondays of the ISO weeks lying entirely inside the month (always 3 or 4)."""
    start, end = period_bounds("month", month_start)
    monday = start + dt.timedelta(days=(7 - start.weekday()) % 7)
    weeks = []
    while monday + dt.timedelta(days=7) <= end:
        weeks.append(monday)
        monday += dt.timedelta(days=7)
    return weeks


def weeks_ago_date(weeks: int, today: dt.date) -> dt.date:
    """The Wednesday of the ISO week ``weeks`` weeks before the week of ``today``
    (a date that moves with the clock: the demo's releases and planted change use it)."""
    return week_start(today) - dt.timedelta(weeks=weeks) + dt.timedelta(days=2)
