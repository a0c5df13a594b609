"""The shared HTTP client: retries, rate limits, broken bodies, paging, concurrency, secrets."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import pytest
import requests

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.sources.base import SourceError
from renku_metrics.core.sources.http import HeaderAuth, HttpClient, HttpSettings, bounded_map, validate_base_url
from renku_metrics_tests.conftest import free_port
from renku_metrics_tests.simulators import Request, Response, SimulatorServer
from renku_metrics_tests.simulators.gitlab_sim import GitLabSimulator

UTC = dt.timezone.utc
DAY = dt.datetime(2024, 5, 14, tzinfo=UTC)
FAST = HttpSettings(timeout_seconds=5, max_retries=4, backoff_seconds=0.001, max_backoff_seconds=0.005)


@pytest.fixture
def gitlab():
    sim = GitLabSimulator(now=lambda: DAY + dt.timedelta(days=2))
    with sim:
        yield sim


def client_for(sim: GitLabSimulator, settings: HttpSettings = FAST, **kwargs) -> HttpClient:
    return HttpClient(
        sim.url,
        deployment="testdep",
        source="gitlab",
        settings=settings,
        auth=HeaderAuth("PRIVATE-TOKEN", sim.token),
        secrets=[sim.token],
        **kwargs,
    )


def add_pushes(sim: GitLabSimulator, project_id: int, count: int) -> None:
    """``count`` single-commit push events, one a second, on day DAY."""
    sim.add_project(project_id)
    sim.add_user(1, "alice", extern_uid="kc-alice")
    for i in range(count):
        sim.push(project_id, 1, DAY + dt.timedelta(seconds=i), [f"commit {i}"])


EVENTS_PARAMS = {"action": "pushed", "after": "2024-05-13", "before": "2024-05-15", "sort": "asc"}


# -- offset paging -----------------------------------------------------------------


def test_offset_paging_last_page_exactly_full_needs_no_extra_request(gitlab):
    add_pushes(gitlab, 10, 10)
    client = client_for(gitlab)
    pages = list(client.iter_offset_pages("/api/v4/projects/10/events", EVENTS_PARAMS, per_page=5))
    assert [len(p) for p in pages] == [5, 5]
    assert len(gitlab.requests_to("/events")) == 2  # x-next-page was empty on the full last page
    ids = [e["id"] for page in pages for e in page]
    assert len(set(ids)) == 10


def test_offset_paging_empty_listing_is_one_empty_page(gitlab):
    gitlab.add_project(10)
    pages = list(client_for(gitlab).iter_offset_pages("/api/v4/projects/10/events", EVENTS_PARAMS, per_page=5))
    assert pages == [[]]


def test_offset_paging_past_10000_records_without_totals(gitlab):
    add_pushes(gitlab, 10, 10_050)
    # The simulator drops the totals and rel="last" past 10,000 records, as GitLab does.
    raw = requests.get(
        f"{gitlab.url}/api/v4/projects/10/events",
        params={**EVENTS_PARAMS, "per_page": 100},
        headers={"PRIVATE-TOKEN": gitlab.token},
        timeout=10,
    )
    assert "x-total" not in raw.headers and "x-total-pages" not in raw.headers
    assert "last" not in raw.links and raw.headers["x-next-page"] == "2"
    client = client_for(gitlab)
    items = [
        e for page in client.iter_offset_pages("/api/v4/projects/10/events", EVENTS_PARAMS, per_page=100) for e in page
    ]
    assert len(items) == 10_050
    assert len({e["id"] for e in items}) == 10_050


def test_offset_paging_commits_listing_sends_no_totals(gitlab):
    gitlab.add_project(10)
    gitlab.add_commits(10, "master", [f"c{i}" for i in range(7)], DAY)
    client = client_for(gitlab)
    data, response = client.request_json("GET", "/api/v4/projects/10/repository/commits", params={"per_page": 3})
    assert "x-total" not in response.headers and "last" not in response.links
    pages = list(client.iter_offset_pages("/api/v4/projects/10/repository/commits", {}, per_page=3))
    assert [len(p) for p in pages] == [3, 3, 1]


class BareListServer(SimulatorServer):
    """A listing without x-next-page headers (a proxy stripping them), 7 items."""

    def route(self, request: Request) -> Response:
        page, per_page = int(request.arg("page")), int(request.arg("per_page"))
        items = list(range(7))[(page - 1) * per_page : page * per_page]
        return Response.json(items)


def test_offset_paging_without_next_page_header_stops_on_short_page():
    with BareListServer() as sim:
        client = HttpClient(sim.url, deployment="d", source="s", settings=FAST)
        pages = list(client.iter_offset_pages("/items", {}, per_page=3))
    assert pages == [[0, 1, 2], [3, 4, 5], [6]]


def test_offset_paging_404_is_empty_when_allowed(gitlab):
    client = client_for(gitlab)
    assert list(client.iter_offset_pages("/api/v4/projects/999/events", {}, per_page=5, not_found_ok=True)) == []
    with pytest.raises(SourceError, match="404"):
        list(client.iter_offset_pages("/api/v4/projects/999/events", {}, per_page=5))


# -- keyset paging -----------------------------------------------------------------


@pytest.mark.parametrize("projects,pages", [(7, [3, 3, 1]), (6, [3, 3]), (0, [0])])
def test_keyset_paging_follows_link_until_absent(gitlab, projects, pages):
    for pid in range(1, projects + 1):
        gitlab.add_project(pid * 10)
    client = client_for(gitlab)
    params = {"pagination": "keyset", "order_by": "id", "sort": "asc", "per_page": 3}
    got = list(client.iter_keyset_pages("/api/v4/projects", params))
    assert [len(p) for p in got] == pages
    assert [p["id"] for page in got for p in page] == [pid * 10 for pid in range(1, projects + 1)]
    assert len(gitlab.requests_to("/api/v4/projects")) == len(pages)


class ForeignLinkServer(SimulatorServer):
    """Answers page 1 with a Link naming another host; page 2 without a Link."""

    def route(self, request: Request) -> Response:
        if request.arg("cursor") == "2":
            return Response.json([3])
        return Response.json([1, 2], headers={"Link": '<https://elsewhere.invalid:8443/items?cursor=2>; rel="next"'})


def test_keyset_next_link_is_rebased_onto_the_configured_origin():
    with ForeignLinkServer() as sim:
        client = HttpClient(
            sim.url, deployment="d", source="s", settings=FAST, auth=HeaderAuth("PRIVATE-TOKEN", "tok-123456")
        )
        pages = list(client.iter_keyset_pages("/items", None))
        assert pages == [[1, 2], [3]]
        second = sim.requests[-1]
        assert second.path == "/items" and second.query == {"cursor": ["2"]}
        assert second.header("PRIVATE-TOKEN") == "tok-123456"  # and it went to our own server


# -- retries ---------------------------------------------------------------------


def test_5xx_burst_is_retried(gitlab):
    gitlab.add_project(10)
    gitlab.inject("status", times=3, status=503)
    client = client_for(gitlab)
    assert client.get_json("/api/v4/projects", expect=list)[0]["id"] == 10
    assert client.stats["http_retries"] == 3 and client.stats["http_requests"] == 4


def test_persistent_5xx_raises_source_error_without_query_or_token(gitlab, caplog):
    gitlab.inject("status", times=50, status=502)
    client = client_for(gitlab, settings=HttpSettings(max_retries=2, backoff_seconds=0.001, max_backoff_seconds=0.002))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SourceError) as info:
            client.get_json("/api/v4/projects", params={"last_activity_after": "2024-05-14T00:00:00Z"})
    message = str(info.value)
    assert "'testdep'" in message and "'gitlab'" in message
    assert "GET /api/v4/projects failed" in message and "502" in message and "3 attempts" in message
    assert "last_activity_after" not in message and "?" not in message
    assert gitlab.token not in message and gitlab.token not in caplog.text
    assert len(gitlab.requests) == 3


def test_client_errors_are_not_retried(gitlab):
    client = HttpClient(
        gitlab.url, deployment="d", source="gitlab", settings=FAST, auth=HeaderAuth("PRIVATE-TOKEN", "wrong-token-xyz")
    )
    with pytest.raises(SourceError, match=r"401.*credentials rejected") as info:
        client.get_json("/api/v4/projects")
    assert "wrong-token-xyz" not in str(info.value)
    assert len(gitlab.requests) == 1


def test_429_waits_for_retry_after_seconds(gitlab):
    gitlab.add_project(10)
    gitlab.inject("rate_limit", times=1, retry_after=7)
    sleeps: list[float] = []
    client = client_for(gitlab, sleep=sleeps.append)
    assert client.get_json("/api/v4/projects", expect=list)
    assert len(sleeps) == 1 and 7 <= sleeps[0] <= 8  # 7 s plus at most 1 s of jitter
    assert client.stats["http_rate_limited"] == 1


def test_429_without_retry_after_uses_ratelimit_reset(gitlab):
    gitlab.add_project(10)
    gitlab.inject("rate_limit", times=1, retry_after=None, rate_limit_reset_in=30)
    sleeps: list[float] = []
    client = client_for(gitlab, sleep=sleeps.append)
    assert client.get_json("/api/v4/projects", expect=list)
    assert len(sleeps) == 1 and 28 <= sleeps[0] <= 32


def test_429_really_sleeps_then_succeeds(gitlab):
    gitlab.add_project(10)
    gitlab.inject("rate_limit", times=1, retry_after=1)
    client = client_for(gitlab)
    started = time.monotonic()
    assert client.get_json("/api/v4/projects", expect=list)[0]["id"] == 10
    assert time.monotonic() - started >= 1.0


def test_429_asking_for_too_long_a_wait_fails(gitlab):
    gitlab.inject("rate_limit", times=1, retry_after=3600)
    client = client_for(gitlab, settings=HttpSettings(max_rate_limit_wait_seconds=60, backoff_seconds=0.001))
    with pytest.raises(SourceError, match=r"429.*3600 s"):
        client.get_json("/api/v4/projects")


def test_truncated_json_is_retried(gitlab):
    gitlab.add_project(10)
    gitlab.inject("truncate", times=1)
    client = client_for(gitlab)
    assert client.get_json("/api/v4/projects", expect=list)[0]["id"] == 10
    assert client.stats["http_retries"] == 1


def test_persistently_truncated_json_is_a_clear_error(gitlab):
    gitlab.add_project(10)
    gitlab.inject("truncate", times=50)
    with pytest.raises(SourceError, match=r"GET /api/v4/projects failed: HTTP 200 with invalid or truncated JSON"):
        client_for(gitlab).get_json("/api/v4/projects")


def test_body_cut_short_is_retried(gitlab):
    gitlab.add_project(10)
    gitlab.inject("cut", times=2)
    client = client_for(gitlab)
    assert client.get_json("/api/v4/projects", expect=list)[0]["id"] == 10
    assert client.stats["http_retries"] == 2


def test_timeout_is_retried(gitlab):
    gitlab.add_project(10)
    gitlab.inject("delay", times=1, delay=1.0)
    client = client_for(
        gitlab, settings=HttpSettings(timeout_seconds=0.3, backoff_seconds=0.001, max_backoff_seconds=0.002)
    )
    assert client.get_json("/api/v4/projects", expect=list)[0]["id"] == 10
    assert client.stats["http_retries"] == 1


def test_unreachable_server_is_a_source_error():
    client = HttpClient(f"http://127.0.0.1:{free_port()}", deployment="d", source="keycloak", settings=FAST)
    with pytest.raises(
        SourceError, match=r"'d', source 'keycloak': GET /x failed: ConnectionError .* after 5 attempts"
    ):
        client.get_json("/x")


def test_unexpected_json_type_is_an_error(gitlab):
    gitlab.add_user(1, "alice")
    with pytest.raises(SourceError, match="unexpected JSON dict"):
        client_for(gitlab).get_json("/api/v4/users/1", expect=list)


class ExpiringTokenServer(SimulatorServer):
    """401 until the client presents the second token."""

    def route(self, request: Request) -> Response:
        if request.header("Authorization") != "Bearer token-2":
            return Response.json({"error": "HTTP 401 Unauthorized"}, status=401)
        return Response.json({"ok": True})


class CountingAuth:
    renewable = True

    def __init__(self) -> None:
        self.issued = 0

    def headers(self) -> dict[str, str]:
        if self.issued == 0:
            self.issued = 1
        return {"Authorization": f"Bearer token-{self.issued}"}

    def invalidate(self) -> None:
        self.issued += 1


def test_401_renews_credentials_once_then_gives_up():
    with ExpiringTokenServer() as sim:
        auth = CountingAuth()
        client = HttpClient(sim.url, deployment="d", source="s", settings=FAST, auth=auth)
        assert client.get_json("/x") == {"ok": True}
        assert auth.issued == 2 and len(sim.requests) == 2
        auth.issued = 5  # now every token is refused: one renewal, then a clear error
        with pytest.raises(SourceError, match="401") as info:
            client.get_json("/x")
        assert "token-" not in str(info.value)


def test_redact_scrubs_registered_secrets():
    client = HttpClient("http://127.0.0.1:1", deployment="d", source="s", secrets=["supersecret"])
    client.add_secret("another-secret-value")
    assert client.redact("a supersecret and another-secret-value") == "a *** and ***"


def test_base_url_validation():
    assert validate_base_url("https://gitlab.example.org/", "w") == "https://gitlab.example.org"
    for bad in ("gitlab.example.org", "https://user:pw@gitlab.example.org", "https://x.org/?a=1"):
        with pytest.raises(ConfigError):
            validate_base_url(bad, "w")


# -- bounded concurrency ---------------------------------------------------------------


def test_bounded_map_limits_concurrency_and_keeps_order():
    lock = threading.Lock()
    running = {"now": 0, "max": 0}

    def work(x: int) -> int:
        with lock:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
        time.sleep(0.02)
        with lock:
            running["now"] -= 1
        return x * x

    assert bounded_map(work, range(12), max_concurrency=3) == [x * x for x in range(12)]
    assert 2 <= running["max"] <= 3


def test_bounded_map_propagates_the_first_error():
    def work(x: int) -> int:
        if x == 3:
            raise SourceError("boom")
        return x

    with pytest.raises(SourceError, match="boom"):
        bounded_map(work, range(8), max_concurrency=2)
    assert bounded_map(work, [1], max_concurrency=4) == [1]
