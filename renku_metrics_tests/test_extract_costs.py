"""What a day's extraction cost each upstream: requests and seconds in the day's manifest."""

from __future__ import annotations

import datetime as dt

import yaml

from renku_metrics.core.config import load_config
from renku_metrics.core.extract import extract_day
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.storage import LocalStorage
from renku_metrics_tests.simulators.keycloak_sim import KeycloakSimulator

UTC = dt.timezone.utc
DAY = dt.date(2024, 5, 14)
START = dt.datetime(2024, 5, 14, tzinfo=UTC)


def test_the_manifest_counts_each_sources_requests_and_time(tmp_path):
    sim = KeycloakSimulator(now=lambda: START + dt.timedelta(days=1, hours=2))
    sim.add_login(START - dt.timedelta(hours=1), "u-old")
    for i in range(7):
        sim.add_login(START + dt.timedelta(hours=i), f"u{i}")
    path = tmp_path / "deployments.yaml"
    with sim:
        source = {
            "url": sim.base_url,
            "realm": sim.realm,
            "client_id": sim.client_id,
            "client_secret_env": "KC_SECRET",
            "page_size": 3,
            "backoff_seconds": 0.001,
            "max_backoff_seconds": 0.002,
        }
        item = {"name": "kc", "start_date": "2024-01-01", "sources": {"keycloak": source}}
        path.write_text(yaml.safe_dump({"deployments": [item]}))
        deployment = load_config(path).deployments[0]
        sim.inject("status", path_contains="/events", status=503)  # one request answered 503, then retried
        storage = LocalStorage(tmp_path / "store")
        extract_day(storage, deployment, DAY, env={"KC_SECRET": sim.client_secret})
        served = len(sim.requests)
    info = Manifest.read(storage, "kc", DAY).sources["keycloak"]
    # The token, the realm, 3 pages of 3 (8 records; each page asks for one more), the 503: 6 requests.
    assert served == 6
    assert info["requests"] == 6 and info["stats"]["http_requests"] == 6
    assert 0 < info["seconds"] < 60

    # The cost benchmark reads it back: 6 requests a day; 10 days at 6 requests an hour take 10 h.
    from renku_metrics_tests.bench_upstream_cost import costs, report

    found = costs(str(storage.root))
    assert found[("kc", "keycloak")]["requests"] == [6.0]
    lines = report(found, {"keycloak": 6 / 3600}, days=10)
    assert lines[2].startswith("| kc | keycloak | 1 | 6.0 | 6 | 6 |")
    assert lines[3].startswith("kc/keycloak: a 10-day backfill makes about 60 requests: 10.0 h at 0.1 requests/min")
