"""deployments.yaml: which Renku deployments to measure and how to reach them.

File format (see docs/operations.md and docs/connecting.md)::

    deployments:
      - name: renkulab              # [a-z][a-z0-9_]*, at most 63 characters, unique;
                                    # becomes part of asset keys
        start_date: 2023-01-01      # first UTC day of history to extract
        launched_on_start_date: false  # optional: true when nobody used the deployment
                                    # before start_date (its history is then complete
                                    # from day one; otherwise periods need a warm-up)
        excluded_users: [...]       # optional: Keycloak ids or stored user keys left
                                    # out when aggregating (bots, tests, staff)
        sources:
          keycloak: {...}           # one entry per source type the deployment has
          gitlab: {...}
        releases: {...}             # optional: where its releases come from and how their
                                    # impact is judged (core/value/releases.py)

Secrets are named by environment variable (``*_env`` keys), never written here,
and read only when a run builds the deployment's sources: a missing secret fails
that deployment's runs, not the loading of the file. The file is validated
against declared pydantic models (``DeploymentsFile``, ``DeploymentEntry`` and
each source's ``Settings``); every problem, including a key given twice, stops
loading with one message naming the file, the deployment and the key. No Dagster
in here.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import is_user_key, pseudonymize_user
from renku_metrics.core.sources import SOURCE_MODULES, source_module
from renku_metrics.core.sources.base import SettingsBase
from renku_metrics.core.sources.groups import GroupsSettings
from renku_metrics.core.validation import YamlError, iso_day, load_yaml, one_line
from renku_metrics.core.value.releases import ReleasesConfig, parse_releases_config

DEFAULT_DEPLOYMENTS_FILE = "deployments.yaml"
DEPLOYMENTS_ENV = "RENKU_METRICS_DEPLOYMENTS"

_RESERVED_NAMES = {"all"}


@dataclass(frozen=True)
class Deployment:
    name: str
    start_date: dt.date
    sources: dict[str, SettingsBase]
    excluded_users: tuple[str, ...] = ()
    description: str = ""
    # True when the deployment had no activity before start_date: a period that starts
    # before it is then not "partly before history", and first-seen users are new.
    launched_on_start_date: bool = False
    # Group membership (docs/groups.md): Keycloak groups, organizations, e-mail domains, user lists.
    groups: GroupsSettings | None = None
    # Where its releases come from and how their impact is judged (core/value/releases.py).
    releases: ReleasesConfig | None = None

    def excluded_user_keys(self) -> list[str]:
        """Exclusions as stored user keys (Keycloak ids are pseudonymized)."""
        return sorted({u if is_user_key(u) else pseudonymize_user(u) for u in self.excluded_users})


@dataclass(frozen=True)
class MetricsConfig:
    path: str
    deployments: tuple[Deployment, ...] = field(default_factory=tuple)

    def deployment(self, name: str) -> Deployment:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.deployments]

    @property
    def earliest_start(self) -> dt.date:
        return min(d.start_date for d in self.deployments)


_DeploymentName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=63)]
_UserId = Annotated[str, StringConstraints(min_length=1)]


class DeploymentEntry(BaseModel):
    """One item of ``deployments:`` as written in the file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: _DeploymentName
    start_date: Annotated[dt.date, BeforeValidator(iso_day)]
    sources: Annotated[dict[str, Any], Field(min_length=1)]
    excluded_users: list[_UserId] | None = None
    description: str = ""
    launched_on_start_date: bool = False
    groups: dict[str, Any] | None = None
    releases: Any = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in _RESERVED_NAMES:
            raise ValueError("reserved")
        return name


class DeploymentsFile(BaseModel):
    """The whole file: one key, a non-empty list of deployments."""

    model_config = ConfigDict(extra="forbid", strict=True)

    deployments: Annotated[list[Any], Field(min_length=1)]


# How a bad value of each deployment key is reported (after "<file>: deployment '<name>': ").
_ENTRY_MESSAGES = {
    "name": "name must match [a-z][a-z0-9_]*, have at most 63 characters and not be 'all', got {got}",
    "start_date": "start_date must be a date YYYY-MM-DD, got {got}",
    "sources": "'sources' must be a non-empty mapping of source type -> settings",
    "excluded_users": "excluded_users must be a list of user ids",
    "description": "description must be text",
    "launched_on_start_date": "launched_on_start_date must be true or false, got {got}",
    "groups": "groups must be a mapping (see docs/groups.md), got {got}",
}


