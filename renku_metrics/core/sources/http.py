"""The HTTP client shared by the connectors that talk to web APIs (Keycloak, GitLab).

One ``HttpClient`` per source instance: one ``requests.Session`` (connection
pooling sized for the concurrency in use), a timeout on every request, and one
retry policy:

* connection errors, timeouts, broken or truncated bodies, invalid JSON and
  HTTP 5xx are retried with exponential backoff and jitter;
* HTTP 429 waits as long as the server asks, from ``Retry-After`` (seconds or an
  HTTP date) or else ``RateLimit-Reset`` (unix time), as GitLab sends them (a subclass
  says which other answers mean "rate limited" and how long to wait: GitHub's 403);
* HTTP 401 on an authenticated request renews the credentials once (an access
  token that expired mid-extract) and repeats the request;
* anything else (4xx) fails at once, except a 404 where the caller says the
  resource must exist (a page after the first of a listing, a user looked up
  because it authored an event): that is retried like a 5xx, since a
  load-balanced GitLab answers a stray 404 now and then.

A persistent failure raises ``HttpError`` (a ``SourceError``) naming deployment,
source, method, URL *path* (never the query string) and the last status; a
failure on a page after the first is a ``PageError``, so that a caller can
record the listing as incomplete instead of taking its first pages for all of it. Known secret values
(tokens, client secrets) registered with the client are scrubbed from every
message it produces, so they cannot leak into logs, errors or run metadata.

Paging helpers cover the two GitLab styles (offset paging driven by
``x-next-page``; keyset paging following ``Link: <...>; rel="next"``), and
``bounded_map`` runs per-item work on a small thread pool.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.sources.base import SourceError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Query parameters: a mapping, or a sequence of pairs when a key repeats
# (Keycloak's ``type`` may be given several times).
Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None

_RETRYABLE_EXCEPTIONS = (
    requests.ConnectionError,  # includes refused/reset connections and connect timeouts
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,  # body cut short (IncompleteRead)
    requests.exceptions.ContentDecodingError,
)


class HttpError(SourceError):
    """A request that failed persistently; ``status`` is the last HTTP status (None: no response)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PageError(HttpError):
    """A page after the first of a listing failed persistently: the listing is incomplete."""

    def __init__(self, message: str, status: int | None = None, page: int = 2) -> None:
        super().__init__(message, status)
        self.page = page


@dataclass(frozen=True)
class HttpSettings:
    """Network behaviour of one client; sources build it from their own settings."""

    timeout_seconds: float = 30.0
    max_retries: int = 5  # retries after the first attempt, shared by all retryable failures
    backoff_seconds: float = 1.0  # first backoff; doubles on each retry, with jitter
    max_backoff_seconds: float = 60.0
    # A server asking for a longer pause than this (429) makes the request fail
    # instead: a daily job should not sleep for hours on one rate limit.
    max_rate_limit_wait_seconds: float = 900.0
    max_concurrency: int = 4

    def validate(self, where: str) -> None:
        if self.timeout_seconds <= 0:
            raise ConfigError(f"{where}.timeout_seconds: must be > 0, got {self.timeout_seconds}")
        if self.max_retries < 0:
            raise ConfigError(f"{where}.max_retries: must be >= 0, got {self.max_retries}")
        if self.backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ConfigError(f"{where}: backoff_seconds and max_backoff_seconds must be >= 0")
        if self.max_concurrency < 1:
            raise ConfigError(f"{where}.max_concurrency: must be >= 1, got {self.max_concurrency}")


class Auth(Protocol):
    """Credentials for a client: headers to send, and a way to drop stale ones.

    ``renewable`` says whether ``invalidate`` can lead to different credentials
    (a fresh access token); only then is a request repeated after a 401.
    """

    renewable: bool

    def headers(self) -> dict[str, str]: ...

    def invalidate(self) -> None: ...


class HeaderAuth:
    """A fixed credential header (GitLab ``PRIVATE-TOKEN``); nothing to renew."""

    renewable = False

    def __init__(self, name: str, value: str) -> None:
        self._headers = {name: value}

    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def invalidate(self) -> None:
        pass


