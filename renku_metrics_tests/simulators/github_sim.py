"""A local GitHub REST API for the releases connector: ``GET /repos/{owner}/{repo}/releases``.

Follows GitHub's documented behaviour:

* paging by ``page``/``per_page`` (default 30, at most 100), with a ``Link`` header
  carrying ``rel="prev"``, ``"next"``, ``"first"`` and ``"last"`` (only those that
  apply; none on a listing that fits one page);
* releases newest first; drafts listed (to a caller with push access) with
  ``published_at: null``; ``created_at`` is the date of the tagged commit;
* the primary rate limit: 60 requests an hour without a token, 5,000 with one;
  every answer carries ``x-ratelimit-limit``, ``-remaining``, ``-used``, ``-reset``
  (epoch seconds) and ``-resource: core``; over the limit the answer is 403 (or 429,
  ``limit_status``) with remaining 0 and the message "API rate limit exceeded";
* secondary limits: 403 or 429 with ``retry-after`` (``secondary_limit``);
* a wrong token: 401 "Bad credentials"; an unknown repository: 404 "Not Found".
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from typing import Any
from urllib.parse import urlencode

from renku_metrics_tests.simulators import Request, Response, SimulatorServer

UTC = dt.timezone.utc


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GitHubSimulator(SimulatorServer):
    def __init__(self, repo: str = "SwissDataScienceCenter/renku", token: str | None = None) -> None:
        super().__init__()
        self.repo = repo
        self.token = token
        self.releases: list[dict[str, Any]] = []
        self.limit_status = 403
        self.used = 0
        self.reset_at = int(time.time()) + 3600
        self.limit_override: int | None = None
        self._secondary: list[tuple[int, int]] = []  # (status, retry_after) for the next requests
        self._next_id = 1

    # -- data ------------------------------------------------------------------

    def add_release(
        self,
        tag: str,
        published_at: dt.datetime | None,
        *,
        created_at: dt.datetime | None = None,
        draft: bool = False,
        prerelease: bool = False,
        name: str | None = None,
        body: str = "",
    ) -> dict[str, Any]:
        created = created_at or (published_at or dt.datetime.now(UTC)) - dt.timedelta(days=2)
        record = {
            "id": self._next_id,
            "tag_name": tag,
            "name": name if name is not None else tag,
            "body": body,
            "draft": draft,
            "prerelease": prerelease,
            "created_at": _iso(created),
            "published_at": None if draft else _iso(published_at),
            "html_url": f"https://github.com/{self.repo}/releases/tag/{tag}",
            "author": {"login": "release-bot", "id": 1},
        }
        self._next_id += 1
        self.releases.append(record)
        return record

    def secondary_limit(self, retry_after: int, status: int = 403, times: int = 1) -> None:
        """The next ``times`` requests hit a secondary rate limit (``retry-after`` seconds)."""
        self._secondary += [(status, retry_after)] * times

    def exhaust(self, reset_in: int, remaining: int = 0) -> None:
        """Leave ``remaining`` requests in the current window, which resets in ``reset_in`` seconds."""
        self.used = self.limit() - remaining
        self.reset_at = int(time.time()) + reset_in

    def reset_window(self) -> None:
        """The rate-limit window rolls over (as if its reset time had passed)."""
        self.used = 0
        self.reset_at = int(time.time()) + 3600

    def limit(self, authenticated: bool | None = None) -> int:
        if self.limit_override is not None:
            return self.limit_override
        return 5000 if (authenticated if authenticated is not None else self.token is not None) else 60

    # -- routes ----------------------------------------------------------------

    def _rate_headers(self, limit: int) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - self.used)),
            "x-ratelimit-used": str(self.used),
            "x-ratelimit-reset": str(self.reset_at),
            "x-ratelimit-resource": "core",
        }

    def route(self, request: Request) -> Response:
        auth = request.header("Authorization") or ""
        authenticated = bool(auth)
        if authenticated and auth not in (f"Bearer {self.token}", f"token {self.token}"):
            return Response.json(
                {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}, status=401
            )
        if self._secondary:
            status, retry_after = self._secondary.pop(0)
            return Response.json(
                {
                    "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
                },
                status=status,
                headers={"retry-after": str(retry_after)},
            )
        if time.time() >= self.reset_at:
            self.reset_window()
        limit = self.limit(authenticated)
        if self.used >= limit:
            return Response.json(
                {
                    "message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated "
                    "requests get a higher rate limit.)",
                    "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting",
                },
                status=self.limit_status,
                headers=self._rate_headers(limit),
            )
        self.used += 1
        headers = self._rate_headers(limit)
        match = re.fullmatch(r"/repos/([^/]+/[^/]+)/releases", request.path)
        if not match or match.group(1) != self.repo:
            return Response.json({"message": "Not Found", "status": "404"}, status=404, headers=headers)
        return self._page(request, headers)

    def _page(self, request: Request, headers: dict[str, str]) -> Response:
        per_page = max(1, min(100, int(request.arg("per_page") or 30)))
        page = max(1, int(request.arg("page") or 1))
        listed = sorted(self.releases, key=lambda r: (r["created_at"], r["id"]), reverse=True)
        chunk = listed[(page - 1) * per_page : page * per_page]
        pages = max(1, math.ceil(len(listed) / per_page))

        def link(number: int, rel: str) -> str:
            query = {k: v[-1] for k, v in request.query.items() if k not in ("page",)}
            query.update(per_page=str(per_page), page=str(number))
            return f'<{self.url}{request.path}?{urlencode(query)}>; rel="{rel}"'

        links = []
        if page > 1:
            links += [link(page - 1, "prev")]
        if page < pages:
            links += [link(page + 1, "next"), link(pages, "last")]
        if page > 1:
            links += [link(1, "first")]
        if links:
            headers = {**headers, "Link": ", ".join(links)}
        return Response.json(chunk, headers=headers)
