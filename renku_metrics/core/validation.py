"""Reading the YAML configuration files and validating them against declared models.

Every file (deployments.yaml, the metric catalog) is parsed by ``load_yaml`` and
checked by pydantic models declared next to the code that uses them; a failure
becomes one line naming the file, the entry and the key (``one_line``).
No Dagster in here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import PydanticCustomError


class YamlError(ValueError):
    """Not valid YAML, or a key given twice; the message (one line) says where."""


class _StrictLoader(yaml.SafeLoader):
    """YAML without implicit timestamps, and without duplicate keys.

    Dates stay text, so a bad one (2025-13-01) reaches validation and its message
    names the entry and key. A key given twice is an error rather than the
    last value silently winning.
    """

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise YamlError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """Parse YAML with dates kept as text and duplicate keys refused.

    Raises ``YamlError`` with a one-line message (line, column, problem).
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise YamlError(f"{where}{problem}") from None
    except yaml.YAMLError as exc:
        raise YamlError(" ".join(str(exc).split())) from None


def iso_day(value: Any) -> Any:
    """Before-validator for dates: ISO text (YAML dates stay text) becomes a date."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("date_parsing", "expected a date YYYY-MM-DD") from None
    return value


def not_blank(value: Any) -> Any:
    """After-validator for text: refuse whitespace-only strings."""
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("string_too_short", "expected a non-empty string")
    return value


# What a value of the wrong type was expected to be, by pydantic error type.
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a number",
    "string_type": "a non-empty string",
    "string_too_short": "a non-empty string",
    "date_type": "a date YYYY-MM-DD",
    "date_parsing": "a date YYYY-MM-DD",
    "date_from_datetime_inexact": "a date YYYY-MM-DD",
    "list_type": "a list",
    "tuple_type": "a list",
    "too_short": "a non-empty list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _path(loc: Iterable[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":
            text += f".{part}" if text else str(part)
    return text


def one_line(
    exc: ValidationError,
    where: str,
    allowed: Iterable[str],
    messages: Mapping[str, str | Callable[[dict], str]] | None = None,
    unknown: str = "unknown key {key!r} (allowed: {allowed})",
    missing: str = "missing required key {key!r}",
) -> str:
    """The first problem of a validation error as one line naming ``where`` and the key.

    Unknown keys come first, then missing ones, then the rest in declaration order.
    ``messages`` words the problem of one field (``"name"``) or of its items and
    keys (``"name[]"``): a template with ``{got}`` (the offending value) and
    ``{item}`` (the item's key), or a function of the pydantic error. Other
    fields get ``<where>.<key>: expected <type>, got <value>``.
    """
    errors = exc.errors()
    rank = {"extra_forbidden": 0, "missing": 1}
    errors = sorted(
        enumerate(errors),
        key=lambda pair: (
            rank.get(pair[1]["type"], 2),
            str(pair[1]["loc"]) if pair[1]["type"] == "extra_forbidden" else "",
            pair[0],
        ),
    )
    error = errors[0][1]
    loc = tuple(error["loc"])
    key = loc[0] if loc else ""
    if error["type"] == "extra_forbidden":
        return f"{where}: " + unknown.format(key=key, allowed=", ".join(sorted(allowed)))
    if error["type"] == "missing" and len(loc) == 1:
        return f"{where}: " + missing.format(key=key)
    messages = messages or {}
    got = repr(error.get("input"))
    template = messages.get(f"{key}[]") if len(loc) > 1 else None
    template = template or messages.get(key)
    if template is not None:
        if callable(template):
            return f"{where}: {template(error)}"
        item = loc[1] if len(loc) > 1 else ""
        return f"{where}: " + template.format(got=got, item=item)
    expected = _EXPECTED.get(error["type"])
    problem = f"expected {expected}" if expected else " ".join(error["msg"].split())
    return f"{where}.{_path(loc)}: {problem}, got {got}" if loc else f"{where}: {problem}, got {got}"
