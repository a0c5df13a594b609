"""Group membership of one deployment, from where it lives: the ``groups:`` key of deployments.yaml.

A deployment's ``groups`` mapping (all keys optional)::

    groups:
      min_size: 5                        # groups with fewer members get their counts withheld
      keycloak_groups:                   # Keycloak groups, by path
        - path: /SDSC/Academic Team
          subgroups: true                # members of subgroups count too (default true)
      organizations: true                # Keycloak Organizations (Keycloak 26+), as institutions
      email_domains:                     # institution by e-mail domain, subdomains included
        ethz.ch: ETH Zurich
        epfl.ch: EPFL
      user_lists:                        # teams Keycloak does not model: a YAML file of Keycloak ids
        - name: Pilot team
          file: groups/pilot_team.yaml   # relative to the deployments file; `users: [<id>, ...]`

Keycloak groups, organizations and the e-mail domain map read the deployment's
*directory*: the realm of its ``sources.keycloak`` (same URL, realm, client and
secret; the client's service account needs the realm-management role
``view-users``), or, for a synthetic deployment, its ``sources.demo`` generator.

Every member becomes the pseudonymous user key the events carry
(``pseudonymize_user`` of the Keycloak user id), so members join events directly.
An e-mail address is read only to look up its domain and dropped at once: it is
never stored, logged or returned. ``group_kind`` is one of ``GROUP_KINDS``.
No Dagster in here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Protocol

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import pseudonymize_user
from renku_metrics.core.validation import YamlError, load_yaml, one_line

GROUP_KINDS = ("keycloak_group", "organization", "email_domain", "user_list")
DEFAULT_MIN_SIZE = 5
MEMBERSHIP_COLUMNS = ("group", "group_kind", "user_key")

_Text = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class KeycloakGroupEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    path: _Text  # the group's full path, e.g. /SDSC/Academic Team
    subgroups: bool = True  # count members of every subgroup (Keycloak returns direct members only)


class UserListEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: _Text  # the group's name in the metrics
    file: _Text  # a YAML file `users: [<Keycloak user id>, ...]`, relative to the deployments file


class GroupsSettings(BaseModel):
    """The ``groups`` key of one deployment (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    min_size: Annotated[int, Field(ge=1)] = DEFAULT_MIN_SIZE
    keycloak_groups: tuple[KeycloakGroupEntry, ...] = ()
    organizations: bool = False
    # (domain, institution) pairs: written as a mapping, kept as pairs so that settings stay hashable.
    email_domains: tuple[tuple[_Text, _Text], ...] = ()
    user_lists: tuple[UserListEntry, ...] = ()
    # Where relative user-list files are found: the deployments file's folder (set when loading).
    base_dir: str = ""

    @property
    def uses_directory(self) -> bool:
        return bool(self.keycloak_groups or self.organizations or self.email_domains)

    @classmethod
    def from_mapping(cls, raw: Any, where: str, base_dir: str) -> GroupsSettings:
        """Validated settings; a ConfigError naming ``where`` (file, deployment) and the key."""
        where = f"{where}: groups"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
        raw = dict(raw)
        allowed = [n for n in cls.model_fields if n != "base_dir"]
        if "base_dir" in raw:
            raise ConfigError(f"{where}: unknown key 'base_dir' (allowed: {', '.join(sorted(allowed))})")
        for key in ("keycloak_groups", "user_lists"):
            if isinstance(raw.get(key), list):
                raw[key] = tuple(raw[key])
        domains = raw.get("email_domains")
        if domains is not None:
            if not isinstance(domains, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in domains.items()
            ):
                raise ConfigError(
                    f"{where}.email_domains: expected a mapping of domain -> institution, got {domains!r}"
                )
            raw["email_domains"] = tuple(domains.items())
        try:
            settings = cls.model_validate({**raw, "base_dir": base_dir})
        except ValidationError as exc:
            for error in exc.errors():
                loc = tuple(error["loc"])
                if error["type"] == "extra_forbidden" and len(loc) == 3:  # a key inside a list entry
                    entry = {"keycloak_groups": KeycloakGroupEntry, "user_lists": UserListEntry}[loc[0]]
                    raise ConfigError(
                        f"{where}.{loc[0]}[{loc[1]}]: unknown key {loc[2]!r} (allowed: {', '.join(entry.model_fields)})"
                    ) from None
            raise ConfigError(one_line(exc, where, allowed)) from None
        paths = [g.path for g in settings.keycloak_groups]
        for i, path in enumerate(paths):
            if not path.startswith("/") or path.endswith("/") or "//" in path:
                raise ConfigError(f"{where}.keycloak_groups[{i}].path: a group path like /Parent/Team, got {path!r}")
            if path in paths[:i]:
                raise ConfigError(f"{where}.keycloak_groups[{i}].path: {path!r} is listed twice")
        for domain, _ in settings.email_domains:
            if not _DOMAIN.match(domain.lower()):
                raise ConfigError(f"{where}.email_domains: {domain!r} is not a domain name like ethz.ch")
        lowered = [d.lower() for d, _ in settings.email_domains]
        if len(set(lowered)) != len(lowered):
            raise ConfigError(f"{where}.email_domains: a domain is listed twice (domains ignore case)")
        names = [u.name for u in settings.user_lists]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"{where}.user_lists[{i}].name: {name!r} is listed twice")
        return settings

    def user_list_path(self, entry: UserListEntry) -> Path:
        path = Path(entry.file)
        return path if path.is_absolute() else Path(self.base_dir) / path


