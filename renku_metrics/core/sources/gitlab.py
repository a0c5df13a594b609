"""GitLab (Renku 1.x): ``commit`` events, plus ``create_dataset`` and ``run_workflow``
classified from the commits' messages.

How it reads a window [start, end)
----------------------------------
1. Projects with activity: ``GET /api/v4/projects?last_activity_after=<start - margin>``
   with keyset paging (``pagination=keyset&order_by=id&sort=asc``, following
   ``Link: <...>; rel="next"``). GitLab moves ``last_activity_at`` at most once an
   hour, so the margin (``activity_margin_hours``, default 2) must exceed an hour.
2. Per project, push events: ``GET /api/v4/projects/:id/events?action=pushed&after=&before=&sort=asc``
   with offset paging. ``after``/``before`` are exclusive whole days (day D is
   ``after=D-1&before=D+1``), in the server's time zone: the days are widened
   by ``date_margin_days`` and events filtered by ``created_at`` to the window.
3. Per push author, ``GET /api/v4/users/:id`` (cached for the run): the identity
   with provider ``identity_provider`` gives the Keycloak user id; the ``bot`` flag
   and ``exclude_users`` leave authors out (counted in stats).
4. Per kept push, its commits:
   * one commit (``commit_count`` 1): ``commit_to`` and ``commit_title`` from the
     event itself, no further request;
   * several commits: ``GET .../repository/commits?ref_name=<commit_from>..<commit_to>``
     (a revision range: exactly the commits the push added; shas never change,
     so the answer does not depend on when we ask);
   * a new branch (no ``commit_from``): the first ``commit_count`` commits of
     ``ref_name=<commit_to>``, newest first, as GitLab counted them. Comparing
     with the default branch instead would find nothing once the branch has
     been merged, which often happens on the same day;
   * a bulk push (more than three refs at once: ``commit_count`` 0, ``ref_count``
     N, null ``commit_from``/``commit_to``/``ref``) names no commits, so all
     branches are read: ``.../commits?all=true&since=<push - bulk_push_lookback_days>&until=<push + 1 h>``
     (inclusive bounds on the committed date; the hour absorbs client clock skew).
   Branch deletions and tag pushes without commits add nothing.

Failures that would silently lose data
--------------------------------------
A page after the first of any listing is retried on a 404 as on a 5xx; if it
still fails, that project's (or push's) listing is incomplete and so is the
day, with a note naming it: a failed page never ends a list. A 404 on the first
page of a project's events is checked against ``GET /api/v4/projects/:id``: a
project that is gone there too was deleted (counted in ``projects_missing``,
the day stays complete); one that still exists is read again, and if that
fails too the day is incomplete. A user lookup that keeps failing (404
included: an author of a push exists) is not cached; the author's commits are
kept as ``gitlab:<id>`` and the day is marked incomplete, so a rerun fixes it.

Events
------
Every commit, deduplicated by sha within the project and run, is a ``commit``
event of the *push author* (``author_id``) at the *push event's* ``created_at``:
the push is when the work reached Renku and who brought it there, while commit
dates are set by the committer's clock and may be days old (rebases, offline
work). A commit whose first message line is a Renku command (see
``classify_commit_message``) yields one more event with that action. The user
key is ``pseudonymize_user(extern_uid)``, or ``gitlab:<id>`` for authors without
the identity (counted in ``stats["unmapped_authors"]``). Project visibility comes
from the project record. Names, emails and usernames are never stored.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import (
    VISIBILITIES,
    RejectedRecord,
    SourceResult,
    TimeWindow,
    gitlab_user_key,
    make_event_id,
    pseudonymize_user,
)
from renku_metrics.core.ownership import ProjectRecord
from renku_metrics.core.sources.base import SettingsBase, read_secret
from renku_metrics.core.sources.http import (
    HeaderAuth,
    HttpClient,
    HttpError,
    HttpSettings,
    PageError,
    validate_base_url,
)

log = logging.getLogger(__name__)

SOURCE_NAME = "gitlab"
CREATE_DATASET = "create_dataset"
RUN_WORKFLOW = "run_workflow"
# GitLab deletes events older than three years.
EVENT_RETENTION = dt.timedelta(days=3 * 365)
# Committer clocks run ahead of GitLab's now and then: a bulk push's commits
# may carry a committed date a little after the push itself.
CLOCK_SKEW = dt.timedelta(hours=1)
ZERO_SHA = "0" * 40
# At most this many gap notes are spelled out in a day's coverage note.
MAX_GAP_NOTES = 5


class Settings(SettingsBase):
    url: str  # GitLab base URL, e.g. https://gitlab.renkulab.io
    token_env: str  # environment variable holding an admin token with scope read_api
    # (inferred beyond Renku's bundled GitLab) identity provider linking GitLab users to Keycloak
    identity_provider: str = "oauth2_generic"
    exclude_users: tuple[str, ...] = ()  # GitLab usernames left out (CI/service accounts)
    # The Renku deployment's own domain (RENKU_DOMAIN), the prefix of the web UI's
    # commit messages ("renkulab.io: dataset create x"). Unset: any domain prefix.
    renku_domain: str | None = None
    activity_margin_hours: float = 2.0  # > 1: last_activity_at lags by up to an hour
    bulk_push_lookback_days: int = 30  # how far back a bulk push's commits are looked for
    date_margin_days: int = 1  # (inferred) widen whole-day event bounds for the server's time zone
    page_size: int = 100  # GitLab's maximum per_page
    max_concurrency: int = 4  # projects / users read in parallel
    timeout_seconds: float = 30.0
    max_retries: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    # Look up the owner of every project with commits or session starts on the day (one
    # GET /projects/:id each, and its upstream for a fork): needed by the collaborate and
    # start_shared_session metrics (renku_metrics.core.ownership). Off: they report nobody.
    project_ownership: bool = False

    def validate(self, where: str) -> None:
        validate_base_url(self.url, f"{where}.url")
        if not 1 <= self.page_size <= 100:
            raise ConfigError(f"{where}.page_size: must be between 1 and 100 (GitLab's maximum), got {self.page_size}")
        if self.activity_margin_hours <= 1:
            raise ConfigError(
                f"{where}.activity_margin_hours: must be more than 1 (GitLab updates last_activity_at "
                f"at most once an hour), got {self.activity_margin_hours}"
            )
        if self.bulk_push_lookback_days < 1:
            raise ConfigError(f"{where}.bulk_push_lookback_days: must be >= 1, got {self.bulk_push_lookback_days}")
        if not 1 <= self.date_margin_days <= 7:
            raise ConfigError(
                f"{where}.date_margin_days: must be between 1 and 7, got {self.date_margin_days} (GitLab reads "
                "whole days in its own time zone, up to 14 hours off UTC: 0 loses the events of those hours)"
            )
        if self.renku_domain is not None and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", self.renku_domain):
            raise ConfigError(f"{where}.renku_domain: a host name like renkulab.io, got {self.renku_domain!r}")
        self.http_settings().validate(where)

    def http_settings(self) -> HttpSettings:
        return HttpSettings(
            timeout_seconds=self.timeout_seconds,
            max_retries=self.max_retries,
            backoff_seconds=self.backoff_seconds,
            max_backoff_seconds=self.max_backoff_seconds,
            max_concurrency=self.max_concurrency,
        )


# -- commit message classification ---------------------------------------------

# The web UI's core service: "<RENKU_DOMAIN>: dataset create <slug>" and
# "<RENKU_DOMAIN>: dataset import of <uri>". A domain needs a dot, so that a
# conventional commit like "fix: dataset create crash" is not mistaken for one.
_WEB_UI = re.compile(
    r"^(?P<domain>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+(?::\d+)?)"
    r":\s+dataset\s+(?P<verb>create|import)(?:\s|$)"
)
# The CLI writes the command line as the first line: "renku dataset create x".
# Sessions may call it by path ("/opt/conda/bin/renku run ...").
_CLI_PROGRAM = re.compile(r"^(?:\S*/)?renku$")
# Global options before the command that take a separate value.
_GLOBAL_OPTIONS_WITH_VALUE = {"--path"}
_WORKFLOW_COMMANDS = {"run", "rerun", "update"}
_WORKFLOW_SUBCOMMANDS = {"execute", "iterate"}
_DATASET_CREATING_SUBCOMMANDS = {"create", "import"}


def _is_create_flag(token: str) -> bool:
    """``--create``, ``-c``, or a cluster of short flags containing ``c`` (``-cf``)."""
    return token == "--create" or bool(re.fullmatch(r"-[A-Za-z]*c[A-Za-z]*", token))


def classify_commit_message(message: str | None, renku_domain: str | None = None) -> str | None:
    """``create_dataset``, ``run_workflow`` or None for a commit message (its first line counts).

    CLI forms: ``renku dataset create|import ...``, ``renku dataset add --create|-c ...``,
    ``renku run ...``, ``renku workflow execute|iterate ...``, ``renku rerun ...``,
    ``renku update ...``. Web UI forms: ``<domain>: dataset create <slug>`` and
    ``<domain>: dataset import of <uri>``, where ``<domain>`` must equal
    ``renku_domain`` when that is given.
    """
    if not message or not message.strip():
        return None
    first = message.strip().splitlines()[0].strip()
    web = _WEB_UI.match(first)
    if web:
        if renku_domain is None or web.group("domain").lower() == renku_domain.lower():
            return CREATE_DATASET
        return None
    tokens = first.split()
    if not tokens or not _CLI_PROGRAM.match(tokens[0]):
        return None
    index = 1
    while index < len(tokens) and tokens[index].startswith("-"):
        index += 2 if tokens[index] in _GLOBAL_OPTIONS_WITH_VALUE else 1
    command = tokens[index:]
    if not command:
        return None
    if command[0] in _WORKFLOW_COMMANDS:
        return RUN_WORKFLOW
    if command[0] == "workflow" and len(command) > 1 and command[1] in _WORKFLOW_SUBCOMMANDS:
        return RUN_WORKFLOW
    if command[0] == "dataset" and len(command) > 1:
        if command[1] in _DATASET_CREATING_SUBCOMMANDS:
            return CREATE_DATASET
        if command[1] == "add" and any(_is_create_flag(token) for token in command[2:]):
            return CREATE_DATASET
    return None


# -- helpers ---------------------------------------------------------------------


def _reason(exc: HttpError) -> str:
    """The short cause of a failed request, for a coverage note."""
    reason = f"HTTP {exc.status}" if exc.status else str(exc).rsplit("failed: ", 1)[-1]
    return f"{reason} on page {exc.page}" if isinstance(exc, PageError) else reason


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def safe_push_record(record: Any) -> dict[str, Any]:
    """A rejected push event without personal data (no author name or username)."""
    if not isinstance(record, Mapping):
        return {"record_type": type(record).__name__}
    push = record.get("push_data") if isinstance(record.get("push_data"), Mapping) else {}
    safe = {
        key: record.get(key) for key in ("id", "project_id", "action_name", "created_at", "author_id") if key in record
    }
    safe["push_data"] = {
        key: push.get(key) for key in ("commit_count", "ref_count", "action", "ref_type") if key in push
    }
    return safe


@dataclass
class _Author:
    user_id: str  # stored user key
    mapped: bool = False
    bot: bool = False
    excluded: bool = False
    no_identities_field: bool = False  # the user record lacked "identities" (not an admin token?)
    lookup_failed: str = ""  # why the user record could not be read (the day is then incomplete)


@dataclass
class _Push:
    project: Mapping[str, Any]
    record: Mapping[str, Any]
    created_at: dt.datetime


class Source:
    name = SOURCE_NAME

    def __init__(
        self,
        deployment: str,
        settings: Settings,
        env: Mapping[str, str],
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.deployment = deployment
        self.settings = settings
        where = f"deployment {deployment!r}: sources.gitlab"
        settings.validate(where)
        token = read_secret(env, settings.token_env, f"{where}.token_env")
        self.client = HttpClient(
            settings.url,
            deployment=deployment,
            source=SOURCE_NAME,
            settings=settings.http_settings(),
            auth=HeaderAuth("PRIVATE-TOKEN", token),
            secrets=[token],
        )
        self.now = now or (lambda: dt.datetime.now(dt.timezone.utc))
        self._excluded_names = {name.casefold() for name in settings.exclude_users}
        self._users: dict[int, Mapping[str, Any]] = {}  # per-run cache of /users/:id (successes only)
        self._gaps: list[str] = []  # what the current window could not read (list.append is thread-safe)

    # -- reading ---------------------------------------------------------------

    def _active_projects(self, window: TimeWindow) -> list[Mapping[str, Any]]:
        since = window.start - dt.timedelta(hours=self.settings.activity_margin_hours)
        params = {
            "last_activity_after": _iso(since),
            "pagination": "keyset",
            "order_by": "id",
            "sort": "asc",
            "per_page": self.settings.page_size,
        }
        projects: list[Mapping[str, Any]] = []
        for page in self.client.iter_keyset_pages("/api/v4/projects", params):
            projects.extend(p for p in page if isinstance(p, Mapping) and _is_int(p.get("id")))
        return projects

    def _list_push_events(self, project_id: int, params: dict[str, Any], not_found_ok: bool) -> list[Any] | None:
        records: list[Any] = []
        found = False
        for page in self.client.iter_offset_pages(
            f"/api/v4/projects/{project_id}/events", params, self.settings.page_size, not_found_ok=not_found_ok
        ):
            found = True
            records.extend(page)
        return records if found else None

    def _push_events(self, project: Mapping[str, Any], window: TimeWindow) -> list[Any] | None:
        """Push event records of the window's days (widened); None if the project is gone.

        A listing that cannot be read whole is recorded as a gap (and [] returned).
        """
        days = window.days()
        margin = dt.timedelta(days=self.settings.date_margin_days)
        params = {
            "action": "pushed",
            "after": (days[0] - dt.timedelta(days=1) - margin).isoformat(),
            "before": (days[-1] + dt.timedelta(days=1) + margin).isoformat(),
            "sort": "asc",
        }
        project_id = project["id"]
        try:
            records = self._list_push_events(project_id, params, not_found_ok=True)
            if records is not None:
                return records
            # 404: deleted since it was listed, or a stray 404? Ask for the project itself.
            if self.client.get_json(f"/api/v4/projects/{project_id}", expect=dict, not_found_ok=True) is None:
                return None
            return self._list_push_events(project_id, params, not_found_ok=False)
        except HttpError as exc:
            self._gaps.append(f"push events of project {project_id} not fully read ({_reason(exc)})")
            return []

    def _user(self, user_id: int) -> Mapping[str, Any]:
        """The user record; raises HttpError (not cached) when it cannot be read, 404 included."""
        if user_id not in self._users:
            self._users[user_id] = self.client.get_json(f"/api/v4/users/{user_id}", expect=dict, retry_not_found=True)
        return self._users[user_id]

    def _commit_pages(
        self, project_id: int, params: dict[str, Any], limit: int | None = None, must_exist: bool = False
    ) -> list[tuple[str, str]] | None:
        """(sha, message) of a commits listing, at most ``limit``; None when a ref does not exist (404).

        ``must_exist``: the listing names something the push event says exists (its new
        head, or all branches): a 404 is retried like a 5xx and, if it persists, raised.
        """
        out: list[tuple[str, str]] = []
        found = False
        per_page = min(self.settings.page_size, limit) if limit else self.settings.page_size
        for page in self.client.iter_offset_pages(
            f"/api/v4/projects/{project_id}/repository/commits",
            params,
            per_page,
            not_found_ok=not must_exist,
            must_exist=must_exist,
        ):
            found = True
            for commit in page:
                if isinstance(commit, Mapping) and isinstance(commit.get("id"), str) and commit["id"]:
                    out.append((commit["id"], str(commit.get("message") or commit.get("title") or "")))
            if limit is not None and len(out) >= limit:
                return out[:limit]  # the rest of the history was there before this push
        return out if found else None

    def _push_commits(self, push: _Push) -> tuple[list[tuple[str, str]], bool]:
        """The commits a push added, as (sha, message); and whether it was a bulk push.

        A commit listing that fails after its first page, or whose head keeps answering
        404, is recorded as a gap.
        """
        try:
            return self._read_push_commits(push)
        except HttpError as exc:
            if not (isinstance(exc, PageError) or exc.status == 404):
                raise  # e.g. a first page failing with 5xx after retries: the day fails, nothing is written
            self._gaps.append(
                f"commits of push event {push.record.get('id')} in project {push.project['id']} "
                f"not fully read ({_reason(exc)})"
            )
            return [], False

    def _read_push_commits(self, push: _Push) -> tuple[list[tuple[str, str]], bool]:
        project, data = push.project, push.record.get("push_data")
        if not isinstance(data, Mapping):
            return [], False
        project_id = project["id"]
        count = data.get("commit_count") or 0
        commit_from, commit_to, ref = data.get("commit_from"), data.get("commit_to"), data.get("ref")
        if data.get("action") == "removed" or push.record.get("action_name") == "deleted":
            return [], False  # a deleted branch or tag
        if commit_to is None and (ref is None or count):
            # A bulk push (or a push without the new head): only the commit dates can
            # tell which commits came with it; read every branch around the push time.
            since = push.created_at - dt.timedelta(days=self.settings.bulk_push_lookback_days)
            commits = self._commit_pages(
                project_id,
                {"all": "true", "since": _iso(since), "until": _iso(push.created_at + CLOCK_SKEW)},
                must_exist=True,
            )
            return commits or [], True
        if not _is_int(count) or count <= 0:
            return [], False  # e.g. a tag or a branch pointing at existing commits
        if count == 1 and isinstance(commit_to, str) and isinstance(data.get("commit_title"), str):
            return [(commit_to, data["commit_title"])], False
        if commit_from and commit_from != ZERO_SHA:
            commits = self._commit_pages(project_id, {"ref_name": f"{commit_from}..{commit_to}"})
            if commits is not None:
                return commits, False
            # commit_from is gone (garbage-collected after a force push): fall through.
        # A new branch (or the first push of a repository): the newest commit_count
        # commits of its head are the ones GitLab counted as new.
        return self._commit_pages(project_id, {"ref_name": commit_to}, limit=count, must_exist=True) or [], False

    # -- extract ---------------------------------------------------------------

    def _author(self, author_id: int, username: Any) -> _Author:
        key = gitlab_user_key(author_id)
        if isinstance(username, str) and username.casefold() in self._excluded_names:
            return _Author(key, excluded=True)
        try:
            user = self._user(author_id)
        except HttpError as exc:
            self._gaps.append(f"user {author_id} could not be looked up ({_reason(exc)}); kept as {key}")
            return _Author(key, lookup_failed=_reason(exc))
        if isinstance(user.get("username"), str) and user["username"].casefold() in self._excluded_names:
            return _Author(key, excluded=True)
        if user.get("bot") is True:
            return _Author(key, bot=True)
        uid = self._keycloak_uid(user)
        if uid is not None:
            return _Author(pseudonymize_user(uid), mapped=True)
        return _Author(key, no_identities_field="identities" not in user)

    def extract(self, window: TimeWindow) -> SourceResult:
        stats: dict[str, Any] = {
            key: 0
            for key in (
                "projects_with_activity",
                "projects_missing",
                "push_events",
                "bulk_pushes",
                "commits",
                "commit_events",
                "create_dataset_events",
                "run_workflow_events",
                "unmapped_authors",
                "excluded_authors",
                "bot_authors",
                "skipped_pushes",
                "users_without_identities_field",
            )
        }
        stats["user_lookups_failed"] = 0
        rejected: list[RejectedRecord] = []
        self._gaps = []
        self.client.reset_stats()

        # 1-2. Active projects and their push events in the window.
        projects = self._active_projects(window)
        stats["projects_with_activity"] = len(projects)
        pushes: list[_Push] = []
        for project, records in zip(
            projects, self.client.map(lambda p: self._push_events(p, window), projects), strict=False
        ):
            if records is None:
                stats["projects_missing"] += 1  # deleted between listing and reading
                continue
            for record in records:
                created = _parse_time(record.get("created_at")) if isinstance(record, Mapping) else None
                if created is None:
                    rejected.append(
                        RejectedRecord(SOURCE_NAME, "push event without a valid created_at", safe_push_record(record))
                    )
                    continue
                if not window.contains(created):
                    continue  # a day of the widened query outside the window
                if not _is_int(record.get("author_id")):
                    rejected.append(
                        RejectedRecord(SOURCE_NAME, "push event without author_id", safe_push_record(record))
                    )
                    continue
                pushes.append(_Push(project, record, created))
        stats["push_events"] = len(pushes)

        # 3. Authors: one lookup per distinct author (the usernames in the events
        # already settle exclusions, sparing those lookups).
        first_username = {}
        for push in pushes:
            first_username.setdefault(push.record["author_id"], push.record.get("author_username"))
        ids = list(first_username)
        authors = dict(zip(ids, self.client.map(lambda i: self._author(i, first_username[i]), ids), strict=False))
        stats["excluded_authors"] = sum(a.excluded for a in authors.values())
        stats["bot_authors"] = sum(a.bot for a in authors.values())
        stats["unmapped_authors"] = sum(not (a.mapped or a.excluded or a.bot) for a in authors.values())
        stats["users_without_identities_field"] = sum(a.no_identities_field for a in authors.values())
        stats["user_lookups_failed"] = sum(bool(a.lookup_failed) for a in authors.values())
        kept = [
            p for p in pushes if not (authors[p.record["author_id"]].excluded or authors[p.record["author_id"]].bot)
        ]
        stats["skipped_pushes"] = len(pushes) - len(kept)

        # 4. Commits of the kept pushes, then events (earliest push of a sha wins).
        kept.sort(key=lambda p: (p.created_at, p.record.get("id") or 0))
        commit_lists = self.client.map(self._push_commits, kept)
        events: dict[str, dict[str, Any]] = {}
        seen: set[tuple[int, str]] = set()
        for push, (commits, bulk) in zip(kept, commit_lists, strict=False):
            stats["bulk_pushes"] += int(bulk)
            project = push.project
            visibility = project.get("visibility") if project.get("visibility") in VISIBILITIES else None
            author = authors[push.record["author_id"]]
            for sha, message in commits:
                if (project["id"], sha) in seen:
                    continue
                seen.add((project["id"], sha))
                stats["commits"] += 1
                actions = ["commit"]
                extra = classify_commit_message(message, self.settings.renku_domain)
                if extra:
                    actions.append(extra)
                for action in actions:
                    event_id = make_event_id(self.deployment, SOURCE_NAME, project["id"], sha, action)
                    events[event_id] = {
                        "event_id": event_id,
                        "deployment": self.deployment,
                        "occurred_at": push.created_at,
                        "user_id": author.user_id,
                        "action": action,
                        "project_id": str(project["id"]),
                        "project_visibility": visibility,
                        "source": SOURCE_NAME,
                    }
                    stats[f"{action}_events"] += 1

        if stats["users_without_identities_field"]:
            log.warning(
                "%s/%s: %d users came without identities: is the token an admin token?",
                self.deployment,
                SOURCE_NAME,
                stats["users_without_identities_field"],
            )
        notes = []
        if window.start < self.now() - EVENT_RETENTION:
            notes.append(
                f"GitLab deletes events older than 3 years; the window starting {window.start.isoformat()} "
                "is (partly) beyond that and its pushes can no longer be read."
            )
        gaps = sorted(self._gaps)
        stats["listings_incomplete"] = len(gaps)
        if gaps:
            shown = "; ".join(gaps[:MAX_GAP_NOTES])
            more = f"; and {len(gaps) - MAX_GAP_NOTES} more" if len(gaps) > MAX_GAP_NOTES else ""
            notes.append(f"upstream failures after retries: {shown}{more}")
        complete, note = not notes, " ".join(notes)
        stats.update(self.client.stats)
        return SourceResult(
            source=SOURCE_NAME,
            events=list(events.values()),
            rejected=rejected,
            complete=complete,
            coverage_note=note,
            stats=stats,
        )

    # -- project ownership (renku_metrics.core.ownership) ---------------------------

    def project_owners(self, project_ids: list[str]) -> dict[str, ProjectRecord | None]:
        """Owner, upstream and visibility of each project (None: GitLab answers 404, e.g. deleted).

        The owner is the namespace's user for a project in a personal namespace
        (``namespace.kind`` "user", ``owner.id``), else the project's creator
        (``creator_id``): a group has no single owner, and its members' roles change
        over time. The GitLab user becomes the user key events use (the Keycloak
        identity's md5, or ``gitlab:<id>``). Only ids are kept: never a path or name.
        Without ``project_ownership`` in the settings, nothing is looked up and every
        project is unknown.
        """
        if not self.settings.project_ownership:
            return {p: None for p in project_ids}
        out: dict[str, ProjectRecord | None] = {}
        for project_id in project_ids:
            if not str(project_id).isdigit():
                out[project_id] = None  # not a GitLab project id
                continue
            record = self.client.get_json(f"/api/v4/projects/{project_id}", expect=dict, not_found_ok=True)
            out[project_id] = self._project_record(str(project_id), record) if record is not None else None
        return out

    def _project_record(self, project_id: str, record: Mapping[str, Any]) -> ProjectRecord:
        namespace = record.get("namespace") if isinstance(record.get("namespace"), Mapping) else {}
        owner = record.get("owner") if isinstance(record.get("owner"), Mapping) else {}
        owner_id = owner.get("id") if namespace.get("kind") == "user" else record.get("creator_id")
        fork = record.get("forked_from_project")
        upstream = fork.get("id") if isinstance(fork, Mapping) and _is_int(fork.get("id")) else None
        visibility = record.get("visibility")
        return ProjectRecord(
            project_id=project_id,
            owner=self._owner_key(owner_id) if _is_int(owner_id) else None,
            forked_from=str(upstream) if upstream is not None else None,
            visibility=visibility if visibility in VISIBILITIES else None,
        )

    def _owner_key(self, gitlab_user_id: int) -> str:
        """The user key of a project owner, as ``_author`` maps a pusher (``gitlab:<id>`` when unmapped)."""
        try:
            user = self._user(gitlab_user_id)
        except HttpError:
            return gitlab_user_key(gitlab_user_id)
        uid = self._keycloak_uid(user)
        return pseudonymize_user(uid) if uid is not None else gitlab_user_key(gitlab_user_id)

    def _keycloak_uid(self, user: Mapping) -> str | None:
        """The Keycloak user id of a GitLab user: the ``extern_uid`` of their identity with the
        configured provider; None when they have none (or the admin API hid identities)."""
        for identity in user.get("identities") or []:
            if (
                isinstance(identity, Mapping)
                and identity.get("provider") == self.settings.identity_provider
                and isinstance(identity.get("extern_uid"), str)
                and identity["extern_uid"].strip()
            ):
                return identity["extern_uid"].strip()
        return None
