"""deployments.yaml: which Renku deployments to measure and how to reach them.

File format (see README "Deployments")::

    deployments:
      - name: renkulab              # [a-z0-9_-], unique; becomes part of asset keys
        start_date: 2023-01-01      # first UTC day of history to extract
        launched_on_start_date: false  # optional: true when nobody used the deployment
                                    # before start_date (its history is then complete
                                    # from day one; otherwise periods need a warm-up)
        excluded_users: [...]       # optional: Keycloak ids or stored user keys left
                                    # out when aggregating (bots, tests, staff)
        sources:
          keycloak: {...}           # one entry per source type the deployment has
          gitlab: {...}

Secrets are named by environment variable (``*_env`` keys), never written here.
Every problem stops loading with one message naming the file, the deployment and
the key. No Dagster in here.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import is_user_key, pseudonymize_user
from renku_metrics.core.sources import SOURCE_MODULES, source_module
from renku_metrics.core.sources.base import SettingsBase

DEFAULT_DEPLOYMENTS_FILE = "deployments.yaml"
DEPLOYMENTS_ENV = "RENKU_METRICS_DEPLOYMENTS"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DEPLOYMENT_KEYS = {"name", "start_date", "sources", "excluded_users", "description", "launched_on_start_date"}
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


class _TextDatesLoader(yaml.SafeLoader):
    """YAML without implicit timestamps: dates stay text, so a bad one (2025-13-01)
    reaches our validation and its message names the deployment and key."""


_TextDatesLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str):
    """Parse YAML with dates kept as text (see _TextDatesLoader)."""
    return yaml.load(text, Loader=_TextDatesLoader)


def deployments_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(DEPLOYMENTS_ENV) or DEFAULT_DEPLOYMENTS_FILE)


def _parse_date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{where}: start_date must be a date YYYY-MM-DD, got {value!r}") from None


def parse_config(
    raw: Any, path: str, env: Mapping[str, str] | None = None, check_secrets: bool = True
) -> MetricsConfig:
    """Validate the parsed YAML document of a deployments file."""
    env = os.environ if env is None else env
    if not isinstance(raw, Mapping) or set(raw) != {"deployments"}:
        keys = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
        raise ConfigError(f"{path}: expected a single top-level key 'deployments', got {keys}")
    items = raw["deployments"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: 'deployments' must be a non-empty list")
    seen: set[str] = set()
    deployments = []
    for index, item in enumerate(items):
        label = item.get("name") if isinstance(item, Mapping) else None
        where = f"{path}: deployment {label!r}" if label else f"{path}: deployments[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {item!r}")
        unknown = sorted(set(item) - _DEPLOYMENT_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_DEPLOYMENT_KEYS))})")
        for key in ("name", "start_date", "sources"):
            if key not in item:
                raise ConfigError(f"{where}: missing required key {key!r}")
        name = item["name"]
        if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED_NAMES:
            raise ConfigError(f"{where}: name must match [a-z][a-z0-9_]* and not be 'all', got {name!r}")
        if name in seen:
            raise ConfigError(f"{where}: duplicate deployment name {name!r}")
        seen.add(name)
        start_date = _parse_date(item["start_date"], where)
        sources_raw = item["sources"]
        if not isinstance(sources_raw, Mapping) or not sources_raw:
            raise ConfigError(f"{where}: 'sources' must be a non-empty mapping of source type -> settings")
        sources: dict[str, SettingsBase] = {}
        for source_type, settings_raw in sources_raw.items():
            swhere = f"{where}: sources.{source_type}"
            if source_type not in SOURCE_MODULES:
                raise ConfigError(f"{swhere}: unknown source type (allowed: {', '.join(sorted(SOURCE_MODULES))})")
            settings = source_module(source_type).Settings.from_mapping(settings_raw, swhere)
            if check_secrets:
                for key, variable in settings.secret_env_vars().items():
                    if not env.get(variable):
                        raise ConfigError(f"{swhere}.{key}: environment variable {variable} is not set")
            sources[source_type] = settings
        excluded = item.get("excluded_users", []) or []
        if not isinstance(excluded, list) or not all(isinstance(u, str) and u for u in excluded):
            raise ConfigError(f"{where}: excluded_users must be a list of user ids")
        description = item.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{where}: description must be text")
        launched = item.get("launched_on_start_date", False)
        if not isinstance(launched, bool):
            raise ConfigError(f"{where}: launched_on_start_date must be true or false, got {launched!r}")
        deployments.append(
            Deployment(
                name=name,
                start_date=start_date,
                sources=sources,
                excluded_users=tuple(excluded),
                description=description,
                launched_on_start_date=launched,
            )
        )
    return MetricsConfig(path=path, deployments=tuple(deployments))


def load_config(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    check_secrets: bool = True,
) -> MetricsConfig:
    """Load and validate a deployments file (default: $RENKU_METRICS_DEPLOYMENTS or ./deployments.yaml)."""
    env = os.environ if env is None else env
    path = Path(path) if path is not None else deployments_path(env)
    if not path.exists():
        raise ConfigError(
            f"{path}: deployments file not found (set {DEPLOYMENTS_ENV} or create {DEFAULT_DEPLOYMENTS_FILE})"
        )
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path), env=env, check_secrets=check_secrets)