# The deployments.yaml of the source tree this package was installed from (an
# editable install or the container image, which keeps the tree at /app).
BUNDLED_DEPLOYMENTS_FILE = Path(__file__).resolve().parents[2] / DEFAULT_DEPLOYMENTS_FILE


def deployments_path(env: Mapping[str, str] | None = None) -> Path:
    """$RENKU_METRICS_DEPLOYMENTS when set; else ./deployments.yaml when the working
    directory has one; else the source tree's deployments.yaml, wherever the
    process was started."""
    env = os.environ if env is None else env
    if env.get(DEPLOYMENTS_ENV):
        return Path(env[DEPLOYMENTS_ENV])
    local = Path(DEFAULT_DEPLOYMENTS_FILE)
    return local if local.exists() else BUNDLED_DEPLOYMENTS_FILE


def _file(raw: Any, path: str) -> DeploymentsFile:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a single top-level key 'deployments', got {type(raw).__name__}")
    try:
        return DeploymentsFile.model_validate(dict(raw))
    except ValidationError as exc:
        if any(e["type"] in ("extra_forbidden", "missing") for e in exc.errors()):
            raise ConfigError(f"{path}: expected a single top-level key 'deployments', got {sorted(raw)}") from None
        raise ConfigError(f"{path}: 'deployments' must be a non-empty list") from None


def _deployment(item: Any, index: int, path: str) -> Deployment:
    label = item.get("name") if isinstance(item, Mapping) else None
    where = f"{path}: deployment {label!r}" if label else f"{path}: deployments[{index}]"
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {item!r}")
    try:
        entry = DeploymentEntry.model_validate(dict(item))
    except ValidationError as exc:
        raise ConfigError(one_line(exc, where, DeploymentEntry.model_fields, _ENTRY_MESSAGES)) from None
    sources: dict[str, SettingsBase] = {}
    for source_type, settings_raw in entry.sources.items():
        swhere = f"{where}: sources.{source_type}"
        if source_type not in SOURCE_MODULES:
            raise ConfigError(f"{swhere}: unknown source type (allowed: {', '.join(sorted(SOURCE_MODULES))})")
        sources[source_type] = source_module(source_type).Settings.from_mapping(settings_raw, swhere)
    groups = None
    if entry.groups is not None:
        groups = GroupsSettings.from_mapping(entry.groups, where, str(Path(path).resolve().parent))
        if groups.uses_directory and not ({"keycloak", "demo"} & set(sources)):
            raise ConfigError(
                f"{where}: groups: keycloak_groups, organizations and email_domains read the realm of "
                "sources.keycloak, which this deployment does not have"
            )
    releases = None
    if entry.releases is not None:
        releases = parse_releases_config(entry.releases, f"{where}: releases", Path(path).parent)
    return Deployment(
        releases=releases,
        name=entry.name,
        start_date=entry.start_date,
        sources=sources,
        excluded_users=tuple(entry.excluded_users or ()),
        description=entry.description,
        launched_on_start_date=entry.launched_on_start_date,
        groups=groups,
    )


def parse_config(raw: Any, path: str) -> MetricsConfig:
    """Validate the parsed YAML document of a deployments file.

    Secrets are not looked up here: a source reads its ``*_env`` variables when a
    run builds it, so a missing secret fails that deployment's runs only.
    """
    deployments: list[Deployment] = []
    for index, item in enumerate(_file(raw, path).deployments):
        deployment = _deployment(item, index, path)
        if deployment.name in {d.name for d in deployments}:
            raise ConfigError(f"{path}: deployment {deployment.name!r}: duplicate deployment name {deployment.name!r}")
        deployments.append(deployment)
    return MetricsConfig(path=path, deployments=tuple(deployments))


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> MetricsConfig:
    """Load and validate a deployments file (default: see ``deployments_path``)."""
    env = os.environ if env is None else env
    path = Path(path) if path is not None else deployments_path(env)
    if not path.exists():
        raise ConfigError(
            f"{path}: deployments file not found (set {DEPLOYMENTS_ENV} or create {DEFAULT_DEPLOYMENTS_FILE})"
        )
    try:
        raw = load_yaml(path.read_text())
    except YamlError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path))