class Directory(Protocol):
    """Where a deployment's users and groups live: its Keycloak realm, or the demo generator."""

    def group_members(self, path: str, subgroups: bool) -> set[str]:
        """Keycloak user ids of the group at ``path`` (and of its subgroups when asked)."""

    def organizations(self) -> dict[str, set[str]]:
        """{organization name: Keycloak user ids of its members}."""

    def users(self) -> Iterator[tuple[str, str | None]]:
        """(Keycloak user id, e-mail or None) of every user; the e-mail is for one lookup only."""


def institution_of(email: str | None, domains: Mapping[str, str]) -> str | None:
    """The institution of an e-mail address by its domain: the most specific configured domain
    equal to it or a parent of it (``inf.ethz.ch`` matches ``ethz.ch``); case does not matter."""
    if not email or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].strip().lower().rstrip(".")
    lowered = {k.lower(): v for k, v in domains.items()}
    labels = domain.split(".")
    for i in range(len(labels) - 1):
        found = lowered.get(".".join(labels[i:]))
        if found is not None:
            return found
    return None


def read_user_list(path: Path, where: str) -> list[str]:
    """The Keycloak user ids of a user-list file (``users: [<id>, ...]``); a ConfigError naming the file."""
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: file {path} not found") from None
    except YamlError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc} ({where})") from None
    if not isinstance(raw, Mapping) or set(raw) != {"users"}:
        raise ConfigError(f"{path}: expected a single key 'users' with a list of Keycloak user ids ({where})")
    users = raw["users"]
    if not isinstance(users, list):
        raise ConfigError(f"{path}: users must be a list of Keycloak user ids ({where})")
    for i, user in enumerate(users):
        if not isinstance(user, str) or not user.strip() or "@" in user:
            raise ConfigError(f"{path}: users[{i}]: expected a Keycloak user id, got {type(user).__name__} ({where})")
    return [u.strip() for u in users]


def extract_membership(settings: GroupsSettings, directory: Directory | None, where: str) -> pd.DataFrame:
    """Who belongs to which configured group now: columns group, group_kind, user_key (sorted, unique).

    ``directory`` may be None only when no Keycloak group, organization or domain map is configured.
    """
    rows: set[tuple[str, str, str]] = set()
    if settings.uses_directory and directory is None:
        raise ConfigError(f"{where}: groups need a directory: sources.keycloak (or sources.demo)")
    for entry in settings.keycloak_groups:
        for user_id in directory.group_members(entry.path, entry.subgroups):
            rows.add((entry.path, "keycloak_group", pseudonymize_user(user_id)))
    if settings.organizations:
        for name, members in directory.organizations().items():
            for user_id in members:
                rows.add((name, "organization", pseudonymize_user(user_id)))
    if settings.email_domains:
        domains = dict(settings.email_domains)
        for user_id, email in directory.users():
            institution = institution_of(email, domains)
            del email  # read for this lookup only
            if institution is not None:
                rows.add((institution, "email_domain", pseudonymize_user(user_id)))
    for i, entry in enumerate(settings.user_lists):
        ids = read_user_list(settings.user_list_path(entry), f"{where}: groups.user_lists[{i}].file")
        for user_id in ids:
            rows.add((entry.name, "user_list", pseudonymize_user(user_id)))
    frame = pd.DataFrame(sorted(rows), columns=list(MEMBERSHIP_COLUMNS), dtype="object")
    return frame


def directory_for(
    deployment_name: str, sources: Mapping[str, Any], env: Mapping[str, str], on: dt.date
) -> tuple[Directory | None, bool]:
    """The deployment's directory and whether it knows past membership (the demo does; Keycloak does not).

    ``on`` is the day whose membership a directory with history reconstructs.
    """
    if "keycloak" in sources:
        from renku_metrics.core.sources.keycloak_groups import KeycloakDirectory

        return KeycloakDirectory(deployment_name, sources["keycloak"], env), False
    if "demo" in sources:
        from renku_metrics.core.sources.demo import DemoDirectory

        return DemoDirectory(sources["demo"], on), True
    return None, False
