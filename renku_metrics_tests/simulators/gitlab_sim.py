"""A GitLab simulator: the parts of API v4 the GitLab connector reads.

Behaviour (SOURCES.md and the GitLab API docs):

* Authentication by ``PRIVATE-TOKEN`` header or ``Authorization: Bearer``;
  401 ``{"message": "401 Unauthorized"}`` otherwise.
* ``GET /api/v4/projects``: ``last_activity_after``/``last_activity_before``
  (ISO 8601, exclusive), keyset paging with ``pagination=keyset&order_by=id``
  and ``sort``: a ``Link: <...>; rel="next"`` header carrying ``id_after`` (or
  ``id_before``) while more records follow, no ``Link`` on the last page.
  ``last_activity_at`` is updated at most once an hour, so it can lag the
  latest push by up to an hour.
* ``GET /api/v4/projects/:id/events``: ``action=pushed`` keeps push events
  (``pushed to``, ``pushed new``, ``deleted``); ``after``/``before`` are whole
  days and exclusive (``after=D`` keeps created_at > D 23:59:59.999999,
  ``before=D`` keeps created_at < D 00:00); ``sort`` asc/desc (default desc).
  Offset paging: ``page``, ``per_page`` (default 20, max 100), headers
  ``x-next-page``, ``x-page``, ``x-per-page``, ``x-prev-page``, ``x-total``,
  ``x-total-pages`` and ``Link`` (prev/next/first/last); the totals and
  ``rel="last"`` are dropped past 10,000 records. Events older than three
  years are gone.
* ``GET /api/v4/projects/:id/repository/commits``: ``ref_name`` (branch, sha or
  revision range ``a..b``; default branch if absent), ``all=true`` (every
  branch), ``since``/``until`` (inclusive, on the committed date), newest first.
  Offset paging without any totals: ``x-next-page`` is empty on the last page.
* ``GET /api/v4/projects/:id``: the project record; 404 once it is deleted. As for an
  admin: ``namespace`` (``kind`` "user" or "group"), ``owner`` (personal namespaces
  only), ``creator_id`` and, for a fork, ``forked_from_project``.
* ``GET /api/v4/users/:id``: ``identities`` and the ``bot`` flag as an admin
  sees them; 404 for unknown users.
* Pushing more than three branches at once makes one bulk push event:
  ``commit_count`` 0, ``ref_count`` N, null ``commit_from``/``commit_to``/``ref``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from renku_metrics_tests.simulators import UTC, Request, Response, SimulatorServer, iso_ms_z, parse_iso

MAX_PER_PAGE = 100
TOTALS_LIMIT = 10_000
EVENT_RETENTION = dt.timedelta(days=3 * 365)
ACTIVITY_UPDATE_INTERVAL = dt.timedelta(hours=1)

# A commit to push: a message, or (message, committed_at).
CommitSpec = str | tuple[str, dt.datetime]


@dataclass
class Repository:
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha -> record
    branches: dict[str, str] = field(default_factory=dict)  # name -> head sha
    order: list[str] = field(default_factory=list)  # shas in creation order

    def ancestors(self, sha: str | None) -> set[str]:
        """``sha`` and everything reachable from it through parents."""
        seen: set[str] = set()
        stack = [sha] if sha else []
        while stack:
            current = stack.pop()
            if current in seen or current not in self.commits:
                continue
            seen.add(current)
            stack.extend(self.commits[current]["parent_ids"])
        return seen


class GitLabSimulator(SimulatorServer):
    def __init__(
        self, token: str = "glpat-simulated-admin-token-0001", now: Callable[[], dt.datetime] | None = None
    ) -> None:
        super().__init__()
        self.token = token
        self.now = now or (lambda: dt.datetime.now(UTC))
        self.projects: dict[int, dict[str, Any]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.repos: dict[int, Repository] = {}
        self.events: list[dict[str, Any]] = []
        self.gone_projects: set[int] = set()  # listed, but deleted before their events are read
        self._event_ids = itertools.count(1)
        self._sha_seq = itertools.count(1)

    # -- data ------------------------------------------------------------------

    def add_user(
        self,
        id: int,
        username: str,
        *,
        extern_uid: str | None = None,
        provider: str = "oauth2_generic",
        bot: bool = False,
        identities: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        if identities is None:
            identities = [{"provider": provider, "extern_uid": extern_uid}] if extern_uid else []
        user = {
            "id": id,
            "username": username,
            "name": f"Name of {username}",
            "state": "active",
            "email": f"{username}@example.org",
            "bot": bot,
            "identities": identities,
            "web_url": f"https://gitlab.example.org/{username}",
        }
        self.users[id] = user
        return user

    def add_project(
        self,
        id: int,
        *,
        visibility: str = "private",
        default_branch: str | None = "master",
        last_activity_at: dt.datetime | None = None,
        path: str | None = None,
        creator_id: int | None = None,
        owner_id: int | None = None,
        forked_from: int | None = None,
    ) -> dict[str, Any]:
        """A project; with ``owner_id`` it lies in that user's personal namespace (``namespace.kind``
        "user" and an ``owner`` object, as GitLab shows them), else in a group (no ``owner``)."""
        path = path or (f"user-{owner_id}/project-{id}" if owner_id is not None else f"group/project-{id}")
        project = {
            "id": id,
            "name": path.rsplit("/", 1)[-1],
            "path_with_namespace": path,
            "visibility": visibility,
            "default_branch": default_branch,
            "archived": False,
            "created_at": "2020-01-01T00:00:00.000Z",
            "last_activity_at": iso_ms_z(last_activity_at) if last_activity_at else "2020-01-01T00:00:00.000Z",
            "creator_id": creator_id if creator_id is not None else (owner_id if owner_id is not None else 1),
        }
        self.projects[id] = project
        self.set_namespace(id, owner_id)
        if forked_from is not None:
            upstream = self.projects[forked_from]
            project["forked_from_project"] = {
                "id": forked_from,
                "name": upstream["name"],
                "path_with_namespace": upstream["path_with_namespace"],
            }
        self.repos[id] = Repository()
        return project

    def set_namespace(self, project_id: int, owner_id: int | None) -> None:
        """Move a project into ``owner_id``'s personal namespace, or (None) into a group: a transfer."""
        project = self.projects[project_id]
        project.pop("owner", None)
        if owner_id is None:
            project["namespace"] = {"id": 9000, "name": "group", "path": "group", "kind": "group", "full_path": "group"}
            return
        username = self.users[owner_id]["username"] if owner_id in self.users else f"user-{owner_id}"
        project["namespace"] = {
            "id": 10000 + owner_id,
            "name": username,
            "path": username,
            "kind": "user",
            "full_path": username,
        }
        project["owner"] = {"id": owner_id, "username": username, "name": f"Name of {username}", "state": "active"}

    def touch_activity(self, project_id: int, at: dt.datetime) -> None:
        """GitLab's ``last_activity_at``: moved forward at most once an hour."""
        project = self.projects[project_id]
        last = parse_iso(project["last_activity_at"])
        if at - last >= ACTIVITY_UPDATE_INTERVAL:
            project["last_activity_at"] = iso_ms_z(at)

    def _new_sha(self, project_id: int, message: str) -> str:
        return hashlib.sha1(f"{project_id}:{next(self._sha_seq)}:{message}".encode()).hexdigest()

    def add_commits(
        self, project_id: int, branch: str, commits: Sequence[CommitSpec], at: dt.datetime, parent: str | None = None
    ) -> list[str]:
        """Create commits on top of ``parent`` (default: the branch head) without any event."""
        repo = self.repos[project_id]
        head = parent if parent is not None else repo.branches.get(branch)
        shas = []
        for index, spec in enumerate(commits):
            message, committed = (
                (spec, at - dt.timedelta(minutes=len(commits) - index)) if isinstance(spec, str) else spec
            )
            sha = self._new_sha(project_id, message)
            title = message.splitlines()[0] if message else ""
            stamp = committed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+00:00")
            repo.commits[sha] = {
                "id": sha,
                "short_id": sha[:8],
                "created_at": stamp,
                "parent_ids": [head] if head else [],
                "title": title,
                "message": message,
                "author_name": "Jane Doe",
                "author_email": "jane.doe@example.org",
                "authored_date": stamp,
                "committer_name": "Jane Doe",
                "committer_email": "jane.doe@example.org",
                "committed_date": stamp,
                "trailers": {},
                "web_url": f"https://gitlab.example.org/-/commit/{sha}",
            }
            repo.order.append(sha)
            head = sha
            shas.append(sha)
        if head:
            repo.branches[branch] = head
        return shas

    def _event(
        self, project_id: int, author_id: int, at: dt.datetime, action_name: str, push_data: dict[str, Any]
    ) -> dict[str, Any]:
        author = self.users.get(author_id, {"username": f"user{author_id}", "name": f"User {author_id}"})
        event = {
            "id": next(self._event_ids),
            "project_id": project_id,
            "action_name": action_name,
            "target_id": None,
            "target_iid": None,
            "target_type": None,
            "author_id": author_id,
            "target_title": None,
            "created_at": iso_ms_z(at),
            "author": {
                "id": author_id,
                "username": author["username"],
                "name": author["name"],
                "state": "active",
                "avatar_url": "https://gitlab.example.org/avatar.png",
                "web_url": f"https://gitlab.example.org/{author['username']}",
            },
            "push_data": push_data,
            "author_username": author["username"],
        }
        self.events.append(event)
        self.touch_activity(project_id, at)
        return event

    def push(
        self,
        project_id: int,
        author_id: int,
        at: dt.datetime,
        commits: Sequence[CommitSpec],
        branch: str = "master",
        *,
        base: str | None = None,
    ) -> dict[str, Any]:
        """A push of new commits to one branch; a new branch starts at ``base`` (default: no parent)."""
        repo = self.repos[project_id]
        old_head = repo.branches.get(branch)
        is_new = old_head is None
        parent = old_head if not is_new else (repo.branches.get(base) if base else None)
        shas = self.add_commits(project_id, branch, commits, at, parent=parent)
        if is_new and parent is not None and base is not None:
            # GitLab counts a new branch's commits against the default branch.
            count = len(
                repo.ancestors(shas[-1])
                - repo.ancestors(repo.branches.get(self.projects[project_id]["default_branch"]))
            )
        else:
            count = len(shas)
        title = repo.commits[shas[-1]]["title"] if shas else None
        return self._event(
            project_id,
            author_id,
            at,
            "pushed new" if is_new else "pushed to",
            {
                "commit_count": count,
                "action": "created" if is_new else "pushed",
                "ref_type": "branch",
                "commit_from": None if is_new else old_head,
                "commit_to": shas[-1] if shas else old_head,
                "ref": branch,
                "commit_title": title[:70] if title else None,
                "ref_count": None,
            },
        )

    def bulk_push(
        self, project_id: int, author_id: int, at: dt.datetime, branches: dict[str, Sequence[CommitSpec]]
    ) -> dict[str, Any]:
        """More than three branches pushed at once: one event without commit details."""
        assert len(branches) > 3, "GitLab makes a bulk push event only for more than 3 refs"
        repo = self.repos[project_id]
        default = self.projects[project_id]["default_branch"]
        for name, commits in branches.items():
            parent = repo.branches.get(name) or repo.branches.get(default)
            self.add_commits(project_id, name, commits, at, parent=parent)
        return self._event(
            project_id,
            author_id,
            at,
            "pushed to",
            {
                "commit_count": 0,
                "action": "pushed",
                "ref_type": "branch",
                "commit_from": None,
                "commit_to": None,
                "ref": None,
                "commit_title": None,
                "ref_count": len(branches),
            },
        )

    def move_branch(self, project_id: int, author_id: int, at: dt.datetime, branch: str, to: str) -> dict[str, Any]:
        """A push that moves ``branch`` to existing commits (a fast-forward merge)."""
        repo = self.repos[project_id]
        old = repo.branches.get(branch)
        repo.branches[branch] = to
        new_commits = repo.ancestors(to) - repo.ancestors(old)
        return self._event(
            project_id,
            author_id,
            at,
            "pushed to",
            {
                "commit_count": len(new_commits),
                "action": "pushed",
                "ref_type": "branch",
                "commit_from": old,
                "commit_to": to,
                "ref": branch,
                "commit_title": repo.commits[to]["title"][:70],
                "ref_count": None,
            },
        )

    def delete_branch(self, project_id: int, author_id: int, at: dt.datetime, branch: str) -> dict[str, Any]:
        old = self.repos[project_id].branches.pop(branch)
        return self._event(
            project_id,
            author_id,
            at,
            "deleted",
            {
                "commit_count": 0,
                "action": "removed",
                "ref_type": "branch",
                "commit_from": old,
                "commit_to": None,
                "ref": branch,
                "commit_title": None,
                "ref_count": None,
            },
        )

    def add_raw_event(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store an event record as given (malformed-record tests)."""
        record = dict(record)
        record.setdefault("id", next(self._event_ids))
        self.events.append(record)
        return record

    # -- routes ----------------------------------------------------------------

    def route(self, request: Request) -> Response:
        token = request.header("PRIVATE-TOKEN")
        bearer = request.header("Authorization") or ""
        if token != self.token and bearer != f"Bearer {self.token}":
            return Response.json({"message": "401 Unauthorized"}, status=401)
        path = request.path
        if path == "/api/v4/projects":
            return self._projects(request)
        if match := re.fullmatch(r"/api/v4/projects/(\d+)", path):
            project_id = int(match.group(1))
            if project_id not in self.projects or project_id in self.gone_projects:
                return Response.json({"message": "404 Project Not Found"}, status=404)
            return Response.json(self.projects[project_id])
        if match := re.fullmatch(r"/api/v4/projects/(\d+)/events", path):
            return self._project_events(request, int(match.group(1)))
        if match := re.fullmatch(r"/api/v4/projects/(\d+)/repository/commits", path):
            return self._commits(request, int(match.group(1)))
        if match := re.fullmatch(r"/api/v4/projects/([^/]+)/releases", path):
            return self._releases(request, match.group(1))
        if match := re.fullmatch(r"/api/v4/users/(\d+)", path):
            user = self.users.get(int(match.group(1)))
            return Response.json(user) if user else Response.json({"message": "404 User Not Found"}, status=404)
        return Response.json({"error": "404 Not Found"}, status=404)

    def _projects(self, request: Request) -> Response:
        selected = sorted(self.projects.values(), key=lambda p: p["id"])
        after, before = request.arg("last_activity_after"), request.arg("last_activity_before")
        if after:
            selected = [p for p in selected if parse_iso(p["last_activity_at"]) > parse_iso(after)]
        if before:
            selected = [p for p in selected if parse_iso(p["last_activity_at"]) < parse_iso(before)]
        if request.arg("pagination") != "keyset":
            return self._offset_page(request, selected, totals=True)
        if request.arg("order_by", "created_at") != "id":
            return Response.json({"error": "Keyset pagination is not supported for ordering by created_at"}, status=405)
        descending = request.arg("sort", "desc") == "desc"
        if descending:
            selected.reverse()
        per_page = self._per_page(request)
        if request.arg("id_after"):
            selected = [p for p in selected if p["id"] > int(request.arg("id_after"))]
        if request.arg("id_before"):
            selected = [p for p in selected if p["id"] < int(request.arg("id_before"))]
        page = selected[: per_page + 1]  # one more than shown tells whether a next page exists
        headers = {}
        if len(page) > per_page:
            page = page[:per_page]
            query = {k: v[-1] for k, v in request.query.items() if k not in ("id_after", "id_before")}
            query["id_before" if descending else "id_after"] = str(page[-1]["id"])
            headers["Link"] = f'<{self.url}{request.path}?{urlencode(query)}>; rel="next"'
        return Response.json(page, headers=headers)

    def _project_events(self, request: Request, project_id: int) -> Response:
        if project_id not in self.projects or project_id in self.gone_projects:
            return Response.json({"message": "404 Project Not Found"}, status=404)
        cutoff = self.now() - EVENT_RETENTION
        selected = [e for e in self.events if e.get("project_id") == project_id and _created(e) >= cutoff]
        action = request.arg("action")
        if action == "pushed":
            selected = [e for e in selected if e.get("action_name") in ("pushed to", "pushed new", "deleted")]
        elif action:
            selected = [e for e in selected if e.get("action_name") == action]
        after, before = request.arg("after"), request.arg("before")
        if after:
            day = dt.date.fromisoformat(after)
            end_of_day = (
                dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
                + dt.timedelta(days=1)
                - dt.timedelta(microseconds=1)
            )
            selected = [e for e in selected if _created(e) > end_of_day]
        if before:
            day = dt.date.fromisoformat(before)
            selected = [e for e in selected if _created(e) < dt.datetime(day.year, day.month, day.day, tzinfo=UTC)]
        selected.sort(key=lambda e: (e.get("created_at") or "", e["id"]), reverse=request.arg("sort", "desc") != "asc")
        return self._offset_page(request, selected, totals=True)

    def _commits(self, request: Request, project_id: int) -> Response:
        if project_id not in self.projects or project_id in self.gone_projects:
            return Response.json({"message": "404 Project Not Found"}, status=404)
        repo = self.repos[project_id]
        if request.arg("all") == "true":
            reachable: set[str] = set()
            for head in repo.branches.values():
                reachable |= repo.ancestors(head)
        else:
            ref = request.arg("ref_name") or self.projects[project_id]["default_branch"]
            if ".." in ref:
                exclude, include = ref.split("..", 1)
                if self._resolve(repo, exclude) is None or self._resolve(repo, include) is None:
                    return Response.json({"message": "404 Commit Not Found"}, status=404)
                reachable = repo.ancestors(self._resolve(repo, include)) - repo.ancestors(self._resolve(repo, exclude))
            else:
                head = self._resolve(repo, ref)
                if head is None:
                    return Response.json({"message": "404 Commit Not Found"}, status=404)
                reachable = repo.ancestors(head)
        selected = [repo.commits[sha] for sha in repo.order if sha in reachable]
        since, until = request.arg("since"), request.arg("until")
        if since:
            selected = [c for c in selected if parse_iso(c["committed_date"]) >= parse_iso(since)]
        if until:
            selected = [c for c in selected if parse_iso(c["committed_date"]) <= parse_iso(until)]
        # Newest first; creation order breaks ties (as git log shows children before parents).
        position = {sha: i for i, sha in enumerate(repo.order)}
        selected.sort(key=lambda c: (c["committed_date"], position[c["id"]]), reverse=True)
        return self._offset_page(request, selected, totals=False)

    @staticmethod
    def _resolve(repo: Repository, ref: str) -> str | None:
        if ref in repo.branches:
            return repo.branches[ref]
        return ref if ref in repo.commits else None

    # -- releases (GET /projects/:id/releases: newest released_at first, offset paging) --

    def add_release(
        self, project_id: int, tag: str, released_at: dt.datetime, name: str | None = None
    ) -> dict[str, Any]:
        """A release of a project (``created_at`` a day before ``released_at``)."""
        record = {
            "tag_name": tag,
            "name": name or tag,
            "description": f"Release {tag}",
            "created_at": iso_ms_z(released_at - dt.timedelta(days=1)),
            "released_at": iso_ms_z(released_at),
            "upcoming_release": released_at > self.now(),
            "_links": {
                "self": f"https://gitlab.example.org/{self.projects[project_id]['path_with_namespace']}/-/releases/{tag}"
            },
        }
        self.__dict__.setdefault("project_releases", {}).setdefault(project_id, []).append(record)
        return record

    def _releases(self, request: Request, ref: str) -> Response:
        from urllib.parse import unquote

        path = unquote(ref)
        by_path = {p["path_with_namespace"]: i for i, p in self.projects.items()}
        project_id = int(path) if path.isdigit() else by_path.get(path)
        if project_id not in self.projects:
            return Response.json({"message": "404 Project Not Found"}, status=404)
        items = list(self.__dict__.get("project_releases", {}).get(project_id, []))
        key = request.arg("order_by", "released_at")
        items.sort(key=lambda r: r[key if key in ("released_at", "created_at") else "released_at"])
        if request.arg("sort", "desc") == "desc":
            items.reverse()
        return self._offset_page(request, items, totals=True)

    # -- paging ----------------------------------------------------------------

    @staticmethod
    def _per_page(request: Request) -> int:
        return max(1, min(MAX_PER_PAGE, int(request.arg("per_page") or 20)))

    def _offset_page(self, request: Request, items: list[dict[str, Any]], totals: bool) -> Response:
        per_page = self._per_page(request)
        page = max(1, int(request.arg("page") or 1))
        chunk = items[(page - 1) * per_page : page * per_page]
        has_next = page * per_page < len(items)
        headers = {
            "Content-Type": "application/json",
            "x-page": str(page),
            "x-per-page": str(per_page),
            "x-next-page": str(page + 1) if has_next else "",
            "x-prev-page": str(page - 1) if page > 1 else "",
        }
        show_totals = totals and len(items) <= TOTALS_LIMIT
        if show_totals:
            headers["x-total"] = str(len(items))
            headers["x-total-pages"] = str(max(1, math.ceil(len(items) / per_page)))

        def link(number: int, rel: str) -> str:
            query = {k: v[-1] for k, v in request.query.items() if k not in ("page", "per_page")}
            query.update(page=str(number), per_page=str(per_page))
            return f'<{self.url}{request.path}?{urlencode(query)}>; rel="{rel}"'

        links = []
        if page > 1:
            links.append(link(page - 1, "prev"))
        if has_next:
            links.append(link(page + 1, "next"))
        links.append(link(1, "first"))
        if show_totals:
            links.append(link(max(1, math.ceil(len(items) / per_page)), "last"))
        headers["Link"] = ", ".join(links)
        return Response.json(chunk, headers=headers)


def _created(event: dict[str, Any]) -> dt.datetime:
    value = event.get("created_at")
    return parse_iso(value) if value else dt.datetime.min.replace(tzinfo=UTC)
