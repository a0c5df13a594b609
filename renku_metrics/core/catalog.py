"""The metric catalog (catalog.yaml in this package): what each metric counts.

``load_catalog()`` validates the file and stops with a message naming the entry
and the field. The aggregates compute every metric whose status is not
``deprecated``. No Dagster in here.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from renku_metrics.core.config import load_yaml
from renku_metrics.core.events import ACTIONS

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
STATUSES = ("active", "experimental", "deprecated")
MEASURES = ("users", "pct")
PERIODS = ("week", "month")
OPS = (">=", "<=")
GENERATIONS = ("renku1", "renku2")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_FIELDS = {"id", "title", "description", "actions", "owner", "status", "sources", "known_gaps", "targets"}
_TARGET_FIELDS = {"measure", "period", "op", "value", "by", "deployment"}
_TARGET_REQUIRED = {"measure", "period", "op", "value", "by"}


class CatalogError(ValueError):
    """An invalid catalog entry; the message names the file, entry and field."""


@dataclass(frozen=True)
class Target:
    measure: str  # users | pct
    period: str  # week | month
    op: str  # >= | <=
    value: float
    by: dt.date
    deployment: str = "all"  # a deployment name, or "all" for the cross-deployment rollup

    @property
    def check_name(self) -> str:
        return f"target_{self.measure}_{'ge' if self.op == '>=' else 'le'}_{self.value:g}".replace(".", "_")

    def describe(self) -> str:
        unit = "% of active users" if self.measure == "pct" else " users"
        return f"{self.deployment}: {self.measure} {self.op} {self.value:g}{unit} per {self.period}, by {self.by.isoformat()}"

    def met_by(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.value if self.op == ">=" else value <= self.value


@dataclass(frozen=True)
class Metric:
    id: str
    title: str
    description: str
    actions: tuple[str, ...]
    owner: str
    status: str
    sources: dict[str, str]
    known_gaps: tuple[str, ...]
    targets: tuple[Target, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Catalog:
    metrics: tuple[Metric, ...]
    path: str

    def computed(self) -> list[Metric]:
        """Metrics the aggregates compute: all but deprecated ones."""
        return [m for m in self.metrics if m.status != "deprecated"]

    def get(self, metric_id: str) -> Metric:
        for m in self.metrics:
            if m.id == metric_id:
                return m
        raise KeyError(metric_id)

    def metric_actions(self) -> list[tuple[str, str]]:
        """(metric id, action) pairs of the computed metrics."""
        return [(m.id, a) for m in self.computed() for a in m.actions]


def _text(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where}: field {key!r} must be non-empty text, got {value!r}")
    return value.strip()


def _target(raw: Any, where: str) -> Target:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: a target must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - _TARGET_FIELDS)
    if unknown:
        raise CatalogError(f"{where}: unknown field {unknown[0]!r}")
    missing = sorted(_TARGET_REQUIRED - set(raw))
    if missing:
        raise CatalogError(f"{where}: missing field {missing[0]!r}")
    for key, allowed in (("measure", MEASURES), ("period", PERIODS), ("op", OPS)):
        if raw[key] not in allowed:
            raise CatalogError(f"{where}: field {key!r} must be one of {allowed}, got {raw[key]!r}")
    value = raw["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise CatalogError(f"{where}: field 'value' must be a non-negative number, got {value!r}")
    if raw["measure"] == "pct" and value > 100:
        raise CatalogError(f"{where}: field 'value' is a percentage, must be <= 100, got {value!r}")
    by = raw["by"]
    if not isinstance(by, dt.date):
        try:
            by = dt.date.fromisoformat(str(by))
        except ValueError:
            raise CatalogError(f"{where}: field 'by' must be a date YYYY-MM-DD, got {by!r}") from None
    deployment = raw.get("deployment", "all")
    if not isinstance(deployment, str) or not deployment:
        raise CatalogError(f"{where}: field 'deployment' must be a deployment name or 'all', got {deployment!r}")
    return Target(raw["measure"], raw["period"], raw["op"], float(value), by, deployment)


def parse_catalog(raw: Any, path: str) -> Catalog:
    if not isinstance(raw, dict) or not isinstance(raw.get("metrics"), list) or not raw["metrics"]:
        raise CatalogError(f"{path}: expected a top-level 'metrics' list with at least one entry")
    metrics: list[Metric] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw["metrics"]):
        label = entry.get("id") if isinstance(entry, dict) else None
        where = f"{path}: metric {label!r}" if label else f"{path}: metrics[{index}]"
        if not isinstance(entry, dict):
            raise CatalogError(f"{where}: expected a mapping, got {entry!r}")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise CatalogError(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(_FIELDS))})")
        metric_id = entry.get("id")
        if not isinstance(metric_id, str) or not _ID.match(metric_id):
            raise CatalogError(f"{where}: field 'id' must match [a-z][a-z0-9_]*, got {metric_id!r}")
        if metric_id in seen:
            raise CatalogError(f"{where}: duplicate id {metric_id!r}")
        seen.add(metric_id)
        actions = entry.get("actions")
        if not isinstance(actions, list) or not actions:
            raise CatalogError(f"{where}: field 'actions' must be a non-empty list of {ACTIONS}")
        for action in actions:
            if action not in ACTIONS:
                raise CatalogError(
                    f"{where}: field 'actions' has unknown action {action!r} (known: {', '.join(ACTIONS)})"
                )
        status = entry.get("status")
        if status not in STATUSES:
            raise CatalogError(f"{where}: field 'status' must be one of {STATUSES}, got {status!r}")
        sources = entry.get("sources")
        if not isinstance(sources, dict) or not sources:
            raise CatalogError(f"{where}: field 'sources' must map {GENERATIONS} to text")
        for generation, text in sources.items():
            if generation not in GENERATIONS or not isinstance(text, str) or not text.strip():
                raise CatalogError(
                    f"{where}: field 'sources' has bad entry {generation!r} (allowed keys {GENERATIONS}, text values)"
                )
        gaps = entry.get("known_gaps")
        if not isinstance(gaps, list) or not gaps or not all(isinstance(g, str) and g.strip() for g in gaps):
            raise CatalogError(
                f"{where}: field 'known_gaps' must be a non-empty list of text (say what the metric cannot see)"
            )
        targets_raw = entry.get("targets", []) or []
        if not isinstance(targets_raw, list):
            raise CatalogError(f"{where}: field 'targets' must be a list")
        targets = tuple(_target(t, f"{where}: targets[{i}]") for i, t in enumerate(targets_raw))
        metrics.append(
            Metric(
                id=metric_id,
                title=_text(entry, "title", where),
                description=" ".join(_text(entry, "description", where).split()),
                actions=tuple(actions),
                owner=_text(entry, "owner", where),
                status=status,
                sources={k: " ".join(v.split()) for k, v in sources.items()},
                known_gaps=tuple(" ".join(g.split()) for g in gaps),
                targets=targets,
            )
        )
    return Catalog(metrics=tuple(metrics), path=path)


def load_catalog(path: str | Path | None = None) -> Catalog:
    path = Path(path) if path is not None else CATALOG_FILE
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"{path}: metric catalog not found") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    return parse_catalog(raw, str(path.name if path == CATALOG_FILE else path))


def metric_table_markdown(catalog: Catalog) -> str:
    """The metric definitions table of docs/design.md (a test keeps them equal)."""
    lines = [
        "| id | metric | counts actions | Renku 1 | Renku 2 | cannot see | status |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in catalog.metrics:
        lines.append(
            "| {id} | {title} | {actions} | {r1} | {r2} | {gaps} | {status} |".format(
                id=f"`{m.id}`",
                title=m.title,
                actions=", ".join(f"`{a}`" for a in m.actions),
                r1=m.sources.get("renku1", "-"),
                r2=m.sources.get("renku2", "-"),
                gaps="; ".join(m.known_gaps),
                status=m.status,
            )
        )
    return "\n".join(lines)


def metric_description(metric: Metric) -> str:
    """Markdown text for asset descriptions and metadata."""
    gaps = "\n".join(f"  - {g}" for g in metric.known_gaps)
    return f"- **{metric.id}** ({metric.status}): {metric.description}\n  Cannot see:\n{gaps}"
