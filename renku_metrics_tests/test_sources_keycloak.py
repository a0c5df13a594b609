"""The Keycloak connector against the Keycloak simulator."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging

import pytest

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import EVENT_COLUMNS, TimeWindow, events_frame, validate_events
from renku_metrics.core.sources import source_module
from renku_metrics.core.sources.base import SourceError
from renku_metrics.core.sources.keycloak import Settings, Source
from renku_metrics_tests.simulators.keycloak_sim import KeycloakSimulator

UTC = dt.timezone.utc
D = dt.date(2024, 5, 14)
START = dt.datetime(2024, 5, 14, tzinfo=UTC)
WINDOW = TimeWindow.for_day(D)
MS = dt.timedelta(milliseconds=1)
SECRET_ENV = "TEST_KC_SECRET"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@pytest.fixture
def keycloak():
    # "now" is two hours after the window: a prompt daily run.
    sim = KeycloakSimulator(now=lambda: START + dt.timedelta(days=1, hours=2))
    with sim:
        yield sim


def make_source(sim: KeycloakSimulator, clock=None, **overrides) -> Source:
    values = dict(
        url=sim.base_url,
        realm=sim.realm,
        client_id=sim.client_id,
        client_secret_env=SECRET_ENV,
        backoff_seconds=0.001,
        max_backoff_seconds=0.005,
    )
    values.update(overrides)
    extra = {"clock": clock} if clock else {}
    return Source("testdep", Settings(**values), {SECRET_ENV: sim.client_secret}, **extra)


def event_requests(sim: KeycloakSimulator):
    return [r for r in sim.requests_to("/events")]


# -- settings --------------------------------------------------------------------


def test_settings_keys_and_defaults():
    settings = source_module("keycloak").Settings.from_mapping(
        {"url": "https://renkulab.io/auth/", "realm": "Renku", "client_id": "metrics", "client_secret_env": "KC"},
        "deployments.yaml: deployment 'x': sources.keycloak",
    )
    assert settings.page_size == 100 and settings.date_margin_days == 1
    assert settings.secret_env_vars() == {"client_secret_env": "KC"}
    with pytest.raises(ConfigError, match=r"sources.keycloak: unknown key 'secret'"):
        Settings.from_mapping(
            {"url": "https://k", "realm": "R", "client_id": "c", "client_secret_env": "K", "secret": "x"},
            "sources.keycloak",
        )
    with pytest.raises(ConfigError, match=r"sources.keycloak.page_size"):
        Settings.from_mapping(
            {"url": "https://k", "realm": "R", "client_id": "c", "client_secret_env": "K", "page_size": 0},
            "sources.keycloak",
        )
    with pytest.raises(ConfigError, match=r"sources.keycloak.url"):
        Settings.from_mapping(
            {"url": "renkulab.io", "realm": "R", "client_id": "c", "client_secret_env": "K"}, "sources.keycloak"
        )


def test_missing_secret_variable_is_a_config_error(keycloak):
    settings = Settings(url=keycloak.base_url, realm="Renku", client_id="c", client_secret_env="NOT_SET_ANYWHERE")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        Source("testdep", settings, {})


# -- the window --------------------------------------------------------------------


def test_window_bounds_to_the_millisecond(keycloak):
    keycloak.add_login(START - MS, "u-before")  # 23:59:59.999 the day before
    keycloak.add_login(START, "u-first")  # 00:00:00.000
    keycloak.add_login(START + dt.timedelta(hours=12), "u-noon", session_id="s-noon")
    keycloak.add_login(START + dt.timedelta(days=1) - MS, "u-last")  # 23:59:59.999
    keycloak.add_login(START + dt.timedelta(days=1), "u-after")  # 00:00:00.000 the next day
    keycloak.add_event(START + dt.timedelta(hours=1), "u-refresh", type="REFRESH_TOKEN")

    result = make_source(keycloak).extract(WINDOW)

    by_user = {e["user_id"]: e for e in result.events}
    assert set(by_user) == {md5("u-first"), md5("u-noon"), md5("u-last")}
    assert by_user[md5("u-first")]["occurred_at"] == START
    assert by_user[md5("u-last")]["occurred_at"] == dt.datetime(2024, 5, 14, 23, 59, 59, 999000, tzinfo=UTC)
    noon = by_user[md5("u-noon")]
    assert set(noon) == set(EVENT_COLUMNS)
    assert noon["action"] == "login" and noon["source"] == "keycloak" and noon["deployment"] == "testdep"
    assert noon["project_id"] is None and noon["project_visibility"] is None
    assert result.complete and result.coverage_note == ""
    assert result.stats["retained_event_before_window"] == "2024-05-13T23:59:59.999+00:00"
    # The events pass the pipeline's own validation unchanged.
    valid, rejected = validate_events(events_frame(result.events), WINDOW, "testdep")
    assert len(valid) == 3 and rejected == []
    # Whole-day parameters widened by a day on both sides, type LOGIN only.
    query = event_requests(keycloak)[0].query
    assert query["type"] == ["LOGIN"] and query["dateFrom"] == ["2024-05-13"] and query["dateTo"] == ["2024-05-16"]


def test_event_ids_are_stable_across_runs(keycloak):
    keycloak.add_login(START - dt.timedelta(hours=3), "u-old")
    keycloak.add_login(START + dt.timedelta(hours=5), "u1", session_id="s1")
    first = make_source(keycloak).extract(WINDOW).events
    second = make_source(keycloak).extract(WINDOW).events
    assert [e["event_id"] for e in first] == [e["event_id"] for e in second]
    assert len(first) == 1 and len(first[0]["event_id"]) == 32


# -- paging ----------------------------------------------------------------------


def test_last_page_exactly_full(keycloak):
    for i in range(10):
        keycloak.add_login(START + dt.timedelta(minutes=i), f"user-{i}")
    keycloak.add_login(START - dt.timedelta(days=3), "ancient")  # found by the coverage probe

    result = make_source(keycloak, page_size=5).extract(WINDOW)

    assert len(result.events) == 10
    pages = [r for r in event_requests(keycloak) if "dateFrom" in r.query]
    assert [(r.query["first"], r.query["max"]) for r in pages] == [(["0"], ["6"]), (["5"], ["6"])]
    assert result.complete  # via the probe: an event three days old is still retained
    probe = [r for r in event_requests(keycloak) if "dateFrom" not in r.query]
    assert len(probe) == 1 and probe[0].query["dateTo"] == ["2024-05-13"] and probe[0].query["max"] == ["1"]


def test_many_pages_and_early_stop_once_older_than_the_window(keycloak):
    for i in range(237):
        keycloak.add_login(START + dt.timedelta(minutes=5 * i), f"user-{i}")
    for i in range(300):  # the day before: only the first of these pages is needed
        keycloak.add_login(START - dt.timedelta(minutes=1 + i), f"yesterday-{i}")

    result = make_source(keycloak, page_size=100).extract(WINDOW)

    assert len(result.events) == 237 and len({e["user_id"] for e in result.events}) == 237
    assert len(event_requests(keycloak)) == 3  # 100 + 100 + (37 new, 63 old): stop there
    assert result.complete


def test_empty_window_with_older_events_is_complete(keycloak):
    keycloak.add_login(START - dt.timedelta(hours=2), "u-old")
    result = make_source(keycloak).extract(WINDOW)
    assert result.events == [] and result.complete


def test_duplicate_records_collapse(keycloak):
    keycloak.add_login(START - dt.timedelta(hours=2), "u-old")
    for _ in range(2):
        keycloak.add_login(START + dt.timedelta(hours=1), "u1", session_id="same-session")
    result = make_source(keycloak).extract(WINDOW)
    assert len(result.events) == 1


# -- tokens --------------------------------------------------------------------------


def test_token_expiring_mid_extract_is_renewed_on_401(keycloak):
    keycloak.add_login(START - dt.timedelta(hours=1), "u-old")
    for i in range(30):
        keycloak.add_login(START + dt.timedelta(minutes=i), f"user-{i}")
    keycloak.expire_tokens_after_requests = 2  # the token dies after every second page

    result = make_source(keycloak, page_size=5).extract(WINDOW)

    assert len(result.events) == 30
    assert keycloak.unauthorized_responses >= 2
    assert keycloak.tokens_issued == result.stats["token_requests"] >= 3


def test_token_renewed_before_expires_in_runs_out(keycloak):
    keycloak.add_login(START - dt.timedelta(hours=1), "u-old")
    for i in range(12):
        keycloak.add_login(START + dt.timedelta(minutes=i), f"user-{i}")
    now = [0.0]

    def clock() -> float:
        now[0] += 300.0  # every look at the clock: 300 s later (tokens last 300 s)
        return now[0]

    result = make_source(keycloak, clock=clock, page_size=4).extract(WINDOW)

    assert len(result.events) == 12
    assert keycloak.unauthorized_responses == 0  # renewed in time, never refused
    # A fresh token for each request: the realm's id lookup, then 4 pages.
    assert keycloak.tokens_issued == len(event_requests(keycloak)) + 1 == 5


def test_wrong_client_secret_fails_without_leaking_it(keycloak, caplog):
    settings = Settings(
        url=keycloak.base_url, realm="Renku", client_id=keycloak.client_id, client_secret_env=SECRET_ENV
    )
    wrong = "definitely-wrong-secret-42"
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SourceError) as info:
            Source("testdep", settings, {SECRET_ENV: wrong}).extract(WINDOW)
    message = str(info.value)
    assert "'testdep'" in message and "'keycloak'" in message
    assert "POST /realms/Renku/protocol/openid-connect/token" in message and "401" in message
    assert wrong not in message and wrong not in caplog.text


def test_persistent_5xx_names_path_and_status_but_no_secret_or_token(keycloak, caplog):
    keycloak.inject("status", times=100, status=503, path_contains="/events")
    source = make_source(keycloak, max_retries=2)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SourceError) as info:
            source.extract(WINDOW)
    message = str(info.value)
    assert "GET /admin/realms/Renku/events failed: HTTP 503" in message
    assert "dateFrom" not in message and "?" not in message
    tokens = list(keycloak.tokens)
    assert tokens and all(t not in message and t not in caplog.text for t in tokens)
    assert keycloak.client_secret not in message and keycloak.client_secret not in caplog.text


def test_5xx_bursts_and_rate_limit_are_survived(keycloak):
    keycloak.add_login(START - dt.timedelta(hours=1), "u-old")
    keycloak.add_login(START + dt.timedelta(hours=1), "u1")
    keycloak.inject("status", times=2, status=502, path_contains="/events")
    keycloak.inject("rate_limit", times=1, retry_after=0, path_contains="/events")
    keycloak.inject("truncate", times=1, path_contains="/token")
    result = make_source(keycloak).extract(WINDOW)
    assert len(result.events) == 1
    assert result.stats["http_retries"] == 4 and result.stats["http_rate_limited"] == 1


def test_missing_view_events_role_is_reported(keycloak):
    keycloak.roles = ("view-users", "view-realm")
    with pytest.raises(SourceError, match=r"events failed: HTTP 403.*permission"):
        make_source(keycloak).extract(WINDOW)


def test_auth_path_prefix_and_wrong_realm():
    with KeycloakSimulator(base_path="/auth", now=lambda: START + dt.timedelta(days=1)) as sim:
        sim.add_login(START - dt.timedelta(hours=1), "u-old")
        sim.add_login(START + dt.timedelta(hours=1), "u1")
        assert len(make_source(sim).extract(WINDOW).events) == 1
        with pytest.raises(
            SourceError, match=r"POST /auth/realms/renku/protocol/openid-connect/token failed: HTTP 404"
        ):
            make_source(sim, realm="renku").extract(WINDOW)


# -- coverage ------------------------------------------------------------------------


def test_coverage_incomplete_when_the_window_has_expired(keycloak):
    # A run two and a half days late against Renku's one-day expiration.
    keycloak.events_expiration_seconds = 86400
    keycloak.now = lambda: START + dt.timedelta(days=2, hours=12)
    keycloak.add_login(START + dt.timedelta(hours=10), "u-expired")
    keycloak.add_login(START + dt.timedelta(days=1, hours=13), "u-retained")

    result = make_source(keycloak).extract(WINDOW)

    assert result.events == []
    assert result.complete is False
    assert result.stats["oldest_retained_event"] == "2024-05-15T13:00:00.000+00:00"
    assert "eventsExpiration" in result.coverage_note and "2024-05-14T00:00:00+00:00" in result.coverage_note


def test_coverage_incomplete_when_part_of_the_window_has_expired(keycloak):
    keycloak.events_expiration_seconds = 86400
    keycloak.now = lambda: START + dt.timedelta(days=1, hours=12)  # cut-off: noon of the window day
    keycloak.add_login(START + dt.timedelta(hours=8), "u-morning")
    keycloak.add_login(START + dt.timedelta(hours=15), "u-afternoon")

    result = make_source(keycloak).extract(WINDOW)

    assert [e["user_id"] for e in result.events] == [md5("u-afternoon")]
    assert result.complete is False
    assert result.stats["oldest_retained_event"] == "2024-05-14T15:00:00.000+00:00"


def test_one_day_expiration_never_covers_a_whole_finished_day(keycloak):
    # Even a prompt run, 30 minutes after the day ended, has lost the day's first
    # 30 minutes: with Renku's default expiration no finished day is complete.
    keycloak.events_expiration_seconds = 86400
    keycloak.now = lambda: START + dt.timedelta(days=1, minutes=30)
    keycloak.add_login(START - dt.timedelta(minutes=10), "u-late-yesterday")  # expired
    keycloak.add_login(START + dt.timedelta(minutes=10), "u-early")  # expired: the cut-off is 00:30
    keycloak.add_login(START + dt.timedelta(minutes=40), "u-just-retained")
    keycloak.add_login(START + dt.timedelta(hours=20), "u-evening")
    result = make_source(keycloak).extract(WINDOW)
    assert {e["user_id"] for e in result.events} == {md5("u-just-retained"), md5("u-evening")}
    assert result.complete is False
    assert result.stats["oldest_retained_event"] == "2024-05-14T00:40:00.000+00:00"


def test_longer_expiration_makes_a_late_run_complete(keycloak):
    keycloak.events_expiration_seconds = 30 * 86400
    keycloak.now = lambda: START + dt.timedelta(days=5)
    keycloak.add_login(START - dt.timedelta(days=4), "u-older")
    keycloak.add_login(START + dt.timedelta(minutes=10), "u-early")
    result = make_source(keycloak).extract(WINDOW)
    assert [e["user_id"] for e in result.events] == [md5("u-early")] and result.complete


def test_no_events_at_all_is_incomplete(keycloak):
    result = make_source(keycloak).extract(WINDOW)
    assert result.events == [] and result.complete is False
    assert result.stats["oldest_retained_event"] == "none"


# -- privacy ---------------------------------------------------------------------------


def test_malformed_records_are_rejected_without_personal_data(keycloak):
    keycloak.add_login(START - dt.timedelta(hours=1), "u-old")
    keycloak.add_event(START + dt.timedelta(hours=2), None, ip_address="203.0.113.9", username="mallory@example.org")
    keycloak.add_event(START + dt.timedelta(hours=3), "u-no-time", drop=("time",), ip_address="203.0.113.10")
    keycloak.add_login(START + dt.timedelta(hours=4), "u-good", ip_address="203.0.113.11", username="good@example.org")

    result = make_source(keycloak).extract(WINDOW)

    assert [e["user_id"] for e in result.events] == [md5("u-good")]
    assert sorted(r.reason for r in result.rejected) == ["missing or non-integer time", "missing userId"]
    dumped = json.dumps([dataclasses.asdict(r) for r in result.rejected]) + json.dumps(result.events, default=str)
    dumped += json.dumps(result.stats)
    for personal in ("203.0.113", "mallory", "good@example.org", "u-no-time", "username", "ipAddress"):
        assert personal not in dumped
    no_time = next(r for r in result.rejected if r.reason.startswith("missing or"))
    assert no_time.record["user_key"] == md5("u-no-time")


# -- realm and time zone -------------------------------------------------------------


def test_records_of_another_realm_are_left_out_and_counted(keycloak):
    keycloak.add_login(START - dt.timedelta(hours=2), "u-before")  # proves retention
    keycloak.add_login(START + dt.timedelta(hours=1), "u1")
    keycloak.add_login(START + dt.timedelta(hours=2), "u2")
    for hour in (3, 4, 5):
        keycloak.add_login(START + dt.timedelta(hours=hour), f"stranger{hour}", realm_id="0c7e-other-realm")
    result = make_source(keycloak).extract(WINDOW)
    assert sorted(e["user_id"] for e in result.events) == sorted([md5("u1"), md5("u2")])
    assert result.stats["other_realm_records"] == 3 and result.stats["logins"] == 2
    assert result.complete
    # The realm's id was read once, from the realm itself (not its name).
    assert len(keycloak.requests_to("/admin/realms/Renku")) - len(event_requests(keycloak)) == 1


def test_a_configured_realm_id_needs_no_lookup_and_a_missing_view_realm_is_named(keycloak):
    keycloak.add_login(START + dt.timedelta(hours=1), "u1", realm_id="renku-internal-id")
    keycloak.add_login(START - dt.timedelta(hours=1), "u0", realm_id="renku-internal-id")
    keycloak.roles = ("view-events", "view-users")  # no view-realm: the realm answers its name only
    with pytest.raises(SourceError, match=r"GET /admin/realms/Renku failed: .*no id .*view-realm.*realm_id"):
        make_source(keycloak).extract(WINDOW)
    result = make_source(keycloak, realm_id="renku-internal-id").extract(WINDOW)
    assert [e["user_id"] for e in result.events] == [md5("u1")] and result.stats["other_realm_records"] == 0


def test_a_date_margin_that_cannot_cover_a_servers_time_zone_is_refused():
    with pytest.raises(ConfigError, match=r"x.date_margin_days: must be between 1 and 7, got 0 .*14 hours"):
        Settings(
            url="https://kc.example.org", realm="Renku", client_id="c", client_secret_env="S", date_margin_days=0
        ).validate("x")
    from renku_metrics.core.sources.gitlab import Settings as GitLabSettings

    with pytest.raises(ConfigError, match=r"y.date_margin_days: must be between 1 and 7, got 0 .*14 hours"):
        GitLabSettings(url="https://gitlab.example.org", token_env="T", date_margin_days=0).validate("y")


@pytest.mark.parametrize("offset_hours", [13.5, -12])
def test_the_default_margin_reads_every_login_of_a_server_far_off_utc(offset_hours):
    """dateFrom/dateTo are the server's local days: the default margin (1) still covers the UTC day."""
    server = KeycloakSimulator(
        now=lambda: START + dt.timedelta(days=1, hours=2), utc_offset_minutes=int(offset_hours * 60)
    )
    with server:
        server.add_login(START - dt.timedelta(hours=3), "u-before")
        hours = (0.5, 4, 9, 13, 18, 23.5)
        for n, hour in enumerate(hours):
            server.add_login(START + dt.timedelta(hours=hour), f"u{n}")
        result = make_source(server).extract(WINDOW)
    assert sorted(e["user_id"] for e in result.events) == sorted(md5(f"u{n}") for n in range(len(hours)))
    assert result.complete
