"""The metric catalog (catalog.yaml in this package): what each metric counts.

``load_catalog()`` validates the file against declared pydantic models
(``MetricEntry``) and stops with one line naming the entry and the field. The
aggregates compute every metric whose status is not ``deprecated``. Targets on
the metrics live in their own file (``renku_metrics.core.value.targets``). No
Dagster in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from renku_metrics.core.events import KNOWN_ACTIONS
from renku_metrics.core.validation import YamlError, load_yaml, not_blank, one_line

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
STATUSES = ("active", "experimental", "deprecated")
GENERATIONS = ("renku1", "renku2")


class CatalogError(ValueError):
    """An invalid catalog entry; the message names the file, entry and field."""


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


_Text = Annotated[str, AfterValidator(not_blank)]


class MetricEntry(BaseModel):
    """One item of ``metrics`` as written in the catalog (see the comment at its top)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
    title: _Text
    description: _Text
    actions: Annotated[list[Literal[KNOWN_ACTIONS]], Field(min_length=1)]
    owner: _Text
    status: Literal[STATUSES]
    sources: Annotated[dict[Literal[GENERATIONS], _Text], Field(min_length=1)]
    known_gaps: Annotated[list[_Text], Field(min_length=1)]


# How a bad value of each field is reported (after "<file>: metric '<id>': ").
_METRIC_MESSAGES = {
    "id": "field 'id' must match [a-z][a-z0-9_]*, got {got}",
    "title": "field 'title' must be non-empty text, got {got}",
    "description": "field 'description' must be non-empty text, got {got}",
    "owner": "field 'owner' must be non-empty text, got {got}",
    "actions": f"field 'actions' must be a non-empty list of {KNOWN_ACTIONS}",
    "actions[]": f"field 'actions' has unknown action {{got}} (known: {', '.join(KNOWN_ACTIONS)})",
    "status": f"field 'status' must be one of {STATUSES}, got {{got}}",
    "sources": f"field 'sources' must map {GENERATIONS} to text",
    "sources[]": f"field 'sources' has bad entry {{item!r}} (allowed keys {GENERATIONS}, text values)",
    "known_gaps": "field 'known_gaps' must be a non-empty list of text (say what the metric cannot see)",
}
_FIELD_WORDING = {"unknown": "unknown field {key!r} (allowed: {allowed})", "missing": "missing field {key!r}"}


def _one_line_text(text: str) -> str:
    return " ".join(text.split())


def parse_catalog(raw: Any, path: str) -> Catalog:
    if not isinstance(raw, dict) or not isinstance(raw.get("metrics"), list) or not raw["metrics"]:
        raise CatalogError(f"{path}: expected a top-level 'metrics' list with at least one entry")
    metrics: list[Metric] = []
    for index, item in enumerate(raw["metrics"]):
        label = item.get("id") if isinstance(item, dict) else None
        where = f"{path}: metric {label!r}" if label else f"{path}: metrics[{index}]"
        if not isinstance(item, dict):
            raise CatalogError(f"{where}: expected a mapping, got {item!r}")
        if "targets" in item:
            raise CatalogError(
                f"{where}: field 'targets' is no longer read here: targets live in their own file "
                "(renku_metrics/core/targets.yaml or $RENKU_METRICS_TARGETS, see docs/targets.md)"
            )
        try:
            entry = MetricEntry.model_validate(item)
        except ValidationError as exc:
            raise CatalogError(
                one_line(exc, where, MetricEntry.model_fields, _METRIC_MESSAGES, **_FIELD_WORDING)
            ) from None
        if entry.id in {m.id for m in metrics}:
            raise CatalogError(f"{where}: duplicate id {entry.id!r}")
        metrics.append(
            Metric(
                id=entry.id,
                title=entry.title.strip(),
                description=_one_line_text(entry.description),
                actions=tuple(entry.actions),
                owner=entry.owner.strip(),
                status=entry.status,
                sources={k: _one_line_text(v) for k, v in entry.sources.items()},
                known_gaps=tuple(_one_line_text(g) for g in entry.known_gaps),
            )
        )
    return Catalog(metrics=tuple(metrics), path=path)


def load_catalog(path: str | Path | None = None) -> Catalog:
    path = Path(path) if path is not None else CATALOG_FILE
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"{path}: metric catalog not found") from None
    except YamlError as exc:
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