def validate_base_url(url: str, where: str) -> str:
    """The URL without a trailing slash, or a ConfigError naming the key."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{where}: expected an http(s) URL without query, got {url!r}")
    if parts.username or parts.password:
        # Credentials in the URL would end up in logs and error messages.
        raise ConfigError(f"{where}: the URL must not contain credentials; use the *_env settings")
    return url.rstrip("/")


class HttpClient:
    """A retrying JSON client bound to one base URL, one deployment and one source."""

    def __init__(
        self,
        base_url: str,
        *,
        deployment: str,
        source: str,
        settings: HttpSettings | None = None,
        auth: Auth | None = None,
        secrets: Iterable[str] = (),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.deployment = deployment
        self.source = source
        self.settings = settings or HttpSettings()
        self.auth = auth
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add_secret(secret)
        self._sleep = sleep
        self._clock = clock
        self.stats = {"http_requests": 0, "http_retries": 0, "http_rate_limited": 0}
        self.session = requests.Session()
        pool = max(10, self.settings.max_concurrency)
        adapter = HTTPAdapter(pool_connections=pool, pool_maxsize=pool, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "renku-metrics"
        self.session.headers["Accept"] = "application/json"

    # -- secrets ---------------------------------------------------------------

    def add_secret(self, value: str | None) -> None:
        """Register a value that must never appear in messages (tokens, passwords)."""
        if value and len(value) >= 4:  # tiny values would mangle ordinary text
            with self._lock:
                self._secrets.add(value)

    def redact(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)  # longest first: no partial leftovers
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    # -- requests --------------------------------------------------------------

    def url_for(self, path_or_url: str) -> str:
        """Absolute URL: paths are joined to the base URL; absolute URLs must share its origin."""
        if path_or_url.startswith(("http://", "https://")):
            return self._rebase(path_or_url)
        return self.base_url + "/" + path_or_url.lstrip("/")

    def _rebase(self, url: str) -> str:
        """Keep path and query of a server-made URL (e.g. a ``Link`` header) on our own origin.

        Proxies can make a server advertise another scheme or host name; and a
        credential must never be sent to a host other than the configured one.
        """
        base, other = urlsplit(self.base_url), urlsplit(url)
        return urlunsplit((base.scheme, base.netloc, other.path, other.query, ""))

    def error(self, method: str, url: str, detail: str, status: int | None = None) -> HttpError:
        """An HttpError naming deployment, source, method and URL path (no query), secrets scrubbed."""
        path = urlsplit(url).path or "/"
        return HttpError(
            self.redact(f"deployment {self.deployment!r}, source {self.source!r}: {method} {path} failed: {detail}"),
            status,
        )

    def reset_stats(self) -> None:
        """Start counting afresh: one extract's counters must not include the previous day's."""
        with self._lock:
            self.stats = dict.fromkeys(self.stats, 0)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        ceiling = min(self.settings.max_backoff_seconds, self.settings.backoff_seconds * (2 ** (retry - 1)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _rate_limit_wait(self, response: requests.Response) -> float | None:
        """Seconds to wait after a 429, from Retry-After or RateLimit-Reset; None if neither."""
        retry_after = response.headers.get("Retry-After", "").strip()
        if retry_after:
            if retry_after.isdigit():
                return float(retry_after)
            try:
                when = email.utils.parsedate_to_datetime(retry_after)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=dt.timezone.utc)
                return max(0.0, when.timestamp() - self._clock())
            except (TypeError, ValueError):
                pass
        reset = response.headers.get("RateLimit-Reset", "").strip()
        if reset:
            try:
                return max(0.0, float(reset) - self._clock())
            except ValueError:
                pass
        return None

    def request_json(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Params = None,
        data: Mapping[str, Any] | None = None,
        authenticate: bool = True,
        expect: type | tuple[type, ...] | None = None,
        not_found_ok: bool = False,
        retry_not_found: bool = False,
    ) -> tuple[Any, requests.Response]:
        """Send a request and parse its JSON body, retrying as described in the module doc.

        ``expect`` checks the type of the parsed body (e.g. ``list`` for a listing);
        a body of another type is a SourceError, not silently treated as empty.
        ``not_found_ok`` turns a 404 into ``(None, response)``: for records that
        may legitimately vanish between listing and reading (a deleted project).
        ``retry_not_found`` retries a 404 like a 5xx: the resource must exist.
        """
        url = self.url_for(path_or_url)
        settings = self.settings
        retries = 0
        renewed = False
        status: int | None = None
        while True:
            status = None
            headers = self.auth.headers() if (authenticate and self.auth) else {}
            for value in headers.values():
                self.add_secret(value.split(" ", 1)[-1])  # "Bearer <token>" -> the token
            wait: float | None = None
            try:
                self._count("http_requests")
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=settings.timeout_seconds,
                    allow_redirects=False,  # a redirect could carry our credentials elsewhere
                )
            except _RETRYABLE_EXCEPTIONS as exc:
                failure = f"{type(exc).__name__} (no usable response)"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        body = response.json()
                    except ValueError:
                        # Truncated or garbled JSON: worth another try, as for a broken connection.
                        failure = f"HTTP {status} with invalid or truncated JSON ({len(response.content)} bytes)"
                    else:
                        if expect is not None and not isinstance(body, expect):
                            raise self.error(
                                method, url, f"HTTP {status} with an unexpected JSON {type(body).__name__}", status
                            )
                        return body, response
                elif status == 401 and authenticate and self.auth is not None and self.auth.renewable and not renewed:
                    # Expired or revoked token: renew the credentials once and repeat at once.
                    log.info(
                        "%s/%s: HTTP 401 on %s %s, renewing credentials",
                        self.deployment,
                        self.source,
                        method,
                        urlsplit(url).path,
                    )
                    self.auth.invalidate()
                    renewed = True
                    continue
                elif self.is_rate_limited(response):
                    self._count("http_rate_limited")
                    wait = self._rate_limit_wait(response)
                    failure = (
                        "HTTP 429 Too Many Requests (rate limited)"
                        if status == 429
                        else f"HTTP {status} (rate limited)"
                    )
                    if wait is not None and wait > settings.max_rate_limit_wait_seconds:
                        raise self.error(
                            method,
                            url,
                            f"{failure}; the server asks to wait {wait:.0f} s (until "
                            f"{_utc_text(self._clock() + wait)}), more than the "
                            f"allowed {settings.max_rate_limit_wait_seconds:.0f} s",
                            status,
                        )
                elif status == 404 and retry_not_found:
                    failure = "HTTP 404 Not Found"
                elif status == 404 and not_found_ok:
                    return None, response
                elif status >= 500:
                    failure = f"HTTP {status} {response.reason or ''}".rstrip()
                else:
                    raise self.error(
                        method, url, f"HTTP {status} {response.reason or ''}".rstrip() + self._hint(status), status
                    )
            retries += 1
            if retries > settings.max_retries:
                raise self.error(method, url, f"{failure} after {retries} attempts", status)
            self._count("http_retries")
            if wait is None:
                wait = self._backoff(retries)
            else:
                # Spread concurrent workers a little, so they do not all come back at once.
                wait += random.uniform(0, min(1.0, 0.1 * wait))
            log.warning(
                "%s/%s: %s %s: %s; retry %d/%d in %.2f s",
                self.deployment,
                self.source,
                method,
                urlsplit(url).path,
                self.redact(failure),
                retries,
                settings.max_retries,
                wait,
            )
            self._sleep(wait)

    def is_rate_limited(self, response: requests.Response) -> bool:
        """Whether an answer means "slow down" (waited for, then retried): HTTP 429 here;
        a client for an API that also says it with 403 (GitHub) overrides this."""
        return response.status_code == 429

    @staticmethod
    def _hint(status: int) -> str:
        if 300 <= status < 400:
            return " (redirect not followed: check the url setting, e.g. https and any /auth prefix)"
        if status == 401:
            return " (credentials rejected: check the secret's environment variable)"
        if status == 403:
            return " (forbidden: the credential lacks a required permission)"
        if status == 404:
            return " (not found: check url and realm/path settings)"
        return ""

    def get_json(
        self,
        path_or_url: str,
        params: Params = None,
        *,
        expect: type | tuple[type, ...] | None = None,
        not_found_ok: bool = False,
        retry_not_found: bool = False,
    ) -> Any:
        return self.request_json(
            "GET", path_or_url, params=params, expect=expect, not_found_ok=not_found_ok, retry_not_found=retry_not_found
        )[0]

    # -- paging ----------------------------------------------------------------

    def iter_offset_pages(
        self, path: str, params: Params, per_page: int, *, not_found_ok: bool = False, must_exist: bool = False
    ) -> Iterator[list[Any]]:
        """Pages of a GitLab offset-paginated listing, following ``x-next-page``.

        Totals (``x-total``, ``x-total-pages``, ``rel="last"``) are never used: GitLab
        drops them past 10,000 records and never sends them for commit listings.
        An empty ``x-next-page`` ends the listing. If the header is missing
        altogether (a proxy stripping it), a short page ends the listing instead.
        With ``not_found_ok`` a 404 on the first page yields no pages at all
        (the resource does not exist); on a later page a 404 is retried, and any
        persistent failure there raises ``PageError``: never the end of the list.
        With ``must_exist`` a 404 on the first page is retried too (then raises HttpError).
        """
        page = 1
        base = list(params.items()) if isinstance(params, Mapping) else list(params or [])
        while True:
            query = base + [("page", page), ("per_page", per_page)]
            if page == 1:
                items, response = self.request_json(
                    "GET", path, params=query, expect=list, not_found_ok=not_found_ok, retry_not_found=must_exist
                )
            else:
                items, response = self._later_page(path, query, page)
            if items is None:
                return
            yield items
            next_page = response.headers.get("x-next-page")
            if next_page is None:
                if len(items) < per_page:
                    return
                page += 1
                continue
            next_page = next_page.strip()
            if not next_page:
                return
            if not next_page.isdigit() or int(next_page) <= page:
                raise self.error("GET", self.url_for(path), f"bad x-next-page header {next_page!r} on page {page}")
            page = int(next_page)

    def _later_page(self, path: str, query: Params, page: int) -> tuple[Any, requests.Response]:
        try:
            return self.request_json("GET", path, params=query, expect=list, retry_not_found=True)
        except HttpError as exc:
            raise PageError(f"{exc} (page {page} of the listing)", exc.status, page) from exc

    def iter_keyset_pages(self, path: str, params: Params) -> Iterator[list[Any]]:
        """Pages of a keyset-paginated listing: follow ``Link: <...>; rel="next"`` until absent.

        A 404 on a page after the first is retried; a persistent failure there is a ``PageError``.
        """
        url: str | None = path
        query: Params = params
        seen: set[str] = set()
        page = 1
        while url is not None:
            if page == 1:
                items, response = self.request_json("GET", url, params=query, expect=list)
            else:
                items, response = self._later_page(url, query, page)
            page += 1
            yield items
            next_link = response.links.get("next", {}).get("url")
            if not next_link:
                return
            url, query = self._rebase(next_link), None  # the link carries the whole query
            if url in seen:  # a server repeating a link would otherwise loop forever
                raise self.error("GET", url, "keyset pagination returned the same next link twice")
            seen.add(url)

    # -- concurrency -----------------------------------------------------------

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return bounded_map(fn, items, self.settings.max_concurrency)

    def close(self) -> None:
        self.session.close()


def _utc_text(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], max_concurrency: int) -> list[R]:
    """``[fn(x) for x in items]`` on at most ``max_concurrency`` threads, results in order.

    The first exception propagates after queued work is cancelled (running
    calls finish; they are bounded by the HTTP timeouts).
    """
    items = list(items)
    if max_concurrency <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(max_concurrency, len(items)), thread_name_prefix="renku-metrics-http")
    futures = [pool.submit(fn, item) for item in items]
    try:
        return [future.result() for future in futures]
    finally:
        # On success every future is done; on failure, drop what has not started.
        pool.shutdown(wait=True, cancel_futures=True)
