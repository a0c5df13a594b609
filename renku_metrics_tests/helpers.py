"""Test helpers: deployments files with hand-built events, and running extracts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import yaml

from renku_metrics.core.config import MetricsConfig, load_config
from renku_metrics.core.extract import extract_day

UTC = dt.timezone.utc
NOW = dt.datetime(2030, 1, 1, tzinfo=UTC)  # far after every hand-built period


def ev(when: str, user: str, action: str, **extra) -> dict:
    """A hand-built record for the fixture source; ``user`` is a Keycloak id."""
    return {"occurred_at": when, "keycloak_user": user, "action": action, **extra}


def write_config(tmp_path: Path, deployments: dict[str, dict]) -> MetricsConfig:
    """deployments: name -> {"start_date", "events": [records], optional "excluded_users", "raw_lines", "fail_on_day"...}."""
    items = []
    for name, spec in deployments.items():
        events_file = tmp_path / f"{name}.jsonl"
        lines = [json.dumps(e) for e in spec.get("events", [])] + list(spec.get("raw_lines", []))
        events_file.write_text("\n".join(lines) + "\n")
        settings = {"events_file": str(events_file)}
        for key in ("fail_on_day", "incomplete_on_day"):
            if key in spec:
                settings[key] = spec[key]
        item = {"name": name, "start_date": spec["start_date"], "sources": {"fixture": settings}}
        for key in ("excluded_users", "launched_on_start_date"):
            if key in spec:
                item[key] = spec[key]
        items.append(item)
    path = tmp_path / "deployments.yaml"
    path.write_text(yaml.safe_dump({"deployments": items}))
    return load_config(path)


def extract_days(storage, config: MetricsConfig, first: str, last: str) -> None:
    """Extract every deployment for the UTC days first..last (inclusive)."""
    day, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    while day <= end:
        for deployment in config.deployments:
            if day >= deployment.start_date:
                extract_day(storage, deployment, day, env={}, now=NOW)
        day += dt.timedelta(days=1)
