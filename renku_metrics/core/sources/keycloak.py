"""Keycloak: ``login`` events from the realm's admin events API (Renku 1.x and 2.x).

How it reads a window [start, end)
----------------------------------
1. A client-credentials token from ``{url}/realms/{realm}/protocol/openid-connect/token``
   (the client's service account needs the realm-management roles ``view-events``
   and ``view-users``). The token is renewed shortly before ``expires_in`` runs
   out, and at once if the API answers 401 (expired or revoked mid-extract).
2. The realm's internal id, once: ``GET {url}/admin/realms/{realm}`` (``id``; needs the
   role ``view-realm``), or the configured ``realm_id``. Records carry it as ``realmId``;
   another realm's records are left out and counted (``other_realm_records``).
   ``GET {url}/admin/realms/{realm}/events?type=LOGIN&dateFrom=&dateTo=&first=&max=``.
   ``dateFrom``/``dateTo`` are whole days whose exact meaning depends on the
   Keycloak release and the server's time zone (older releases compare
   ``time <= dateTo 00:00`` in server time). So the query covers the window's
   days widened by ``date_margin_days`` (at least 1: server time zones reach 14 hours
   off UTC) on both sides, and every record is
   filtered by its epoch-millisecond ``time`` to the exact window.
   Paging: results are newest first; ``first`` is an offset and ``max`` a page
   size. We ask for ``page_size + 1`` records and keep ``page_size``: an extra
   record means a next page exists, so a last page that is exactly full needs
   no empty extra request. Reading stops once a page reaches records older
   than the window start (everything after them is older still).
3. Coverage. Renku enables events with ``eventsExpiration`` = 1 day, so a late
   extract can find part of its window already deleted. Expiration deletes every
   event older than a cut-off, so one retained LOGIN event older than the window
   start proves the whole window is still there. If the query above saw none, a
   cheap probe (``dateTo`` = the query's first day, ``max=1``) looks for the newest
   event before that. Without such proof the result is ``complete=False`` with a
   coverage note and ``stats["oldest_retained_event"]``.

Privacy: ``userId`` is stored only pseudonymized (``pseudonymize_user``);
``ipAddress`` and ``details`` (which hold the username) are never stored, not
even in rejected records.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.events import (
    RejectedRecord,
    SourceResult,
    TimeWindow,
    make_event_id,
    pseudonymize_user,
)
from renku_metrics.core.sources.base import SettingsBase, read_secret
from renku_metrics.core.sources.http import HttpClient, HttpSettings, validate_base_url

log = logging.getLogger(__name__)

SOURCE_NAME = "keycloak"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# Record fields that may be kept in a rejected record; everything else
# (ipAddress, details with the username, the raw userId) is dropped.
_SAFE_FIELDS = ("time", "type", "realmId", "clientId", "error")


class Settings(SettingsBase):
    url: str  # Keycloak base URL, including any path prefix (renkulab.io: https://renkulab.io/auth)
    realm: str  # Renku's realm is "Renku"
    client_id: str  # a confidential client with a service account (view-events, view-users)
    client_secret_env: str  # environment variable holding that client's secret
    page_size: int = 100  # records per events page (Keycloak's own default is 100)
    # (inferred) Whole-day date parameters are interpreted in the server's time
    # zone and, depending on the release, dateTo may end at that day's midnight:
    # widen the queried days by this much and filter exactly by epoch ms. At least
    # 1: a server's zone may be up to 14 hours off UTC, and 0 would lose those hours.
    date_margin_days: int = 1
    # The realm's internal id, which LOGIN records carry as realmId (it may differ from
    # the realm's name). Unset: read once from GET /admin/realms/{realm} (role view-realm).
    realm_id: str | None = None
    timeout_seconds: float = 30.0
    max_retries: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0

    def validate(self, where: str) -> None:
        validate_base_url(self.url, f"{where}.url")
        if "/" in self.realm:
            raise ConfigError(f"{where}.realm: a realm name, not a path, got {self.realm!r}")
        if self.page_size < 1:
            raise ConfigError(f"{where}.page_size: must be >= 1, got {self.page_size}")
        check_date_margin(self.date_margin_days, f"{where}.date_margin_days")
        if self.realm_id is not None and not self.realm_id.strip():
            raise ConfigError(f"{where}.realm_id: empty (leave it out to read it from the realm)")
        self.http_settings().validate(where)

    def http_settings(self) -> HttpSettings:
        return HttpSettings(
            timeout_seconds=self.timeout_seconds,
            max_retries=self.max_retries,
            backoff_seconds=self.backoff_seconds,
            max_backoff_seconds=self.max_backoff_seconds,
            max_concurrency=1,  # one sequential offset-paged query: nothing to parallelize
        )


# Time zones lie between UTC-12 and UTC+14: a whole-day query widened by one day on both sides
# covers a UTC day on any server; not widened, it misses up to 14 hours of it.
MIN_DATE_MARGIN_DAYS, MAX_DATE_MARGIN_DAYS = 1, 7


def check_date_margin(value: int, where: str) -> None:
    """Refuse a whole-day query margin that cannot cover every server time zone."""
    if not MIN_DATE_MARGIN_DAYS <= value <= MAX_DATE_MARGIN_DAYS:
        raise ConfigError(
            f"{where}: must be between {MIN_DATE_MARGIN_DAYS} and {MAX_DATE_MARGIN_DAYS}, got {value} (the "
            "server reads whole days in its own time zone, up to 14 hours off UTC: a margin of 0 loses "
            "the events of those hours while the day says complete)"
        )


class ClientCredentialsAuth:
    """An OAuth2 client-credentials access token, fetched lazily and renewed before it expires."""

    renewable = True

    def __init__(
        self,
        client: HttpClient,
        token_path: str,
        client_id: str,
        client_secret: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._token_path = token_path
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.tokens_fetched = 0

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._fetch()
            return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> None:
        body, _ = self._client.request_json(
            "POST",
            self._token_path,
            data={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
            authenticate=False,
            expect=dict,
        )
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise self._client.error(
                "POST", self._client.url_for(self._token_path), "token response without access_token"
            )
        self._client.add_secret(token)
        try:
            lifetime = float(body.get("expires_in", 60))
        except (TypeError, ValueError):
            lifetime = 60.0
        # Renew a little early so a token never expires between check and use.
        self._renew_at = self._clock() + max(0.0, lifetime - min(30.0, lifetime * 0.1))
        self._token = token
        self.tokens_fetched += 1


def _to_ms(moment: dt.datetime) -> int:
    return (moment - EPOCH) // dt.timedelta(milliseconds=1)


def _from_ms(ms: int) -> dt.datetime:
    # Integer arithmetic: float seconds could turn .999 into .998999.
    return EPOCH + dt.timedelta(milliseconds=ms)


def _iso(ms: int) -> str:
    return _from_ms(ms).isoformat(timespec="milliseconds")


def safe_record(record: Any) -> dict[str, Any]:
    """A rejected record without personal data: no IP, no username, no raw user id."""
    if not isinstance(record, Mapping):
        return {"record_type": type(record).__name__}
    safe = {key: record[key] for key in _SAFE_FIELDS if key in record}
    user_id = record.get("userId")
    if isinstance(user_id, str) and user_id:
        safe["user_key"] = pseudonymize_user(user_id)
    safe["has_session_id"] = bool(record.get("sessionId"))
    return safe


class Source:
    name = SOURCE_NAME

    def __init__(
        self,
        deployment: str,
        settings: Settings,
        env: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployment = deployment
        self.settings = settings
        where = f"deployment {deployment!r}: sources.keycloak"
        settings.validate(where)
        secret = read_secret(env, settings.client_secret_env, f"{where}.client_secret_env")
        base = settings.url.rstrip("/")
        self.client = HttpClient(
            base,
            deployment=deployment,
            source=SOURCE_NAME,
            settings=settings.http_settings(),
            secrets=[secret],
        )
        self.auth = ClientCredentialsAuth(
            self.client,
            f"/realms/{settings.realm}/protocol/openid-connect/token",
            settings.client_id,
            secret,
            clock=clock,
        )
        self.client.auth = self.auth
        self.realm_path = f"/admin/realms/{settings.realm}"
        self.events_path = f"{self.realm_path}/events"
        self._realm_id = settings.realm_id

    def realm_id(self) -> str:
        """The realm's internal id (LOGIN records' realmId): configured, or read once from the realm."""
        if self._realm_id is None:
            body = self.client.get_json(self.realm_path, expect=dict)
            realm_id = body.get("id")
            if not isinstance(realm_id, str) or not realm_id:
                raise self.client.error(
                    "GET",
                    self.client.url_for(self.realm_path),
                    "the realm's representation carries no id (the service account lacks the realm-management "
                    "role view-realm): grant view-realm, or set sources.keycloak.realm_id",
                )
            self._realm_id = realm_id
        return self._realm_id

    # -- reading ---------------------------------------------------------------

    def _query_days(self, window: TimeWindow) -> tuple[dt.date, dt.date]:
        margin = dt.timedelta(days=self.settings.date_margin_days)
        return (window.start - margin).date(), (window.end + margin).date()

    def _read_window(self, window: TimeWindow) -> list[Any]:
        """All LOGIN records of the query days down to the first one older than the window."""
        date_from, date_to = self._query_days(window)
        start_ms = _to_ms(window.start)
        size = self.settings.page_size
        records: list[Any] = []
        first = 0
        while True:
            page = self.client.get_json(
                self.events_path,
                params=[
                    ("type", "LOGIN"),
                    ("dateFrom", date_from.isoformat()),
                    ("dateTo", date_to.isoformat()),
                    ("first", first),
                    ("max", size + 1),
                ],
                expect=list,
            )
            kept = page[:size]
            records.extend(kept)
            if len(page) <= size:
                return records  # no extra record: this was the last page
            times = [r.get("time") for r in kept if isinstance(r, Mapping) and isinstance(r.get("time"), int)]
            if times and min(times) < start_ms:
                return records  # newest first: the rest is older than the window
            first += size

    def _probe_older(self, window: TimeWindow) -> int | None:
        """Time of the newest retained LOGIN event before the main query's first day, if any."""
        date_from, _ = self._query_days(window)
        page = self.client.get_json(
            self.events_path,
            params=[("type", "LOGIN"), ("dateTo", date_from.isoformat()), ("first", 0), ("max", 1)],
            expect=list,
        )
        for record in page:
            if isinstance(record, Mapping) and isinstance(record.get("time"), int):
                return record["time"]
        return None

    # -- extract ---------------------------------------------------------------

    def extract(self, window: TimeWindow) -> SourceResult:
        start_ms, end_ms = _to_ms(window.start), _to_ms(window.end)
        self.client.reset_stats()  # this window's requests only
        realm_id = self.realm_id()
        records = self._read_window(window)
        other_realm = 0

        events: dict[str, dict[str, Any]] = {}
        rejected: list[RejectedRecord] = []
        seen_times: list[int] = []
        for record in records:
            if not isinstance(record, Mapping):
                rejected.append(RejectedRecord(SOURCE_NAME, "event record is not an object", safe_record(record)))
                continue
            moment = record.get("time")
            if isinstance(moment, bool) or not isinstance(moment, int):
                rejected.append(RejectedRecord(SOURCE_NAME, "missing or non-integer time", safe_record(record)))
                continue
            record_realm = record.get("realmId")
            if record_realm is not None and record_realm != realm_id:
                other_realm += 1  # another realm's record: never a login of this deployment
                continue
            seen_times.append(moment)
            if not start_ms <= moment < end_ms:
                continue
            user_id = record.get("userId")
            if not isinstance(user_id, str) or not user_id.strip():
                rejected.append(RejectedRecord(SOURCE_NAME, "missing userId", safe_record(record)))
                continue
            if record.get("type", "LOGIN") != "LOGIN":
                rejected.append(RejectedRecord(SOURCE_NAME, "not a LOGIN event", safe_record(record)))
                continue
            if record.get("error"):
                rejected.append(RejectedRecord(SOURCE_NAME, "LOGIN event carrying an error", safe_record(record)))
                continue
            event_id = make_event_id(
                self.deployment,
                SOURCE_NAME,
                user_id,
                moment,
                record.get("sessionId") or "",
                record.get("clientId") or "",
            )
            # Offset paging over a list that grows at the front can repeat a record: keep one.
            events[event_id] = {
                "event_id": event_id,
                "deployment": self.deployment,
                "occurred_at": _from_ms(moment),
                "user_id": pseudonymize_user(user_id),
                "action": "login",
                "project_id": None,
                "project_visibility": None,
                "source": SOURCE_NAME,
            }

        stats: dict[str, int | float | str] = {
            "records_read": len(records),
            "logins": len(events),
            "other_realm_records": other_realm,
        }
        if other_realm:
            log.warning(
                "%s/%s: %d record(s) of another realm than %r (realmId %s) left out",
                self.deployment,
                SOURCE_NAME,
                other_realm,
                self.settings.realm,
                realm_id,
            )
        older = [t for t in seen_times if t < start_ms]
        proof = max(older) if older else self._probe_older(window)
        complete, note = True, ""
        if proof is not None and proof < start_ms:
            stats["retained_event_before_window"] = _iso(proof)
        else:
            oldest = min(seen_times + ([proof] if proof is not None else []), default=None)
            oldest_text = _iso(oldest) if oldest is not None else "none"
            stats["oldest_retained_event"] = oldest_text
            complete = False
            note = (
                f"Keycloak retains no LOGIN event older than the window start {window.start.isoformat()} "
                f"(oldest retained LOGIN event: {oldest_text}); logins before that have expired "
                "(realm eventsExpiration; Renku sets one day) and are missing. Raise eventsExpiration "
                "(e.g. 2592000 s = 30 days) and extract each day promptly."
            )
            log.warning("%s/%s: %s", self.deployment, SOURCE_NAME, note)
        stats["token_requests"] = self.auth.tokens_fetched
        stats.update(self.client.stats)
        return SourceResult(
            source=SOURCE_NAME,
            events=list(events.values()),
            rejected=rejected,
            complete=complete,
            coverage_note=note,
            stats=stats,
        )
