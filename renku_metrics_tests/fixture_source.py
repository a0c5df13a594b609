"""A test source that replays hand-built records from a JSON-lines file.

Each line is a record with keys ``occurred_at`` (ISO 8601), ``keycloak_user``
(pseudonymized like a real source) or ``user_id`` (stored as given), ``action``,
optional ``project_id`` / ``project_visibility`` / ``id``. Lines that are not
valid JSON become rejected records, as a real connector's malformed input would.
Registered under the source type ``fixture`` by the ``fixture_source`` fixture.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from renku_metrics.core.events import RejectedRecord, SourceResult, TimeWindow, make_event_id, pseudonymize_user
from renku_metrics.core.sources.base import SettingsBase, SourceError

NAME = "fixture"


class Settings(SettingsBase):
    events_file: str
    fail_on_day: str = ""  # an ISO day on which extraction fails, like an unreachable upstream
    incomplete_on_day: str = ""  # an ISO day the source reports as not fully readable


class Source:
    name = NAME

    def __init__(self, deployment: str, settings: Settings, env=None) -> None:
        self.deployment = deployment
        self.settings = settings

    def extract(self, window: TimeWindow) -> SourceResult:
        day = window.start.date().isoformat()
        if self.settings.fail_on_day == day:
            raise SourceError(f"deployment {self.deployment!r}, source 'fixture': upstream unreachable on {day}")
        result = SourceResult(source=NAME)
        for number, line in enumerate(Path(self.settings.events_file).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                result.rejected.append(RejectedRecord(NAME, f"line {number}: invalid JSON: {exc.msg}", line[:200]))
                continue
            when = dt.datetime.fromisoformat(rec["occurred_at"].replace("Z", "+00:00"))
            if not window.contains(when):
                continue
            user = rec.get("user_id") or pseudonymize_user(rec["keycloak_user"])
            result.events.append(
                {
                    "event_id": make_event_id(self.deployment, NAME, rec.get("id", number)),
                    "deployment": self.deployment,
                    "occurred_at": when,
                    "user_id": user,
                    "action": rec["action"],
                    "project_id": rec.get("project_id"),
                    "project_visibility": rec.get("project_visibility"),
                    "source": NAME,
                }
            )
        if self.settings.incomplete_on_day == day:
            result.complete = False
            result.coverage_note = "events before 12:00 already expired"
        return result
