"""Coverage: which days of a period storage holds, and whether their sources read
their whole window. Read from the days' manifests; used by the aggregates (is a
period complete?) and the engagement views (is the history long enough?).
Plain Python, no Dagster.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from renku_metrics.core.config import Deployment
from renku_metrics.core.layout import day_of_key, is_manifest_key, raw_events_key, raw_events_prefix
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.periods import days_between
from renku_metrics.core.storage import Storage

# Weeks of extracted history before a period for "first seen" to mean "new" (docs/engagement.md).
HISTORY_WARMUP_WEEKS = 26


@dataclass
class DeploymentCoverage:
    """What storage holds for one deployment in one period."""

    deployment: str
    days_expected: int
    days_extracted: int
    event_keys: list[str]
    incomplete_sources: list[str] = field(default_factory=list)  # "YYYY-MM-DD source: note"
    history_starts_inside: bool = False
    missing_days: list[dt.date] = field(default_factory=list)  # days already over but not extracted

    def is_complete(self, period_ended: bool) -> bool:
        return (
            period_ended
            and not self.history_starts_inside
            and self.days_extracted == self.days_expected
            and not self.incomplete_sources
        )

    def note(self, period_ended: bool) -> str:
        parts = []
        if not period_ended:
            parts.append("period not over yet")
        if self.history_starts_inside:
            parts.append("deployment history starts inside this period")
        if self.days_extracted < self.days_expected:
            parts.append(f"{self.days_expected - self.days_extracted} of {self.days_expected} days not extracted")
        parts.extend(self.incomplete_sources)
        return "; ".join(parts)


DayStatus = tuple[bool, list[str]]  # (the day has events, notes of sources that were incomplete)


def day_status(manifest: Manifest) -> DayStatus:
    """What a day's manifest says about its events and its sources' coverage.

    A day withheld by a failed blocking check contributes no events and makes
    its periods incomplete, with a note naming the checks.
    """
    if manifest.withheld:
        note = (
            f"{manifest.date} withheld: blocking raw-event checks failed ({', '.join(manifest.failed_checks())}); "
            "its events are left out"
        )
        return False, [*manifest.incomplete_notes(), note]
    return manifest.has_events, manifest.incomplete_notes()


def coverage_from_days(
    deployment: Deployment, days: Mapping[dt.date, DayStatus], start: dt.date, end: dt.date, today: dt.date
) -> DeploymentCoverage:
    """Coverage of the period [start, end) from the statuses of the extracted days."""
    first = max(start, deployment.start_date)
    last = min(end, today)  # days from today on cannot have been extracted yet
    keys, incomplete, extracted, missing = [], [], 0, []
    for day in days_between(first, last) if first < last else []:
        if day not in days:
            missing.append(day)
            continue
        has_events, notes = days[day]
        extracted += 1
        if has_events:
            keys.append(raw_events_key(deployment.name, day))
        incomplete.extend(notes)
    return DeploymentCoverage(
        deployment=deployment.name,
        days_expected=len(days_between(first, end)),
        days_extracted=extracted,
        event_keys=keys,
        incomplete_sources=incomplete,
        history_starts_inside=deployment.start_date > start and not deployment.launched_on_start_date,
        missing_days=missing,
    )


def coverage_for(
    storage: Storage, deployment: Deployment, start: dt.date, end: dt.date, today: dt.date
) -> DeploymentCoverage:
    """Which daily partitions of the period exist, and whether their sources were complete."""
    days = {}
    for day in days_between(max(start, deployment.start_date), min(end, today)):
        manifest = Manifest.read(storage, deployment.name, day)
        if manifest is not None:
            days[day] = day_status(manifest)
    return coverage_from_days(deployment, days, start, end, today)


@dataclass
class HistoryStatus:
    """Whether "first seen" can be read as "first ever" for a period starting on ``before``.

    ``complete`` is true when the deployment's ``start_date`` lies at least the
    warm-up (HISTORY_WARMUP_WEEKS) before ``before`` (or the deployment is configured
    as ``launched_on_start_date``: nobody used it earlier) and every day of the warm-up
    span just before it was extracted with all sources complete. Gaps older than
    the warm-up only go into the note: like activity before ``start_date``, they
    can make a user who was away for longer than the warm-up look new.
    """

    complete: bool
    weeks: int  # whole weeks of history (from start_date) before the period
    notes: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        return "; ".join(self.notes)


@dataclass
class DeploymentDays:
    """What storage holds for one deployment, day by day (read from the manifests once)."""

    deployment: Deployment
    manifests: dict[dt.date, DayStatus]  # day -> (has events, incomplete-source notes)
    _sorted: tuple[list[dt.date], list[dt.date]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, storage: Storage, deployment: Deployment, until: dt.date) -> DeploymentDays:
        """Manifests of the days [start_date, until)."""
        manifests: dict[dt.date, DayStatus] = {}
        for key in storage.list_keys(raw_events_prefix(deployment.name)):
            if not is_manifest_key(key):
                continue
            day = day_of_key(key)
            if not (deployment.start_date <= day < until):
                continue
            manifests[day] = day_status(Manifest.read_key(storage, key))
        return cls(deployment, manifests)

    def event_keys(self, start: dt.date, end: dt.date) -> list[str]:
        """Raw event objects holding events in the days [start, end)."""
        return [
            raw_events_key(self.deployment.name, day)
            for day in sorted(self.manifests)
            if start <= day < end and self.manifests[day][0]
        ]

    def coverage(self, start: dt.date, end: dt.date, today: dt.date) -> DeploymentCoverage:
        """Same as ``aggregate.coverage_for`` for [start, end), without rereading manifests."""
        return coverage_from_days(self.deployment, self.manifests, start, end, today)

    def _gaps(self, start: dt.date, end: dt.date) -> tuple[int, int]:
        """(days not extracted, days with incomplete sources) in [start, end): two binary searches
        each, so a period's history costs the same after years of days as after a few."""
        if start >= end:
            return 0, 0
        if self._sorted is None:
            self._sorted = (sorted(self.manifests), sorted(d for d, (_, notes) in self.manifests.items() if notes))
        stored, incomplete = self._sorted
        present = bisect.bisect_left(stored, end) - bisect.bisect_left(stored, start)
        flagged = bisect.bisect_left(incomplete, end) - bisect.bisect_left(incomplete, start)
        return (end - start).days - present, flagged

    def history(self, before: dt.date, warmup_weeks: int = HISTORY_WARMUP_WEEKS) -> HistoryStatus:
        start_date = self.deployment.start_date
        weeks = max(0, (before - start_date).days // 7)
        warm_start = before - dt.timedelta(weeks=warmup_weeks)
        notes, complete = [], True
        if start_date > warm_start and not self.deployment.launched_on_start_date:
            complete = False
            notes.append(
                f"only {weeks} week(s) of history before {before.isoformat()} (start_date {start_date.isoformat()}, "
                f"warm-up {warmup_weeks} weeks): earlier activity is unseen, so returning users may count as new"
            )
        missing, incomplete = self._gaps(max(start_date, warm_start), before)
        if missing or incomplete:
            complete = False
            notes.append(
                f"history {max(start_date, warm_start).isoformat()}..{(before - dt.timedelta(days=1)).isoformat()}: "
                f"{missing} day(s) not extracted, {incomplete} day(s) with incomplete sources"
            )
        old_missing, old_incomplete = self._gaps(start_date, min(warm_start, before))
        if old_missing or old_incomplete:
            notes.append(
                f"older history before {warm_start.isoformat()}: {old_missing} day(s) not extracted, "
                f"{old_incomplete} day(s) with incomplete sources (users active only then may count as new)"
            )
        return HistoryStatus(complete=complete, weeks=weeks, notes=notes)
