"""Local simulators of the upstream HTTP APIs (Keycloak, GitLab) for the connector tests.

Each simulator is a ``ThreadingHTTPServer`` on 127.0.0.1 with a random port,
started and stopped by test fixtures (or used as a context manager). They follow
the behaviour documented in SOURCES.md (paging, headers, date semantics,
errors) so that the connectors are tested against the real contract, not
against their own assumptions.

Shared here: the server plumbing, a log of received requests, and fault
injection (5xx bursts, 429 rate limiting, truncated or cut-off bodies, delays)
that any simulator can apply to any route.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

UTC = dt.timezone.utc


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8"), keep_blank_values=True).items()}

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        out = {"Content-Type": "application/json"}
        out.update(headers or {})
        return cls(status, json.dumps(payload).encode("utf-8"), out)


@dataclass
class Fault:
    """One injected misbehaviour, applied to the next ``times`` matching requests.

    kind: "status" (answer ``status``, e.g. 502), "rate_limit" (429 with
    Retry-After ``retry_after`` and RateLimit-* headers), "truncate" (the real
    body cut in half, with a matching Content-Length: syntactically broken JSON),
    "cut" (the full Content-Length announced, half the body sent, connection
    closed), "delay" (answer normally after ``delay`` seconds), "html" (HTTP 200
    with an HTML error page, as a proxy sends), "reset" (the connection closed
    without any answer). ``query`` narrows
    the fault to requests carrying these query arguments (e.g. ``{"page": "2"}``).
    """

    kind: str
    times: int = 1
    path_contains: str | None = None
    status: int = 503
    retry_after: int | None = 1
    rate_limit_reset_in: int | None = None
    delay: float = 0.0
    query: dict[str, str] | None = None


class SimulatorServer:
    """Base class: subclasses implement ``route(request) -> Response``."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.faults: list[Fault] = []
        self._chaos: tuple[float, random.Random, list[Fault]] | None = None
        self.chaos_served: dict[str, int] = {}
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests served at once (concurrency tests)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self):
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    method=method,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers=dict(self.headers.items()),
                    body=body,
                )
                sim._dispatch(self, request)

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "simulator not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- faults ----------------------------------------------------------------

    def inject(self, kind: str, times: int = 1, path_contains: str | None = None, **options: Any) -> Fault:
        fault = Fault(kind=kind, times=times, path_contains=path_contains, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def chaos(self, rate: float, faults: list[Fault], seed: int = 0) -> None:
        """From now on a share ``rate`` of requests gets one of ``faults`` (chosen at random, seeded).

        A fault with ``query`` or ``path_contains`` only hits requests it matches.
        """
        with self._lock:
            self._chaos = (rate, random.Random(seed), faults)

    def _take_fault(self, request: Request) -> Fault | None:
        with self._lock:
            if self._chaos is not None:
                rate, rng, faults = self._chaos
                if rng.random() < rate:
                    fault = rng.choice(faults)
                    if (fault.path_contains is None or fault.path_contains in request.path) and all(
                        request.arg(k) == v for k, v in (fault.query or {}).items()
                    ):
                        label = fault.kind if fault.kind != "status" else f"status {fault.status}"
                        self.chaos_served[label] = self.chaos_served.get(label, 0) + 1
                        return fault
            for fault in self.faults:
                if (
                    fault.times > 0
                    and (fault.path_contains is None or fault.path_contains in request.path)
                    and all(request.arg(k) == v for k, v in (fault.query or {}).items())
                ):
                    fault.times -= 1
                    return fault
        return None

    def requests_to(self, fragment: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if fragment in r.path]

    # -- dispatch --------------------------------------------------------------

    def route(self, request: Request) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError

    def _dispatch(self, handler: BaseHTTPRequestHandler, request: Request) -> None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._respond(handler, request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _respond(self, handler: BaseHTTPRequestHandler, request: Request) -> None:
        fault = self._take_fault(request)
        if fault is not None and fault.kind == "reset":
            handler.close_connection = True  # no answer at all: the client sees the connection drop
            return
        if fault is not None and fault.kind == "html":
            response = Response(200, b"<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"})
        elif fault is not None and fault.kind == "status":
            response = Response.json({"message": f"{fault.status} simulated failure"}, status=fault.status)
        elif fault is not None and fault.kind == "rate_limit":
            response = self._rate_limited(fault)
        else:
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.delay)
            with self._lock:
                response = self.route(request)
        body = response.body
        announced = len(body)
        if fault is not None and fault.kind == "truncate":
            body = body[: len(body) // 2]
            announced = len(body)
        elif fault is not None and fault.kind == "cut":
            body = body[: len(body) // 2]
        handler.send_response(response.status)
        for name, value in response.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(announced))
        if fault is not None and fault.kind == "cut":
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()
        if fault is not None and fault.kind == "cut":
            handler.close_connection = True

    def _rate_limited(self, fault: Fault) -> Response:
        """GitLab's 429: body "Retry later" and the RateLimit-* headers."""
        now = int(time.time())
        reset_in = fault.rate_limit_reset_in if fault.rate_limit_reset_in is not None else (fault.retry_after or 60)
        headers = {
            "Content-Type": "text/plain",
            "RateLimit-Limit": "600",
            "RateLimit-Observed": "601",
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(now + reset_in),
            "RateLimit-ResetTime": dt.datetime.fromtimestamp(now + reset_in, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
        }
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return Response(429, b"Retry later\n", headers)


def parse_iso(value: str) -> dt.datetime:
    """ISO 8601 as GitLab accepts it; a naive value is taken as UTC."""
    moment = dt.datetime.fromisoformat(value.strip().replace(" ", "+"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso_ms_z(moment: dt.datetime) -> str:
    """``2015-12-04T10:33:58.089Z``: the form GitLab uses for event times."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
