"""A Keycloak simulator: client-credentials tokens and the admin events API.

Behaviour (SOURCES.md, and Keycloak's RealmAdminResource/JpaEventQuery):

* ``POST {base}/realms/{realm}/protocol/openid-connect/token`` with
  ``grant_type=client_credentials`` and the client id and secret (form fields
  or HTTP Basic) returns ``access_token`` and ``expires_in``. Tokens expire
  after ``token_lifetime_seconds`` of real time, or all at once when
  ``revoke_tokens()`` is called or after ``expire_tokens_after_requests``
  authenticated requests (to exercise expiry mid-extract without waiting).
* ``GET {base}/admin/realms/{realm}/events`` needs a valid bearer token (401
  otherwise) with the ``view-events`` role (403 otherwise). Filters: ``type``
  (may repeat), ``client``, ``user``, ``dateFrom``, ``dateTo``; paging by
  ``first`` (offset) and ``max`` (default 100). Results are newest first.
  ``dateFrom``/``dateTo`` are whole days parsed to midnight in the server's time
  zone (UTC unless ``utc_offset_minutes`` is given), and as in Keycloak's JPA store both compare inclusively against
  that midnight: ``dateFrom=D`` keeps time >= D 00:00, ``dateTo=D`` keeps
  time <= D 00:00:00.000 (so nearly all of day D is *excluded*). Digits are
  taken as epoch milliseconds, as newer releases accept.
* ``GET {base}/admin/realms/{realm}`` (any realm-management role) returns the realm's
  representation: with ``view-realm`` the full one, carrying the internal ``id`` that
  event records hold as ``realmId`` (not the realm's name); without it, as Keycloak's
  RealmAdminResource does, only ``{"realm": name}``.
* Event records are served as stored: a test may store records whose ``realmId`` is
  another realm's (``add_event(..., realm_id=...)``), as a shared events store or a
  proxy in front of several realms could send them.
* Retention: with ``events_expiration_seconds`` set, events older than
  ``now() - expiration`` are deleted before every query (Renku's realm setup
  uses 86400 s).
* Groups, users and organizations (SOURCES.md "Keycloak: groups and
  organizations"): ``GET /groups`` (top-level groups; ``search`` fills
  ``subGroups``), ``/group-by-path/{path}`` (404 when absent),
  ``/groups/{id}/children`` (default ``max=10``), ``/groups/{id}/members``
  (direct members only, default ``max=100``), ``/users`` (default ``max=100``),
  ``/organizations`` and ``/organizations/{id}/members`` (default ``max=10``;
  404 "Organizations not enabled for this realm" unless
  ``organizations_enabled``). All page by ``first``/``max``. Listing groups
  needs ``view-users``, ``manage-users`` or ``query-groups``; children, members
  and users need ``view-users`` (403 otherwise); organizations need
  ``view-users``, or ``manage-realm`` when ``organizations_need_manage_realm``.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from renku_metrics_tests.simulators import UTC, Request, Response, SimulatorServer

EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(moment: dt.datetime | int) -> int:
    if isinstance(moment, int):
        return moment
    return (moment - EPOCH) // dt.timedelta(milliseconds=1)


class KeycloakSimulator(SimulatorServer):
    def __init__(
        self,
        realm: str = "Renku",
        client_id: str = "renku-metrics",
        client_secret: str = "kc-client-secret-0123456789",
        base_path: str = "",
        token_lifetime_seconds: int = 300,
        events_expiration_seconds: int | None = None,
        now: Callable[[], dt.datetime] | None = None,
        roles: tuple[str, ...] = ("view-events", "view-users", "view-realm"),
        realm_id: str = "5f1c9a2e-7d3b-4e8a-9c41-0b6e2d7f8a13",
        utc_offset_minutes: int = 0,
    ) -> None:
        super().__init__()
        self.realm = realm
        self.realm_id = realm_id
        # The server's time zone: whole days in dateFrom/dateTo are its local midnights.
        self.utc_offset_minutes = utc_offset_minutes
        self.client_id = client_id
        self.client_secret = client_secret
        self.base_path = base_path.rstrip("/")
        self.token_lifetime_seconds = token_lifetime_seconds
        self.events_expiration_seconds = events_expiration_seconds
        self.now = now or (lambda: dt.datetime.now(UTC))
        self.roles = roles
        self.events: list[dict[str, Any]] = []
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.tokens_issued = 0
        self.unauthorized_responses = 0
        self.expire_tokens_after_requests: int | None = None
        self._authenticated_requests = 0
        self._seq = itertools.count()
        self.users: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}  # id -> {id, name, parentId, members: [user ids]}
        self.organizations_enabled = False
        self.organizations_need_manage_realm = False
        self.organizations: dict[str, dict[str, Any]] = {}  # id -> {id, name, alias, members: [...]}

    @property
    def base_url(self) -> str:
        return self.url + self.base_path

    # -- data ------------------------------------------------------------------

    def add_event(
        self,
        time: dt.datetime | int,
        user_id: str | None,
        *,
        type: str = "LOGIN",
        session_id: str | None = None,
        client_id: str = "renku",
        ip_address: str = "192.0.2.17",
        username: str = "jane.doe@example.org",
        error: str | None = None,
        drop: tuple[str, ...] = (),
        realm_id: str | None = None,
    ) -> dict[str, Any]:
        """Store an event record as Keycloak returns it; ``drop`` removes keys (malformed records)."""
        record: dict[str, Any] = {
            "time": to_ms(time),
            "type": type,
            "realmId": realm_id or self.realm_id,
            "clientId": client_id,
            "userId": user_id,
            "sessionId": session_id or str(uuid.uuid4()),
            "ipAddress": ip_address,
            "error": error,
            "details": {
                "auth_method": "openid-connect",
                "redirect_uri": "https://renku.example.org/",
                "code_id": str(uuid.uuid4()),
                "username": username,
            },
        }
        record["_time"] = record["time"]  # the stored time, used by the filters even if dropped
        for key in drop:
            record.pop(key, None)
        record["_seq"] = next(self._seq)  # insertion order, for stable sorting of equal times
        self.events.append(record)
        return record

    def add_login(self, time: dt.datetime | int, user_id: str, **kwargs: Any) -> dict[str, Any]:
        return self.add_event(time, user_id, type="LOGIN", **kwargs)

    def add_user(self, user_id: str | None = None, email: str | None = None, username: str | None = None) -> str:
        user_id = user_id or str(uuid.uuid4())
        n = len(self.users)
        self.users[user_id] = {
            "id": user_id,
            "username": username or f"user{n}",
            "firstName": "Jane",
            "lastName": f"Doe{n}",
            "email": email,
            "emailVerified": True,
            "enabled": True,
            "createdTimestamp": 1700000000000 + n,
            "attributes": {"affiliation": ["somewhere"]},
        }
        return user_id

    def add_group(self, name: str, parent: str | None = None, members: list[str] = ()) -> str:
        """A group (under ``parent``, a group id) with direct ``members`` (user ids, added as users)."""
        group_id = str(uuid.uuid4())
        self.groups[group_id] = {"id": group_id, "name": name, "parentId": parent, "members": []}
        for user in members:
            self.add_member(group_id, user)
        return group_id

    def add_member(self, group_id: str, user_id: str) -> None:
        if user_id not in self.users:
            self.add_user(user_id, email=f"{user_id[:8]}@example.org")
        if user_id not in self.groups[group_id]["members"]:
            self.groups[group_id]["members"].append(user_id)

    def remove_member(self, group_id: str, user_id: str) -> None:
        self.groups[group_id]["members"].remove(user_id)

    def add_organization(self, name: str, members: list[str] = (), alias: str | None = None) -> str:
        org_id = str(uuid.uuid4())
        for user in members:
            if user not in self.users:
                self.add_user(user, email=f"{user[:8]}@example.org")
        self.organizations[org_id] = {
            "id": org_id,
            "name": name,
            "alias": alias or name.lower().replace(" ", "-"),
            "enabled": True,
            "description": "",
            "domains": [],
            "members": list(members),
        }
        return org_id

    def group_path(self, group_id: str) -> str:
        group = self.groups[group_id]
        parent = group["parentId"]
        return (self.group_path(parent) if parent else "") + "/" + group["name"]

    def revoke_tokens(self) -> None:
        """Every issued token becomes invalid (as if it had expired)."""
        self.tokens.clear()

    # -- routes ----------------------------------------------------------------

    def route(self, request: Request) -> Response:
        prefix = self.base_path
        token_path = f"{prefix}/realms/{self.realm}/protocol/openid-connect/token"
        events_path = f"{prefix}/admin/realms/{self.realm}/events"
        if request.path == token_path and request.method == "POST":
            return self._token(request)
        if request.path == events_path and request.method == "GET":
            return self._events(request)
        if request.path == f"{prefix}/admin/realms/{self.realm}" and request.method == "GET":
            return self._realm(request)
        admin = f"{prefix}/admin/realms/{self.realm}"
        if request.method == "GET" and request.path.startswith(admin + "/"):
            answer = self._directory(request, request.path[len(admin) :])
            if answer is not None:
                return answer
        if re.fullmatch(rf"{re.escape(prefix)}/(admin/)?realms/[^/]+(/.*)?", request.path):
            return Response.json({"error": "Realm not found."}, status=404)
        return Response.json({"error": "RESTEASY003210: Could not find resource"}, status=404)

    def _token(self, request: Request) -> Response:
        form = request.form()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.header("Authorization")
        if basic and basic.startswith("Basic "):
            decoded = base64.b64decode(basic[6:]).decode("utf-8")
            client_id, _, client_secret = decoded.partition(":")
            client_id, client_secret = unquote(client_id), unquote(client_secret)
        if form.get("grant_type") != "client_credentials":
            return Response.json({"error": "unsupported_grant_type"}, status=400)
        if client_id != self.client_id or client_secret != self.client_secret:
            return Response.json(
                {"error": "unauthorized_client", "error_description": "Invalid client or Invalid client credentials"},
                status=401,
            )
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.token_lifetime_seconds
        self.tokens_issued += 1
        return Response.json(
            {
                "access_token": token,
                "expires_in": self.token_lifetime_seconds,
                "refresh_expires_in": 0,
                "token_type": "Bearer",
                "not-before-policy": 0,
                "scope": "profile email",
            }
        )

    def _realm(self, request: Request) -> Response:
        denied = self._authorized(request, any_of=())
        if denied is not None:
            return denied
        if "view-realm" not in self.roles:
            return Response.json({"realm": self.realm})
        expiration = self.events_expiration_seconds
        return Response.json(
            {
                "id": self.realm_id,
                "realm": self.realm,
                "enabled": True,
                "eventsEnabled": True,
                **({"eventsExpiration": expiration} if expiration else {}),
            }
        )

    def _authorized(self, request: Request, any_of: tuple[str, ...] = ("view-events",)) -> Response | None:
        header = request.header("Authorization") or ""
        token = header[7:] if header.startswith("Bearer ") else ""
        expiry = self.tokens.get(token)
        if expiry is None or expiry <= time.monotonic():
            self.tokens.pop(token, None)
            self.unauthorized_responses += 1
            return Response.json({"error": "HTTP 401 Unauthorized"}, status=401)
        if any_of and not set(any_of) & set(self.roles):
            return Response.json({"error": "unknown_error"}, status=403)
        self._authenticated_requests += 1
        limit = self.expire_tokens_after_requests
        if limit is not None and self._authenticated_requests % limit == 0:
            # This request still succeeds; the token is dead for the next one.
            self.tokens.pop(token, None)
        return None

    def _purge_expired(self) -> None:
        if self.events_expiration_seconds is None:
            return
        cutoff = to_ms(self.now()) - self.events_expiration_seconds * 1000
        self.events = [e for e in self.events if e["_time"] >= cutoff]

    def _date_ms(self, value: str) -> int | None:
        if value.isdigit():
            return int(value)
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            return None
        local = dt.timezone(dt.timedelta(minutes=self.utc_offset_minutes))
        return to_ms(dt.datetime(day.year, day.month, day.day, tzinfo=local))

    def _events(self, request: Request) -> Response:
        denied = self._authorized(request)
        if denied is not None:
            return denied
        self._purge_expired()
        selected = self.events
        types = request.query.get("type") or []
        if types:
            selected = [e for e in selected if e["type"] in types]
        for name, key in (("client", "clientId"), ("user", "userId")):
            value = request.arg(name)
            if value is not None:
                selected = [e for e in selected if e.get(key) == value]
        date_from, date_to = request.arg("dateFrom"), request.arg("dateTo")
        if date_from is not None:
            start = self._date_ms(date_from)
            if start is None:
                return Response.json(
                    {"error": "Invalid value for 'Date(From)', expected format is yyyy-MM-dd"}, status=400
                )
            selected = [e for e in selected if e["_time"] >= start]
        if date_to is not None:
            end = self._date_ms(date_to)
            if end is None:
                return Response.json(
                    {"error": "Invalid value for 'Date(To)', expected format is yyyy-MM-dd"}, status=400
                )
            selected = [e for e in selected if e["_time"] <= end]
        selected = sorted(selected, key=lambda e: (e["_time"], e["_seq"]), reverse=True)
        first = int(request.arg("first") or 0)
        size = int(request.arg("max") or 100)
        page = selected[first : first + size]
        return Response.json([{k: v for k, v in e.items() if not k.startswith("_")} for e in page])

    # -- groups, users, organizations -----------------------------------------

    @staticmethod
    def _paged(request: Request, items: list[Any], default_max: int) -> Response:
        first = int(request.arg("first") or 0)
        size = int(request.arg("max") or default_max)
        return Response.json(items[first : first + size] if size >= 0 else items[first:])

    def _group_json(self, group_id: str, brief: bool = True) -> dict[str, Any]:
        group = self.groups[group_id]
        children = [g for g in self.groups.values() if g["parentId"] == group_id]
        out = {
            "id": group_id,
            "name": group["name"],
            "path": self.group_path(group_id),
            "parentId": group["parentId"],
            "subGroupCount": len(children),
            "subGroups": [],
        }
        if not brief:
            out["attributes"] = {}
        return out

    def _user_json(self, user_id: str, brief: bool) -> dict[str, Any]:
        user = dict(self.users[user_id])
        if brief:
            user.pop("attributes", None)
        return user

    def _directory(self, request: Request, path: str) -> Response | None:
        view_users = ("view-users", "manage-users")
        brief = (request.arg("briefRepresentation") or "false") == "true"
        if path == "/groups":
            denied = self._authorized(request, ("view-users", "manage-users", "query-groups"))
            if denied is not None:
                return denied
            top = [self._group_json(g) for g in self.groups if self.groups[g]["parentId"] is None]
            return self._paged(request, sorted(top, key=lambda g: g["name"]), 100)
        if path.startswith("/group-by-path/"):
            denied = self._authorized(request, ("view-users", "manage-users", "query-groups"))
            if denied is not None:
                return denied
            wanted = "/" + unquote(path[len("/group-by-path/") :]).strip("/")
            for group_id in self.groups:
                if self.group_path(group_id) == wanted:
                    return Response.json(self._group_json(group_id, brief=False))
            return Response.json({"error": "Group path does not exist"}, status=404)
        match = re.fullmatch(r"/groups/([^/]+)/(children|members)", path)
        if match:
            denied = self._authorized(request, view_users)
            if denied is not None:
                return denied
            group_id, what = match.groups()
            if group_id not in self.groups:
                return Response.json({"error": "Could not find group by id"}, status=404)
            if what == "children":
                kids = sorted((g for g in self.groups.values() if g["parentId"] == group_id), key=lambda g: g["name"])
                return self._paged(request, [self._group_json(g["id"]) for g in kids], 10)
            members = [self._user_json(u, brief) for u in self.groups[group_id]["members"]]
            return self._paged(request, members, 100)
        if path == "/users":
            denied = self._authorized(request, view_users)
            if denied is not None:
                return denied
            return self._paged(request, [self._user_json(u, brief) for u in self.users], 100)
        match = re.fullmatch(r"/organizations(?:/([^/]+)/members)?", path)
        if match:
            needed = ("manage-realm",) if self.organizations_need_manage_realm else view_users
            denied = self._authorized(request, needed)
            if denied is not None:
                return denied
            if not self.organizations_enabled:
                return Response.json({"error": "Organizations not enabled for this realm."}, status=404)
            org_id = match.group(1)
            if org_id is None:
                orgs = [{k: v for k, v in o.items() if k != "members"} for o in self.organizations.values()]
                return self._paged(request, orgs, 10)
            if org_id not in self.organizations:
                return Response.json({"error": "Organization not found"}, status=404)
            members = [
                {**self._user_json(u, False), "membershipType": "UNMANAGED"}
                for u in self.organizations[org_id]["members"]
            ]
            return self._paged(request, members, 10)
        return None
