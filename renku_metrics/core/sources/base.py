"""The source interface and the strict settings reader every source uses.

A *source* turns one upstream system of one deployment into canonical events
(see ``renku_metrics.core.events``) for one UTC time window. Each source module
(``renku_metrics/core/sources/<type>.py``) defines:

* ``Settings``: a ``SettingsBase`` model (frozen, strict pydantic) of its YAML
  keys. Fields whose name ends in ``_env`` name environment variables holding
  secrets; the YAML never holds a secret itself. ``Settings.from_mapping(mapping,
  where)`` validates one deployment's settings; ``validate(where)`` adds checks
  across fields.
* ``Source``: ``Source(deployment: str, settings: Settings, env: Mapping[str, str])``
  with ``extract(window: TimeWindow) -> SourceResult``. Secrets are read from
  ``env`` when the source is built (at run time), never at import time.

No Dagster in here.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import SourceResult, TimeWindow
from renku_metrics.core.validation import iso_day, not_blank, one_line


class SourceError(RuntimeError):
    """A source failed persistently (upstream unreachable, 4xx/5xx after retries...).

    The message names deployment, source, URL path (never a query string with
    secrets) and status.
    """


class Source(Protocol):
    name: str

    def extract(self, window: TimeWindow) -> SourceResult: ...


class SettingsBase(BaseModel):
    """Base of every source's ``Settings``: a frozen pydantic model read strictly from YAML.

    Fields are declared with plain types (``str``, ``int``, ``float``, ``bool``,
    ``dt.date``, ``tuple[str, ...]``, optional ``| None``); values are not
    coerced (``"5"`` is not an integer), text must not be blank, dates are
    ``YYYY-MM-DD``, lists become tuples, and unknown keys are errors.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _from_yaml(cls, value: Any, info: ValidationInfo) -> Any:
        tp = cls.model_fields[info.field_name].annotation
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
        if dt.date in inner:
            return iso_day(value)
        if isinstance(value, list) and any(typing.get_origin(t) is tuple for t in inner):
            return tuple(value)
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _not_blank(cls, value: Any) -> Any:
        for item in value if isinstance(value, tuple) else (value,):
            not_blank(item)
        return value

    @classmethod
    def from_mapping(cls, mapping: Any, where: str):
        """Validated settings from a YAML mapping; a ConfigError naming ``where`` and the key."""
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{where}: expected a mapping of settings, got {mapping!r}")
        try:
            settings = cls.model_validate(dict(mapping))
        except ValidationError as exc:
            raise ConfigError(one_line(exc, where, cls.model_fields)) from None
        settings.validate(where)
        return settings

    def validate(self, where: str) -> None:  # type: ignore[override]
        """Checks across fields; raise ConfigError naming ``where`` and the key. None by default."""

    def secret_env_vars(self) -> dict[str, str]:
        """{field name: environment variable} for every ``*_env`` field that is set."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name.endswith("_env") and getattr(self, name)
        }


def read_secret(env: Mapping[str, str], variable: str, where: str) -> str:
    """The value of a secret's environment variable, or a ConfigError naming it."""
    value = env.get(variable)
    if not value:
        raise ConfigError(f"{where}: environment variable {variable} is not set")
    return value
