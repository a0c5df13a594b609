"""Releases as data: which version went live where and when, and what it was meant to change.

Configured per deployment in deployments.yaml under ``releases:``::

    releases:
      github:                      # GitHub releases API (core/sources/releases.py)
        repo: SwissDataScienceCenter/renku   # default
        token_env: GITHUB_TOKEN    # optional: 5,000 requests an hour instead of 60
        tag_pattern: '^\\d+\\.\\d+\\.0$'       # default: minor releases
      gitlab: {url: https://gitlab.example.org, project: group/app, token_env: GITLAB_TOKEN}
      file: releases.yaml          # a YAML list of releases (relative to deployments.yaml)
      impact: {weeks_before: 4, weeks_after: 4, skip_release_week: true,
               min_weeks: 3, min_active_users: 20, alpha: 0.05}
      calendar: {lectures: ["02-17..05-31", "09-15..12-20"], exams: [...]}

Any of ``github``, ``gitlab`` and ``file`` may be given (at least one). The YAML
list (``releases:`` in that file) names releases, where they apply and what they
were meant to do::

    releases:
      - name: "2.5.0"              # matches a forge release by tag, or stands alone
        date: 2025-03-12           # needed when no forge lists the release
        deployments: [renkulab]    # default: every deployment that reads this file
        sentence: New session launcher
        expected_effect: {metric: start_session, measure: pct, direction: up, size: 5}
        go_live: {renkulab: 2025-03-17}   # per deployment: overrides every other date

``weeks_ago: N`` may stand for ``date``: the Wednesday of the ISO week N weeks
before the current one (the demo's releases move with the clock this way).

The result is the ``releases`` table (contract: release, deployment, date,
published_at, source, url, description, expected_metric, expected_measure,
expected_direction, expected_size). Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.periods import weeks_ago_date
from renku_metrics.core.sources.base import SettingsBase
from renku_metrics.core.sources.releases import (
    ForgeRelease,
    GitHubReleases,
    GitHubSettings,
    GitLabReleases,
    GitLabSettings,
)
from renku_metrics.core.validation import YamlError, iso_day, load_yaml, one_line

RELEASE_COLUMNS = [
    "release",
    "deployment",
    "date",
    "published_at",
    "source",
    "url",
    "description",
    "expected_metric",
    "expected_measure",
    "expected_direction",
    "expected_size",
]
MEASURES = ("pct", "users")


class ImpactSettings(SettingsBase):
    """How a release's before/after comparison is made (see core/value/impact.py)."""

    weeks_before: int = 4
    weeks_after: int = 4
    skip_release_week: bool = True
    min_weeks: int = 3  # complete weeks needed on each side
    min_active_users: int = 20  # mean weekly active users needed on each side
    alpha: float = 0.05  # false discovery rate across a release's metrics

    def validate(self, where: str) -> None:
        for key in ("weeks_before", "weeks_after", "min_weeks"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        if self.min_weeks > min(self.weeks_before, self.weeks_after):
            raise ConfigError(f"{where}.min_weeks: must not exceed weeks_before and weeks_after")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"{where}.alpha: must be between 0 and 1, got {self.alpha}")


_RANGE = re.compile(r"^(\d{2})-(\d{2})\.\.(\d{2})-(\d{2})$")


def _month_day(month: str, day: str, where: str, text: str) -> tuple[int, int]:
    try:
        dt.date(2024, int(month), int(day))  # a leap year: 02-29 is a valid bound
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a range MM-DD..MM-DD") from None
    return int(month), int(day)


class CalendarSettings(SettingsBase):
    """The academic year of a deployment's users: lecture and exam periods (MM-DD..MM-DD,
    a range may run over New Year); every other week is a break (Christmas, summer).
    The default follows Swiss universities (ETH Zurich, University of Zurich, EPFL)."""

    lectures: tuple[str, ...] = ("02-17..05-31", "09-15..12-20")
    exams: tuple[str, ...] = ("01-07..02-14", "06-01..07-05", "08-04..09-06")

    def validate(self, where: str) -> None:
        for key in ("lectures", "exams"):
            for text in getattr(self, key):
                match = _RANGE.match(text)
                if not match:
                    raise ConfigError(f"{where}.{key}: {text!r} is not a range MM-DD..MM-DD")
                _month_day(*match.groups()[:2], f"{where}.{key}", text)
                _month_day(*match.groups()[2:], f"{where}.{key}", text)

    def term(self, week_start: dt.date) -> str:
        """lecture, exams or break, for the ISO week starting on ``week_start`` (judged by its Thursday)."""
        day = week_start + dt.timedelta(days=3)
        md = (day.month, day.day)
        for term, ranges in (("lecture", self.lectures), ("exams", self.exams)):
            for text in ranges:
                a, b, c, d = (int(x) for x in _RANGE.match(text).groups())
                lo, hi = (a, b), (c, d)
                inside = lo <= md <= hi if lo <= hi else (md >= lo or md <= hi)
                if inside:
                    return term
        return "break"


