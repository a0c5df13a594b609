"""Release listings of the code forges: GitHub's and GitLab's releases APIs.

* GitHub: ``GET {url}/repos/{owner}/{repo}/releases?per_page=100``, the next page from
  the ``Link: <...>; rel="next"`` header. The date of a release is ``published_at``
  (``created_at`` is the date of its commit); drafts (``draft: true``, no
  ``published_at``) are skipped, and only tags matching ``tag_pattern`` are kept
  (default: minor releases ``x.y.0``; Renku also tags builds like
  ``2.19.3-0.450e122``). A token is optional (``token_env``): without one GitHub
  allows 60 requests an hour. Over the limit GitHub answers 403 or 429 with
  ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset`` (epoch seconds), or a
  secondary limit with ``retry-after``: the client waits when the wait is at most
  ``max_rate_limit_wait_seconds`` and otherwise fails with an error naming the reset
  time. A page answered with ``x-ratelimit-remaining: 0`` makes the client wait for
  the reset before it asks for the next page, under the same bound.
* GitLab: ``GET {url}/api/v4/projects/:id/releases`` (``released_at``; offset paging
  by ``x-next-page``), token in ``PRIVATE-TOKEN``.

Both return ``ForgeRelease`` records; the release table is built in
``renku_metrics.core.value.releases``. Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import requests

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.sources.base import SettingsBase, SourceError, read_secret
from renku_metrics.core.sources.http import HeaderAuth, HttpClient, HttpSettings, validate_base_url

MINOR_RELEASES = r"^\d+\.\d+\.0$"


@dataclass(frozen=True)
class ForgeRelease:
    """One published release as a forge lists it."""

    tag: str
    name: str | None
    published_at: dt.datetime  # UTC
    url: str | None
    source: str  # github | gitlab


def _parse_time(value: str, where: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise SourceError(f"{where}: not an ISO 8601 time: {value!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}.tag_pattern: not a valid regular expression ({exc}), got {pattern!r}") from None


class GitHubSettings(SettingsBase):
    repo: str = "SwissDataScienceCenter/renku"
    url: str = "https://api.github.com"
    token_env: str | None = None
    tag_pattern: str = MINOR_RELEASES
    include_prereleases: bool = False
    per_page: int = 100
    max_rate_limit_wait_seconds: float = 300.0
    timeout_seconds: float = 30.0
    max_retries: int = 5

    def validate(self, where: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", self.repo):
            raise ConfigError(f"{where}.repo: expected owner/name, got {self.repo!r}")
        validate_base_url(self.url, f"{where}.url")
        _compile(self.tag_pattern, where)
        if not 1 <= self.per_page <= 100:
            raise ConfigError(f"{where}.per_page: must be 1..100 (GitHub's maximum is 100), got {self.per_page}")
        if self.max_rate_limit_wait_seconds < 0:
            raise ConfigError(f"{where}.max_rate_limit_wait_seconds: must be >= 0")


class GitLabSettings(SettingsBase):
    url: str
    project: str  # numeric id or full path (group/name)
    token_env: str | None = None
    tag_pattern: str = MINOR_RELEASES
    per_page: int = 100
    timeout_seconds: float = 30.0
    max_retries: int = 5

    def validate(self, where: str) -> None:
        validate_base_url(self.url, f"{where}.url")
        _compile(self.tag_pattern, where)
        if not 1 <= self.per_page <= 100:
            raise ConfigError(f"{where}.per_page: must be 1..100, got {self.per_page}")


class GitHubClient(HttpClient):
    """GitHub says "rate limited" with 403 as well as 429, and names the reset in its own headers."""

    def is_rate_limited(self, response: requests.Response) -> bool:
        if response.status_code not in (403, 429):
            return False
        headers = response.headers
        return (
            response.status_code == 429
            or headers.get("x-ratelimit-remaining", "").strip() == "0"
            or bool(headers.get("retry-after", "").strip())
        )

    def _rate_limit_wait(self, response: requests.Response) -> float | None:
        retry_after = response.headers.get("retry-after", "").strip()
        if retry_after.isdigit():
            return float(retry_after)
        if response.headers.get("x-ratelimit-remaining", "").strip() == "0":
            reset = self.reset_wait(response)
            if reset is not None:
                return reset
        # GitHub's advice for a secondary limit without headers: wait at least a minute.
        return 60.0

    def reset_wait(self, response: requests.Response) -> float | None:
        """Seconds until ``x-ratelimit-reset`` (None when absent or unreadable)."""
        try:
            return max(0.0, float(response.headers.get("x-ratelimit-reset", "")) - self._clock())
        except ValueError:
            return None


class GitHubReleases:
    """The published releases of one GitHub repository."""

    source = "github"

    def __init__(
        self,
        deployment: str,
        settings: GitHubSettings,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.where = f"deployment {deployment!r}, releases.github"
        headers = {}
        if settings.token_env:
            token = read_secret(env or {}, settings.token_env, f"{self.where}.token_env")
            headers = {"Authorization": f"Bearer {token}"}
        self._sleep = sleep
        self.client = GitHubClient(
            settings.url,
            deployment=deployment,
            source="github_releases",
            settings=HttpSettings(
                timeout_seconds=settings.timeout_seconds,
                max_retries=settings.max_retries,
                max_rate_limit_wait_seconds=settings.max_rate_limit_wait_seconds,
                max_concurrency=1,
            ),
            auth=HeaderAuth("Authorization", headers["Authorization"]) if headers else None,
            sleep=sleep,
            clock=clock,
        )
        self.client.session.headers["Accept"] = "application/vnd.github+json"
        self.client.session.headers["X-GitHub-Api-Version"] = "2022-11-28"

    def fetch(self) -> list[ForgeRelease]:
        s = self.settings
        pattern = _compile(s.tag_pattern, self.where)
        path = f"/repos/{s.repo}/releases"
        url: str | None = path
        params: dict | None = {"per_page": s.per_page}
        seen: set[str] = set()
        out: list[ForgeRelease] = []
        try:
            while url is not None:
                items, response = self.client.request_json("GET", url, params=params, expect=list)
                for item in items:
                    release = self._release(item, pattern)
                    if release is not None:
                        out.append(release)
                next_link = response.links.get("next", {}).get("url")
                if not next_link:
                    break
                url, params = self.client.url_for(next_link), None
                if url in seen:
                    raise self.client.error("GET", url, "the Link header repeated a page")
                seen.add(url)
                self._pause_if_exhausted(response, url)
        finally:
            self.client.close()
        return out

    def _pause_if_exhausted(self, response: requests.Response, next_url: str) -> None:
        """Before the next page: wait for the reset when the last answer left no requests."""
        if response.headers.get("x-ratelimit-remaining", "").strip() != "0":
            return
        wait = self.client.reset_wait(response) or 0.0
        if wait > self.settings.max_rate_limit_wait_seconds:
            reset = dt.datetime.fromtimestamp(float(response.headers["x-ratelimit-reset"]), dt.timezone.utc)
            raise self.client.error(
                "GET",
                next_url,
                f"GitHub rate limit exhausted (x-ratelimit-remaining 0) until {reset:%Y-%m-%d %H:%M:%S} UTC, "
                f"{wait:.0f} s away, more than the allowed {self.settings.max_rate_limit_wait_seconds:.0f} s "
                "(set token_env for 5,000 requests an hour)",
            )
        self._sleep(wait)

    def _release(self, item: dict, pattern: re.Pattern) -> ForgeRelease | None:
        if not isinstance(item, dict):
            raise SourceError(f"{self.where}: a release is not a JSON object: {item!r}")
        if item.get("draft") or not item.get("published_at"):
            return None
        if item.get("prerelease") and not self.settings.include_prereleases:
            return None
        tag = str(item.get("tag_name") or "")
        if not pattern.search(tag):
            return None
        return ForgeRelease(
            tag=tag,
            name=item.get("name") or None,
            published_at=_parse_time(item["published_at"], f"{self.where}: release {tag!r}.published_at"),
            url=item.get("html_url"),
            source="github",
        )


class GitLabReleases:
    """The releases of one GitLab project."""

    source = "gitlab"

    def __init__(
        self,
        deployment: str,
        settings: GitLabSettings,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.where = f"deployment {deployment!r}, releases.gitlab"
        auth = None
        if settings.token_env:
            auth = HeaderAuth("PRIVATE-TOKEN", read_secret(env or {}, settings.token_env, f"{self.where}.token_env"))
        self.client = HttpClient(
            settings.url + "/api/v4",
            deployment=deployment,
            source="gitlab_releases",
            settings=HttpSettings(
                timeout_seconds=settings.timeout_seconds, max_retries=settings.max_retries, max_concurrency=1
            ),
            auth=auth,
            sleep=sleep,
        )

    def fetch(self) -> list[ForgeRelease]:
        pattern = _compile(self.settings.tag_pattern, self.where)
        project = quote(self.settings.project, safe="")
        out = []
        try:
            path = f"/projects/{project}/releases"
            for page in self.client.iter_offset_pages(path, {}, self.settings.per_page):
                for item in page:
                    tag = str(item.get("tag_name") or "")
                    if not pattern.search(tag):
                        continue
                    when = item.get("released_at") or item.get("created_at")
                    if not when:
                        continue
                    links = item.get("_links") or {}
                    out.append(
                        ForgeRelease(
                            tag=tag,
                            name=item.get("name") or None,
                            published_at=_parse_time(when, f"{self.where}: release {tag!r}.released_at"),
                            url=links.get("self") if isinstance(links, dict) else None,
                            source="gitlab",
                        )
                    )
        finally:
            self.client.close()
        return out
