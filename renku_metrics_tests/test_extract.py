"""Extracting deployment-days: what is stored, what is refused, and how failures read."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from renku_metrics.core.extract import extract_day
from renku_metrics.core.layout import rejected_key
from renku_metrics.core.sources.base import SourceError
from renku_metrics.core.storage import LocalStorage

from .helpers import NOW, ev, write_config


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "root")


def test_personal_data_is_redacted_in_rejected_records(tmp_path, storage, fixture_source):
    config = write_config(
        tmp_path,
        {
            "alpha": {
                "start_date": "2025-03-03",
                "events": [
                    ev("2025-03-03T10:00:00Z", "u1", "commit", project_id="jane.doe@example.org", id="a"),
                    ev("2025-03-03T11:00:00Z", "u1", "commit", project_id="10.20.30.40", id="b"),
                    ev("2025-03-03T12:00:00Z", "u1", "commit", project_id="42", id="c"),
                ],
            }
        },
    )
    result = extract_day(storage, config.deployments[0], dt.date(2025, 3, 3), env={}, now=NOW)

    assert result.row_count == 1 and result.rejected_count == 2
    text = storage.read_bytes(rejected_key("alpha", dt.date(2025, 3, 3))).decode()
    assert "jane.doe" not in text and "example.org" not in text and "10.20.30.40" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["reason"] for line in lines] == ["personal data in project_id"] * 2
    digest = hashlib.sha256(b"jane.doe@example.org").hexdigest()[:16]
    assert lines[0]["record"]["project_id"] == f"redacted:sha256:{digest}"
    assert lines[0]["record"]["action"] == "commit"  # the rest of the record stays inspectable


def test_an_upstream_failure_names_deployment_source_and_day(tmp_path, storage, fixture_source):
    config = write_config(tmp_path, {"alpha": {"start_date": "2025-03-03", "fail_on_day": "2025-03-04"}})
    with pytest.raises(SourceError, match=r"deployment 'alpha', source 'fixture'.*\(extracting day 2025-03-04\)"):
        extract_day(storage, config.deployments[0], dt.date(2025, 3, 4), env={}, now=NOW)