@dataclass(frozen=True)
class ReleasesConfig:
    """One deployment's ``releases:`` settings."""

    github: GitHubSettings | None = None
    gitlab: GitLabSettings | None = None
    file: Path | None = None
    impact: ImpactSettings = field(default_factory=ImpactSettings)
    calendar: CalendarSettings = field(default_factory=CalendarSettings)


_RELEASE_KEYS = ("github", "gitlab", "file", "impact", "calendar")


def parse_releases_config(raw: Any, where: str, base_dir: Path) -> ReleasesConfig:
    """Validate a deployment's ``releases:`` mapping; ConfigError naming ``where`` and the key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with any of {', '.join(_RELEASE_KEYS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(_RELEASE_KEYS), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(_RELEASE_KEYS)})")
    if not any(k in raw for k in ("github", "gitlab", "file")):
        raise ConfigError(f"{where}: name at least one of github, gitlab or file")
    file = raw.get("file")
    if file is not None and (not isinstance(file, str) or not file.strip()):
        raise ConfigError(f"{where}.file: expected a path to a YAML list of releases, got {file!r}")
    return ReleasesConfig(
        github=GitHubSettings.from_mapping(raw["github"], f"{where}.github") if "github" in raw else None,
        gitlab=GitLabSettings.from_mapping(raw["gitlab"], f"{where}.gitlab") if "gitlab" in raw else None,
        file=Path(os.path.abspath(base_dir / file)) if file else None,
        impact=ImpactSettings.from_mapping(raw.get("impact"), f"{where}.impact"),
        calendar=CalendarSettings.from_mapping(raw.get("calendar"), f"{where}.calendar"),
    )


# -- the YAML list --------------------------------------------------------------

_Day = Annotated[dt.date, BeforeValidator(iso_day)]
_Text = Annotated[str, Field(min_length=1)]


class ExpectedEffect(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    metric: _Text
    measure: Literal["pct", "users"] = "pct"
    direction: Literal["up", "down"]
    size: float | None = None


class ReleaseEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: _Text
    date: _Day | None = None
    weeks_ago: Annotated[int, Field(ge=0)] | None = None
    deployments: list[_Text] | None = None
    sentence: str | None = None
    url: str | None = None
    expected_effect: ExpectedEffect | None = None
    go_live: dict[str, _Day] | None = None


def load_release_list(path: Path) -> list[ReleaseEntry]:
    """Parse and validate a YAML list of releases; ConfigError naming the file, entry and key."""
    if not path.exists():
        raise ConfigError(f"{path}: release list not found")
    try:
        raw = load_yaml(path.read_text())
    except YamlError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping) or set(raw) != {"releases"} or not isinstance(raw["releases"], list):
        raise ConfigError(f"{path}: expected a single top-level key 'releases' holding a list")
    entries = []
    for index, item in enumerate(raw["releases"]):
        label = item.get("name") if isinstance(item, Mapping) else None
        where = f"{path}: release {label!r}" if label else f"{path}: releases[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {item!r}")
        item = dict(item)
        if isinstance(item.get("expected_effect"), Mapping):
            try:
                item["expected_effect"] = ExpectedEffect.model_validate(dict(item["expected_effect"]))
            except ValidationError as exc:
                raise ConfigError(one_line(exc, f"{where}: expected_effect", ExpectedEffect.model_fields)) from None
        try:
            entry = ReleaseEntry.model_validate(item)
        except ValidationError as exc:
            raise ConfigError(one_line(exc, where, ReleaseEntry.model_fields)) from None
        if entry.date is not None and entry.weeks_ago is not None:
            raise ConfigError(f"{where}: give date or weeks_ago, not both")
        if entry.name in {e.name for e in entries}:
            raise ConfigError(f"{where}: release {entry.name!r} listed twice")
        entries.append(entry)
    return entries


# -- the table ------------------------------------------------------------------


def _row(name: str, deployment: str, date: dt.date, **rest: Any) -> dict:
    row = dict.fromkeys(RELEASE_COLUMNS)
    row.update(release=name, deployment=deployment, date=date, **rest)
    return row


def build_releases(
    deployment: str,
    config: ReleasesConfig,
    forge: list[ForgeRelease],
    entries: list[ReleaseEntry],
    today: dt.date,
) -> list[dict]:
    """The rows of one deployment: forge releases, enriched and re-dated by the YAML list,
    plus the list's releases that no forge knows. Raises ConfigError for a listed release
    that has no date at all."""
    rows: dict[str, dict] = {}
    for r in sorted(forge, key=lambda r: r.published_at):
        if r.tag in rows:
            continue
        description = r.name if r.name and r.name != r.tag else None
        rows[r.tag] = _row(
            r.tag,
            deployment,
            r.published_at.date(),
            published_at=r.published_at,
            source=r.source,
            url=r.url,
            description=description,
        )
    where = str(config.file) if config.file else "release list"
    for entry in entries:
        if entry.deployments is not None and deployment not in entry.deployments:
            continue
        date = (entry.go_live or {}).get(deployment) or entry.date
        if date is None and entry.weeks_ago is not None:
            date = weeks_ago_date(entry.weeks_ago, today)
        row = rows.get(entry.name)
        if row is None:
            if date is None:
                raise ConfigError(
                    f"{where}: release {entry.name!r}: no date for deployment {deployment!r} "
                    "(give date, weeks_ago or go_live, or list it on the configured forge)"
                )
            row = rows[entry.name] = _row(entry.name, deployment, date, source="yaml")
        elif date is not None:
            row["date"] = date
        if entry.sentence:
            row["description"] = entry.sentence
        if entry.url:
            row["url"] = entry.url
        if entry.expected_effect is not None:
            effect = entry.expected_effect
            row.update(
                expected_metric=effect.metric,
                expected_measure=effect.measure,
                expected_direction=effect.direction,
                expected_size=effect.size,
            )
    return sorted(rows.values(), key=lambda r: (r["date"], r["release"]))


def releases_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as the stored table, with the contract's column types."""
    frame = pd.DataFrame(rows, columns=RELEASE_COLUMNS)
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    frame["published_at"] = pd.to_datetime(frame["published_at"], utc=True)
    frame["expected_size"] = frame["expected_size"].astype("float64")
    for col in ("release", "deployment", "source", "url", "description", "expected_metric"):
        frame[col] = frame[col].astype("object")
    return frame.sort_values(["deployment", "date", "release"], kind="stable").reset_index(drop=True)


