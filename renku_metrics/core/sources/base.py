"""The source interface and the strict settings reader every source uses.

A *source* turns one upstream system of one deployment into canonical events
(see ``renku_metrics.core.events``) for one UTC time window. Each source module
(``renku_metrics/sources/<type>.py``) defines:

* ``Settings``: a frozen dataclass of its YAML keys. Fields whose name ends in
  ``_env`` name environment variables holding secrets; the YAML never holds a
  secret itself. ``Settings.from_mapping(mapping, where)`` is provided by
  ``SettingsBase``.
* ``Source``: ``Source(deployment: str, settings: Settings, env: Mapping[str, str])``
  with ``extract(window: TimeWindow) -> SourceResult``. Secrets are read from
  ``env`` when the source is built (at run time), never at import time.

No Dagster in here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from collections.abc import Mapping
from typing import Any, Protocol

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import SourceResult, TimeWindow


class SourceError(RuntimeError):
    """A source failed persistently (upstream unreachable, 4xx/5xx after retries...).

    The message names deployment, source, URL path (never a query string with
    secrets) and status.
    """


class Source(Protocol):
    name: str

    def extract(self, window: TimeWindow) -> SourceResult: ...


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else str
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
        return value
    if tp is dt.date:
        if isinstance(value, dt.datetime):
            value = value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            raise ConfigError(f"{where}: expected a date YYYY-MM-DD, got {value!r}") from None
    raise TypeError(f"unsupported settings type {_type_name(tp)} at {where}")


class SettingsBase:
    """Mixin for source settings dataclasses: strict reading from YAML mappings."""

    @classmethod
    def from_mapping(cls, mapping: Any, where: str):
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{where}: expected a mapping of settings, got {mapping!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(mapping) - set(fields))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(fields))})")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for name, f in fields.items():
            if name in mapping:
                values[name] = _coerce(mapping[name], hints[name], f"{where}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {name!r}")
        settings = cls(**values)
        settings.validate(where)
        return settings

    def validate(self, where: str) -> None:
        """Checks across fields; raise ConfigError naming ``where`` and the key. None by default."""

    def secret_env_vars(self) -> dict[str, str]:
        """{field name: environment variable} for every ``*_env`` field that is set."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.name.endswith("_env") and getattr(self, f.name)
        }


def read_secret(env: Mapping[str, str], variable: str, where: str) -> str:
    """The value of a secret's environment variable, or a ConfigError naming it."""
    value = env.get(variable)
    if not value:
        raise ConfigError(f"{where}: environment variable {variable} is not set")
    return value
