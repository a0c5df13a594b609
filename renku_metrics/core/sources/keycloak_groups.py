"""Keycloak as a directory: groups, their members, organizations and users (admin REST API).

Uses the deployment's ``sources.keycloak`` settings and the same client-credentials
token handling and HTTP client as the login extract (``keycloak.Source``). Facts
followed (Keycloak 26):

* ``GET /admin/realms/{realm}/group-by-path/{path}`` finds a group (404: absent);
  subgroups come from ``GET /groups/{id}/children`` (Keycloak 23+, default ``max=10``);
* ``GET /groups/{id}/members`` returns **direct** members only (default ``max=100``),
  so a team with sub-teams is a walk over ``/children``;
* ``GET /organizations`` and ``/organizations/{id}/members`` (Keycloak 26+, default
  ``max=10``; 404 "Organizations not enabled for this realm" otherwise);
* ``GET /users`` lists users;
* every listing is paged with ``first``/``max``: we ask for ``page_size`` and stop at
  the first page shorter than that;
* the client's service account needs the realm-management role ``view-users`` (listing
  groups works with ``query-groups`` alone, their members do not); a 403 says so.
  Some 26.x releases require ``manage-realm`` for the organizations endpoints.

Only user ids leave this module, with each user's e-mail for a domain lookup that the
caller does at once (``users``). Names, usernames and e-mails are never kept or logged.
No Dagster in here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

from renku_metrics.core.sources.base import SourceError
from renku_metrics.core.sources.http import HttpError
from renku_metrics.core.sources.keycloak import Settings
from renku_metrics.core.sources.keycloak import Source as KeycloakSource

VIEW_USERS_HINT = (
    "the client's service account needs the realm-management role view-users "
    "(query-groups alone lists groups but not their members)"
)
ORGANIZATIONS_HINT = (
    "the client's service account needs the realm-management role view-users "
    "(some Keycloak 26.x releases require manage-realm for the organizations endpoints)"
)


class KeycloakDirectory:
    def __init__(self, deployment: str, settings: Settings, env: Mapping[str, str]) -> None:
        self.deployment = deployment
        self.settings = settings
        source = KeycloakSource(deployment, settings, env)  # validates settings, reads the secret
        self.client = source.client
        self.auth = source.auth
        self.admin = f"/admin/realms/{settings.realm}"
        self.page_size = settings.page_size

    # -- HTTP ------------------------------------------------------------------

    def _get(self, path: str, params: list[tuple[str, Any]] | None = None, *, hint: str = VIEW_USERS_HINT, **kw):
        try:
            return self.client.get_json(self.admin + path, params, **kw)
        except HttpError as exc:
            if exc.status == 403:
                raise SourceError(f"{exc}: {hint}") from None
            raise

    def _pages(self, path: str, params: list[tuple[str, Any]] | None = None, *, hint: str = VIEW_USERS_HINT):
        """Every item of a first/max listing: pages until one is shorter than ``max``."""
        first = 0
        while True:
            page = self._get(path, [*(params or []), ("first", first), ("max", self.page_size)], hint=hint, expect=list)
            yield from page
            if len(page) < self.page_size:
                return
            first += len(page)

    # -- directory -------------------------------------------------------------

    def find_group(self, path: str) -> dict[str, Any]:
        encoded = "/".join(quote(part, safe="") for part in path.strip("/").split("/"))
        group = self._get(f"/group-by-path/{encoded}", expect=dict, not_found_ok=True)
        if group is None:
            raise SourceError(
                f"deployment {self.deployment!r}, source 'keycloak': group {path!r} not found in realm "
                f"{self.settings.realm!r} (groups.keycloak_groups: check the path and its case)"
            )
        return group

    def _subgroup_ids(self, group_id: str) -> list[str]:
        """Ids of every group below ``group_id`` (breadth first, each visited once)."""
        found, queue, seen = [], [group_id], {group_id}
        while queue:
            current = queue.pop(0)
            for child in self._pages(f"/groups/{current}/children", [("briefRepresentation", "true")]):
                child_id = child.get("id") if isinstance(child, Mapping) else None
                if isinstance(child_id, str) and child_id not in seen:
                    seen.add(child_id)
                    found.append(child_id)
                    queue.append(child_id)
        return found

    def _members(self, path: str) -> set[str]:
        ids = set()
        for user in self._pages(path, [("briefRepresentation", "true")]):
            user_id = user.get("id") if isinstance(user, Mapping) else None
            if isinstance(user_id, str) and user_id:
                ids.add(user_id)
        return ids

    def group_members(self, path: str, subgroups: bool) -> set[str]:
        group = self.find_group(path)
        group_ids = [group["id"], *(self._subgroup_ids(group["id"]) if subgroups else [])]
        members: set[str] = set()
        for group_id in group_ids:
            members |= self._members(f"/groups/{group_id}/members")
        return members

    def organizations(self) -> dict[str, set[str]]:
        first_page = self._get(
            "/organizations", [("first", 0), ("max", 1)], hint=ORGANIZATIONS_HINT, expect=list, not_found_ok=True
        )
        if first_page is None:
            raise SourceError(
                f"deployment {self.deployment!r}, source 'keycloak': GET {self.admin}/organizations: HTTP 404, "
                "Organizations not enabled for this realm (Keycloak 26+; enable them in the realm settings or "
                "remove groups.organizations)"
            )
        out: dict[str, set[str]] = {}
        for org in self._pages("/organizations", [("briefRepresentation", "true")], hint=ORGANIZATIONS_HINT):
            if not isinstance(org, Mapping) or not isinstance(org.get("id"), str):
                continue
            name = org.get("name") or org.get("alias") or org["id"]
            members = set()
            for user in self._pages(f"/organizations/{org['id']}/members", hint=ORGANIZATIONS_HINT):
                user_id = user.get("id") if isinstance(user, Mapping) else None
                if isinstance(user_id, str) and user_id:
                    members.add(user_id)
            out.setdefault(name, set()).update(members)
        return out

    def users(self) -> Iterator[tuple[str, str | None]]:
        for user in self._pages("/users", [("briefRepresentation", "true")]):
            if not isinstance(user, Mapping) or not isinstance(user.get("id"), str):
                continue
            email = user.get("email")
            yield user["id"], email if isinstance(email, str) else None
