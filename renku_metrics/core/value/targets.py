"""Targets followed to their date: a trajectory and a verdict for every target.

A target (one entry of ``targets.yaml`` next to the catalog, or of the file named by
$RENKU_METRICS_TARGETS) says which value of a metric the team aims for, in which
scope (a deployment or ``all``, optionally a group), per week or month, from a
baseline date ``start`` to a deadline ``by``. ``load_targets`` validates the file
against declared pydantic models and stops with one line naming the file, the
entry and the key.

``evaluate_target`` turns a target and the stored values of its measure into one
row per period since ``start``: value, baseline, goal, expected (the straight path
from the baseline to the goal), projected (the recent trend carried to the
deadline) and a status. The exact rules are written in docs/targets.md; the
numbers behind them are the constants below. ``target_status`` evaluates every
target as of one week, reading the stored aggregates (``core_actions_*``,
``active_users_*``) and, for group targets, ``group_metrics_*``.

Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import pyarrow as pa
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from renku_metrics.core.layout import metrics_key, metrics_prefix
from renku_metrics.core.periods import PERIOD_SUFFIX, period_bounds, period_start_of, previous_period_start
from renku_metrics.core.storage import Storage
from renku_metrics.core.validation import YamlError, iso_day, load_yaml, not_blank, one_line

TARGETS_FILE = Path(__file__).resolve().parent.parent / "targets.yaml"
TARGETS_ENV = "RENKU_METRICS_TARGETS"
TABLE = "target_status"
MEASURES = ("users", "pct", "pct_of_members")
PERIODS = ("week", "month")
COMPARISONS = (">=", "<=")
STATUSES = ("met", "on_track", "off_track", "missed", "no_data")
ALL = "all"
# The metric every deployment (and group) has besides the catalog's: the denominator.
ACTIVE_USERS = "active_users"
# The trend: least squares over the values of the last TREND_PERIODS periods (the
# evaluated one included); fewer than TREND_MIN_POINTS values give no projection.
TREND_PERIODS = 6
TREND_MIN_POINTS = 3
# Values closer than this count as equal (float noise of the straight path).
TOLERANCE = 1e-9
# Where group metrics live (the groups part writes them; one file per period).
GROUP_METRICS = {"week": "group_metrics_weekly", "month": "group_metrics_monthly"}
# Group measure -> column of group_metrics_*.
GROUP_COLUMNS = {"users": "users", "pct": "pct_of_active_members", "pct_of_members": "pct_of_members"}


# The stored table's schema: fixed, so a week where no target has a group (all nulls)
# still stores ``group`` as text.
SCHEMA = pa.schema(
    [
        ("target", pa.string()),
        ("metric", pa.string()),
        ("measure", pa.string()),
        ("group", pa.string()),
        ("deployment", pa.string()),
        ("period", pa.string()),
        ("period_start", pa.date32()),
        ("value", pa.float64()),
        ("baseline", pa.float64()),
        ("goal", pa.float64()),
        ("expected", pa.float64()),
        ("projected", pa.float64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("comparison", pa.string()),
        ("start", pa.date32()),
        ("by", pa.date32()),
        ("owner", pa.string()),
        ("why", pa.string()),
        ("evaluated_week", pa.date32()),
    ]
)
COLUMNS = list(SCHEMA.names)


class TargetError(ValueError):
    """An invalid targets file or entry; the message names the file, entry and key."""


@dataclass(frozen=True)
class Target:
    id: str
    metric: str
    measure: str  # users | pct | pct_of_members
    deployment: str  # a deployment name, or "all"
    group: str | None
    period: str  # week | month
    comparison: str  # >= | <=
    value: float
    start: dt.date
    by: dt.date
    owner: str
    why: str

    @property
    def check_name(self) -> str:
        return f"target_{self.id}"

    def satisfied(self, value: float | None) -> bool:
        if value is None:
            return False
        if self.comparison == ">=":
            return value >= self.value - TOLERANCE
        return value <= self.value + TOLERANCE

    def at_or_ahead(self, value: float, expected: float) -> bool:
        """Whether ``value`` is on the goal's side of ``expected`` (or on it)."""
        if self.comparison == ">=":
            return value >= expected - TOLERANCE
        return value <= expected + TOLERANCE

    def unit(self) -> str:
        if self.measure == "users":
            return " users"
        if self.measure == "pct_of_members":
            return "% of members"
        return "% of active members" if self.group else "% of active users"

    def describe(self) -> str:
        scope = f"{self.group} on {self.deployment}" if self.group else self.deployment
        return (
            f"{self.metric} {self.comparison} {self.value:g}{self.unit()} per {self.period} ({scope}), "
            f"from {self.start.isoformat()} by {self.by.isoformat()}"
        )