def collect_releases(
    deployments: Mapping[str, ReleasesConfig],
    env: Mapping[str, str],
    today: dt.date,
    sleep: Callable[[float], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Every configured deployment's releases as one table, and per deployment the
    number of releases each source gave. A failing source raises (nothing is written)."""
    rows, counts = [], {}
    lists: dict[Path, list[ReleaseEntry]] = {}
    extra = {"sleep": sleep} if sleep else {}
    for deployment, config in deployments.items():
        forge: list[ForgeRelease] = []
        if config.github is not None:
            forge += GitHubReleases(deployment, config.github, env, **extra).fetch()
        if config.gitlab is not None:
            forge += GitLabReleases(deployment, config.gitlab, env, **extra).fetch()
        entries: list[ReleaseEntry] = []
        if config.file is not None:
            if config.file not in lists:
                lists[config.file] = load_release_list(config.file)
            entries = lists[config.file]
        got = build_releases(deployment, config, forge, entries, today)
        counts[deployment] = {
            "github": sum(r.source == "github" for r in forge),
            "gitlab": sum(r.source == "gitlab" for r in forge),
            "listed": sum(1 for e in entries if e.deployments is None or deployment in e.deployments),
            "releases": len(got),
        }
        rows += got
    return releases_frame(rows), counts
