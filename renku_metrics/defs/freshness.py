"""Freshness of partitioned assets: is the partition that should exist by now there?

A daily raw-events asset must have yesterday's UTC day materialized by
``DAILY_DEADLINE`` after the day ended (the extract runs at 01:30); a weekly asset
the week just ended by the Tuesday, a monthly one the month just ended by the 2nd.
The check looks at that one partition, so a backfill of an old day (which is the
most recent *update*) never makes a stale deployment look fresh.

The checks are evaluated by a sensor that records their results directly (no run,
so no run pod in Kubernetes), and only when a result changes; they can also be
executed from the UI.
"""

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DagsterInstance,
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    multi_asset_check,
    sensor,
)

from renku_metrics.core.periods import period_bounds, period_start_of, previous_period_start

CHECK_NAME = "freshness"
UTC = dt.timezone.utc

# How long after a period ends its partition must be materialized.
DAILY_DEADLINE = dt.timedelta(hours=8)  # yesterday by 08:00 UTC (extract at 01:30)
WEEKLY_DEADLINE = dt.timedelta(days=1)  # the week just ended by Tuesday 00:00 UTC (aggregated Monday 04:00)
MONTHLY_DEADLINE = dt.timedelta(days=1)  # the month just ended by the 2nd, 00:00 UTC (aggregated the 1st, 05:00)


@dataclass(frozen=True)
class FreshnessRule:
    """``period`` ("day", "week" or "month") partitions from ``first`` on, each due
    ``deadline`` after its end."""

    period: str
    first: dt.date
    deadline: dt.timedelta

    def describe(self) -> str:
        hours = self.deadline.total_seconds() / 3600
        what = {"day": "yesterday's UTC day", "week": "the ISO week just ended", "month": "the month just ended"}
        return f"{what[self.period]} materialized within {hours:g} hours after it ended"

    def _start_of(self, day: dt.date) -> dt.date:
        return day if self.period == "day" else period_start_of(self.period, day)

    def _previous(self, start: dt.date) -> dt.date:
        return start - dt.timedelta(days=1) if self.period == "day" else previous_period_start(self.period, start)

    def _end(self, start: dt.date) -> dt.date:
        return start + dt.timedelta(days=1) if self.period == "day" else period_bounds(self.period, start)[1]

    def due(self, now: dt.datetime) -> tuple[dt.date, dt.datetime] | None:
        """The latest partition whose deadline has passed at ``now``, and that deadline;
        None when no partition is due yet."""
        start = self._start_of(now.astimezone(UTC).date())
        while True:
            deadline = dt.datetime.combine(self._end(start), dt.time(), UTC) + self.deadline
            if deadline <= now:
                break
            start = self._previous(start)
        if start < self._start_of(self.first):
            return None
        return start, deadline


def evaluate(rule: FreshnessRule, materialized: set[str], now: dt.datetime) -> tuple[bool, dict]:
    """(passed, metadata) of one asset's freshness at ``now``, given the partition keys
    materialized so far."""
    latest = max(materialized) if materialized else None
    meta = {"rule": rule.describe(), "evaluated_at": now.astimezone(UTC).isoformat(timespec="seconds")}
    meta["latest_materialized_partition"] = latest or "none"
    due = rule.due(now)
    if due is None:
        return True, {**meta, "status": "no partition due yet"}
    start, deadline = due
    key = start.isoformat()
    meta.update({"due_partition": key, "deadline": deadline.isoformat(timespec="minutes")})
    if key in materialized:
        return True, {**meta, "status": f"{key} materialized"}
    late = now - deadline
    hours = int(late.total_seconds() // 3600)
    return False, {**meta, "status": f"{key} not materialized; {hours} h past its deadline"}


def _materialized(instance: DagsterInstance, key: AssetKey) -> set[str]:
    return set(instance.get_materialized_partitions(key))


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


def build_freshness_checks(
    rules: Mapping[AssetKey, FreshnessRule], clock: Callable[[], dt.datetime] = _now, name: str = "freshness_checks"
):
    """One non-blocking ``freshness`` check per asset, executable from the UI."""
    specs = [
        AssetCheckSpec(CHECK_NAME, asset=key, description=f"Warns unless {rule.describe()}.", blocking=False)
        for key, rule in rules.items()
    ]

    @multi_asset_check(
        name=name,
        specs=specs,
        can_subset=True,
        description="Is the partition that should exist by now materialized?",
    )
    def freshness(context: AssetCheckExecutionContext):
        now = clock()
        for check_key in context.selected_asset_check_keys:
            passed, meta = evaluate(
                rules[check_key.asset_key], _materialized(context.instance, check_key.asset_key), now
            )
            yield AssetCheckResult(
                asset_key=check_key.asset_key,
                check_name=CHECK_NAME,
                passed=passed,
                severity=AssetCheckSeverity.WARN,
                metadata=meta,
            )

    return freshness


def evaluate_all(
    instance: DagsterInstance, rules: Mapping[AssetKey, FreshnessRule], now: dt.datetime
) -> list[AssetCheckEvaluation]:
    out = []
    for key, rule in rules.items():
        passed, meta = evaluate(rule, _materialized(instance, key), now)
        out.append(
            AssetCheckEvaluation(
                asset_key=key, check_name=CHECK_NAME, passed=passed, severity=AssetCheckSeverity.WARN, metadata=meta
            )
        )
    return out


def build_freshness_sensor(
    rules: Mapping[AssetKey, FreshnessRule],
    clock: Callable[[], dt.datetime] = _now,
    name: str = "freshness_checks_sensor",
    minimum_interval_seconds: int = 600,
):
    """Every 10 minutes, records each freshness check's result when it differs from the
    last one recorded (the due partition or pass/fail changed); the cursor keeps them."""

    @sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Records the freshness checks' results when they change (no runs launched).",
    )
    def freshness_sensor(context: SensorEvaluationContext):
        last = json.loads(context.cursor) if context.cursor else {}
        events, state = [], {}
        for evaluation in evaluate_all(context.instance, rules, clock()):
            check = AssetCheckKey(evaluation.asset_key, evaluation.check_name).to_user_string()
            due = evaluation.metadata.get("due_partition")
            state[check] = [due.value if due is not None else None, evaluation.passed]
            if last.get(check) != state[check]:
                events.append(evaluation)
        return SensorResult(asset_events=events, cursor=json.dumps(state, sort_keys=True))

    return freshness_sensor


def check_keys(rules: Mapping[AssetKey, FreshnessRule]) -> Sequence[AssetCheckKey]:
    return [AssetCheckKey(key, CHECK_NAME) for key in rules]