_Text = Annotated[str, AfterValidator(not_blank)]
_Day = Annotated[dt.date, BeforeValidator(iso_day)]


class TargetEntry(BaseModel):
    """One item of ``targets`` as written in the targets file (see the comment at its top)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
    metric: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
    measure: Literal[MEASURES]
    deployment: Annotated[str, Field(min_length=1)] = ALL
    group: _Text | None = None
    period: Literal[PERIODS]
    comparison: Literal[COMPARISONS]
    value: Annotated[float, Field(ge=0)]
    start: _Day
    by: _Day
    owner: _Text
    why: _Text


_MESSAGES = {
    "id": "key 'id' must match [a-z][a-z0-9_]*, got {got}",
    "metric": "key 'metric' must be a metric id ([a-z][a-z0-9_]*), got {got}",
    "measure": f"key 'measure' must be one of {MEASURES}, got {{got}}",
    "deployment": "key 'deployment' must be a deployment name or 'all', got {got}",
    "group": "key 'group' must be a non-empty group name, got {got}",
    "period": f"key 'period' must be one of {PERIODS}, got {{got}}",
    "comparison": f"key 'comparison' must be one of {COMPARISONS} (quote it in YAML), got {{got}}",
    "value": "key 'value' must be a non-negative number, got {got}",
    "start": "key 'start' must be a date YYYY-MM-DD, got {got}",
    "by": "key 'by' must be a date YYYY-MM-DD, got {got}",
    "owner": "key 'owner' must be non-empty text, got {got}",
    "why": "key 'why' must be non-empty text (one sentence on why the target matters), got {got}",
}


def _one_line_text(text: str) -> str:
    return " ".join(text.split())


def _target(item: Any, where: str, metrics: set[str] | None, deployments: set[str] | None) -> Target:
    if not isinstance(item, dict):
        raise TargetError(f"{where}: expected a mapping, got {item!r}")
    try:
        entry = TargetEntry.model_validate(item)
    except ValidationError as exc:
        raise TargetError(one_line(exc, where, TargetEntry.model_fields, _MESSAGES)) from None
    if metrics is not None and entry.metric not in metrics:
        known = ", ".join(sorted(metrics))
        raise TargetError(f"{where}: key 'metric' names unknown metric {entry.metric!r} (known: {known})")
    if deployments is not None and entry.deployment != ALL and entry.deployment not in deployments:
        known = ", ".join([ALL, *sorted(deployments)])
        raise TargetError(f"{where}: key 'deployment' names unknown deployment {entry.deployment!r} (known: {known})")
    if entry.measure == "pct_of_members" and entry.group is None:
        raise TargetError(f"{where}: key 'group' is required with measure 'pct_of_members'")
    if entry.measure == "pct" and entry.metric == ACTIVE_USERS:
        raise TargetError(f"{where}: key 'measure': pct of active users of {ACTIVE_USERS!r} is always 100")
    if entry.measure != "users" and entry.value > 100:
        raise TargetError(f"{where}: key 'value' is a percentage, must be <= 100, got {item['value']!r}")
    if period_start_of(entry.period, entry.by) <= period_start_of(entry.period, entry.start):
        raise TargetError(
            f"{where}: key 'by' ({entry.by}) must fall in a later {entry.period} than 'start' ({entry.start})"
        )
    return Target(
        id=entry.id,
        metric=entry.metric,
        measure=entry.measure,
        deployment=entry.deployment,
        group=entry.group.strip() if entry.group else None,
        period=entry.period,
        comparison=entry.comparison,
        value=float(entry.value),
        start=entry.start,
        by=entry.by,
        owner=entry.owner.strip(),
        why=_one_line_text(entry.why),
    )


def parse_targets(
    raw: Any, path: str, metrics: Iterable[str] | None = None, deployments: Iterable[str] | None = None
) -> tuple[Target, ...]:
    """The targets of a parsed file; ``metrics`` (catalog ids) and ``deployments`` (names),
    when given, are the names a target may refer to (``active_users`` and ``all`` always are)."""
    known_metrics = None if metrics is None else {*metrics, ACTIVE_USERS}
    known_deployments = None if deployments is None else set(deployments)
    if not isinstance(raw, dict) or not isinstance(raw.get("targets"), list):
        raise TargetError(f"{path}: expected a top-level 'targets' list")
    extra = sorted(set(raw) - {"targets"})
    if extra:
        raise TargetError(f"{path}: unknown top-level key {extra[0]!r} (allowed: targets)")
    targets: list[Target] = []
    for index, item in enumerate(raw["targets"]):
        label = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else None
        where = f"{path}: target {label!r}" if label else f"{path}: targets[{index}]"
        target = _target(item, where, known_metrics, known_deployments)
        if target.id in {t.id for t in targets}:
            raise TargetError(f"{where}: duplicate id {target.id!r}")
        targets.append(target)
    return tuple(targets)


def targets_path(env: Mapping[str, str] | None = None) -> Path:
    """The targets file: $RENKU_METRICS_TARGETS if set, else the one shipped with the package."""
    env = os.environ if env is None else env
    return Path(env[TARGETS_ENV]) if env.get(TARGETS_ENV) else TARGETS_FILE


def load_targets(
    path: str | Path | None = None,
    metrics: Iterable[str] | None = None,
    deployments: Iterable[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Target, ...]:
    """Read and validate a targets file (default: ``targets_path(env)``)."""
    path = Path(path) if path is not None else targets_path(env)
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise TargetError(f"{path}: targets file not found") from None
    except YamlError as exc:
        raise TargetError(f"{path}: not valid YAML: {exc}") from None
    return parse_targets(raw, str(path.name if path == TARGETS_FILE else path), metrics, deployments)


# --- The values of a target's measure ------------------------------------------------


@dataclass(frozen=True)
class Series:
    """A target's measure per period: ``values`` of the complete periods, and for the
    periods without one, why (``reasons``; ``missing`` for every other period)."""

    values: dict[dt.date, float]
    reasons: dict[dt.date, str]
    missing: str

    def reason(self, start: dt.date) -> str:
        return self.reasons.get(start, self.missing)


def _period_index(period: str, first: dt.date, start: dt.date) -> int:
    """Periods from ``first`` to ``start`` (both period starts; negative before ``first``)."""
    if period == "week":
        return (start - first).days // 7
    return (start.year - first.year) * 12 + start.month - first.month


def _float(value: Any) -> float | None:
    if value is None or pd.isna(value):
        return None
    return float(value)


def series_from_rows(rows: pd.DataFrame, column: str, missing: str) -> Series:
    """A series from stored rows of one scope: the value of ``column`` where the row is
    complete and the value present; otherwise the reason (provisional, withheld, no one active)."""
    values: dict[dt.date, float] = {}
    reasons: dict[dt.date, str] = {}
    for row in rows.to_dict("records"):
        start = pd.Timestamp(row["period_start"]).date()
        withheld = row.get("withheld_reason")
        value = _float(row.get(column))
        if isinstance(withheld, str) and withheld:
            reasons[start] = f"withheld: {withheld}"
        elif not bool(row.get("complete")):
            note = row.get("coverage_note")
            reasons[start] = "provisional" + (f": {note}" if isinstance(note, str) and note else " (period incomplete)")
        elif value is None:
            reasons[start] = "no value (nobody active)" if column != "users" else "no value"
        else:
            values[start] = value
    return Series(values, reasons, missing)


def read_table(storage: Storage, table: str) -> pd.DataFrame:
    """Every period file of a metrics table (``metrics/<table>/period=.../``), or an empty frame."""
    keys = [k for k in storage.list_keys(metrics_prefix(table)) if k.endswith(".parquet")]
    frames = [storage.read_parquet(k) for k in keys]
    if not frames:
        return pd.DataFrame()
    return pa.concat_tables(frames, promote_options="permissive").to_pandas()


class SeriesLoader:
    """Reads each stored table a target needs once per evaluation (plain storage reads)."""

    def __init__(self, storage: Storage, deployments: Iterable[str] | None = None) -> None:
        self.storage = storage
        self.deployments = None if deployments is None else sorted(deployments)
        self._tables: dict[str, pd.DataFrame] = {}

    def _table(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            self._tables[name] = read_table(self.storage, name)
        return self._tables[name]

    def series(self, target: Target) -> Series:
        suffix = PERIOD_SUFFIX[target.period]
        if self.deployments is not None and target.deployment not in (ALL, *self.deployments):
            configured = ", ".join(self.deployments)
            return Series({}, {}, f"deployment {target.deployment!r} is not configured (configured: {configured})")
        if target.group is not None:
            name = GROUP_METRICS[target.period]
            frame = self._table(name)
            if frame.empty:
                return Series({}, {}, f"no group metrics stored ({name} is empty): materialize {name}")
            scope = frame[
                (frame["group"] == target.group)
                & (frame["deployment"] == target.deployment)
                & (frame["metric"] == target.metric)
            ]
            if scope.empty:
                return Series(
                    {},
                    {},
                    f"{name} has no rows of group {target.group!r}, deployment {target.deployment!r}, "
                    f"metric {target.metric!r}",
                )
            missing = f"{name} has no row of group {target.group!r} for this period"
            return series_from_rows(scope, GROUP_COLUMNS[target.measure], missing)
        if target.metric == ACTIVE_USERS:
            name, column = f"active_users_{suffix}", "active_users"
        else:
            name, column = f"core_actions_{suffix}", target.measure
        frame = self._table(name)
        if frame.empty:
            return Series({}, {}, f"no {name} stored: materialize {name}")
        scope = frame[frame["deployment"] == target.deployment]
        if target.metric != ACTIVE_USERS:
            scope = scope[scope["metric"] == target.metric]
        if scope.empty:
            return Series({}, {}, f"{name} has no rows of deployment {target.deployment!r}, metric {target.metric!r}")
        return series_from_rows(scope, column, f"{name} has no row for this period (not aggregated)")


# --- Evaluation ----------------------------------------------------------------------


def ended_periods(period: str, first: dt.date, through: dt.date) -> list[dt.date]:
    """Starts of the periods from ``first`` that have ended by ``through`` (exclusive end <= through)."""
    starts = []
    start = first
    while period_bounds(period, start)[1] <= through:
        starts.append(start)
        start = period_bounds(period, start)[1]
    return starts


def trend_at(
    target: Target, values: Mapping[dt.date, float], first: dt.date, at: dt.date, deadline: dt.date
) -> float | None:
    """The least-squares line through the values of the last TREND_PERIODS periods up to
    ``at`` (period indices as x), evaluated at the deadline period; None with fewer than
    TREND_MIN_POINTS values."""
    points = []
    start = at
    for _ in range(TREND_PERIODS):
        if start in values:
            points.append((_period_index(target.period, first, start), values[start]))
        start = previous_period_start(target.period, start)
    if len(points) < TREND_MIN_POINTS:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return mean_y + slope * (_period_index(target.period, first, deadline) - mean_x)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def evaluate_target(target: Target, series: Series, through: dt.date) -> list[dict]:
    """One row per period of ``target`` from the period containing ``start`` to the last one
    that has ended by ``through`` (columns as ``COLUMNS`` less ``evaluated_week``)."""
    first = period_start_of(target.period, target.start)
    deadline = period_start_of(target.period, target.by)
    n = _period_index(target.period, first, deadline)
    goal = target.value
    base = {
        "target": target.id,
        "metric": target.metric,
        "measure": target.measure,
        "group": target.group,
        "deployment": target.deployment,
        "period": target.period,
        "goal": goal,
        "comparison": target.comparison,
        "start": target.start,
        "by": target.by,
        "owner": target.owner,
        "why": target.why,
    }
    periods = ended_periods(target.period, first, through)
    if not periods:
        return [
            {
                **base,
                "period_start": first,
                "value": None,
                "baseline": None,
                "expected": None,
                "projected": None,
                "status": "no_data",
                "reason": f"not started: its first {target.period} ({first}) has not ended",
            }
        ]
    # The baseline: the value of the period containing start, or of the first later one with a value.
    baseline_period = next((p for p in periods if p in series.values), None)
    baseline = series.values.get(baseline_period) if baseline_period else None
    b = _period_index(target.period, first, baseline_period) if baseline_period else None

    def expected_at(i: int) -> float | None:
        if baseline is None or i < b:
            return None
        if i >= n:
            return goal
        return baseline + (goal - baseline) * (i - b) / (n - b)

    # The verdict, from the deadline's period on: the latest value at or before that period.
    decided = [p for p in periods if p <= deadline and p in series.values]
    verdict_period = decided[-1] if decided else None
    rows = []
    for start in periods:
        i = _period_index(target.period, first, start)
        value = series.values.get(start)
        expected = expected_at(i)
        row = {**base, "period_start": start, "value": value, "baseline": baseline, "expected": expected}
        if start >= deadline:
            row["projected"] = None
            if verdict_period is None:
                row["status"] = "no_data"
                row["reason"] = f"deadline passed without a value from {first} to the deadline's {target.period}"
                rows.append(row)
                continue
            decisive = series.values[verdict_period]
            met = target.satisfied(decisive)
            row["status"] = "met" if met else "missed"
            row["reason"] = (
                f"final: {_fmt(decisive)} in {verdict_period} (the deadline's {target.period} is {deadline}) "
                f"{'meets' if met else 'does not meet'} {target.comparison} {goal:g}"
            )
            rows.append(row)
            continue
        projected = trend_at(target, series.values, first, start, deadline)
        row["projected"] = projected
        if value is None:
            row["status"], row["reason"] = "no_data", series.reason(start)
        elif target.satisfied(value):
            row["status"], row["reason"] = "met", f"{_fmt(value)} {target.comparison} {goal:g}"
        elif expected is not None and target.at_or_ahead(value, expected):
            row["status"] = "on_track"
            row["reason"] = f"{_fmt(value)} is at or ahead of the expected {_fmt(expected)}"
        elif projected is not None and target.satisfied(projected):
            row["status"] = "on_track"
            row["reason"] = (
                f"behind the expected {_fmt(expected)}, but the trend reaches {_fmt(projected)} by {deadline}"
            )
        else:
            row["status"] = "off_track"
            trend = f"the trend reaches {_fmt(projected)}" if projected is not None else "too few values for a trend"
            row["reason"] = f"{_fmt(value)} is behind the expected {_fmt(expected)}; {trend}"
        rows.append(row)
    return rows


def evaluation_end(week: dt.date) -> dt.date:
    """The end of an evaluated week (its Monday key): periods ending by then are evaluated."""
    return period_bounds("week", week)[1]


def target_status(
    storage: Storage,
    targets: Iterable[Target],
    week: dt.date,
    deployments: Iterable[str] | None = None,
    loader: SeriesLoader | None = None,
) -> pd.DataFrame:
    """Every target evaluated as of the ISO week starting ``week`` (a Monday): its periods
    that have ended by the end of that week. A target on a deployment that is not among
    ``deployments`` (when given) has no data, with that reason. Pass one ``loader`` to
    evaluate several weeks from one read of the stored tables."""
    loader = loader or SeriesLoader(storage, deployments)
    rows = []
    for target in targets:
        for row in evaluate_target(target, loader.series(target), evaluation_end(week)):
            rows.append({**row, "evaluated_week": week})
    return status_frame(rows)


def status_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("value", "baseline", "goal", "expected", "projected"):
        frame[col] = frame[col].astype("float64")
    for col in ("group", "reason"):
        frame[col] = frame[col].astype("object")
    return frame


def status_key(week: dt.date) -> str:
    return metrics_key(TABLE, week)


def write_status(storage: Storage, week: dt.date, frame: pd.DataFrame) -> str:
    """Store one evaluation week's rows (replacing the week's file whole); returns its key."""
    key = status_key(week)
    storage.write_parquet(key, pa.Table.from_pandas(frame[COLUMNS], schema=SCHEMA, preserve_index=False))
    return key


def latest_status(frame: pd.DataFrame) -> pd.DataFrame:
    """The latest evaluated period of each target (one row per target)."""
    if frame.empty:
        return frame
    newest = frame[frame["evaluated_week"] == frame.groupby("target")["evaluated_week"].transform("max")]
    return newest.sort_values("period_start").groupby("target", sort=False).tail(1).sort_values("target")


def weeks_left(row: Mapping[str, Any]) -> int:
    """Whole weeks from the end of the evaluated week to the deadline (0 once it has passed)."""
    end = evaluation_end(pd.Timestamp(row["evaluated_week"]).date())
    return max(0, (pd.Timestamp(row["by"]).date() - end).days // 7)


def latest_evaluation(frame: pd.DataFrame) -> pd.DataFrame:
    """Each target's rows of its latest evaluation (the largest ``evaluated_week``)."""
    if frame.empty:
        return frame
    return frame[frame["evaluated_week"] == frame.groupby("target")["evaluated_week"].transform("max")]


def targets_markdown(frame: pd.DataFrame) -> str:
    """The latest status of every target as a markdown table: status, value vs expected,
    goal, deadline and weeks left (``frame``: rows of ``read_target_status``)."""
    lines = [
        "| target | scope | period | status | value | expected | goal | deadline | weeks left | owner |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in latest_status(frame).to_dict("records"):
        group = r.get("group")
        scope = f"{group} ({r['deployment']})" if isinstance(group, str) and group else r["deployment"]
        value = _fmt(_float(r["value"]))
        status = r["status"] if r["status"] != "no_data" else f"no_data: {r['reason']}"
        lines.append(
            f"| {r['target']} | {scope} | {r['period']} {r['period_start']} | {status} | {value} "
            f"| {_fmt(_float(r['expected']))} | {r['comparison']} {r['goal']:g} | {r['by']} | {weeks_left(r)} "
            f"| {r['owner']} |"
        )
    return "\n".join(lines)
