"""A local chat incoming-webhook receiver: Slack and Mattermost, as their documentation describes.

``POST /services/<id>`` behaves like a Slack incoming webhook: JSON with ``text`` and/or
``blocks``; answers 200 ``ok``; a body that is not JSON or has neither gets 400
``invalid_payload``; blocks over Slack's limits (more than 50, a section text over 3,000
characters) get 400 ``invalid_blocks``. ``POST /hooks/<key>`` behaves like a Mattermost
incoming webhook: JSON with Markdown ``text`` (``channel``, ``username`` optional); answers
200 ``ok``; no ``text`` gets 400 with Mattermost's JSON error body.

On demand (``plan(path, *responses)``) the next requests to a path get given answers
instead: ``(429, "rate_limited", {"Retry-After": "1"})``, ``(500, ...)``, ``(404,
"channel_not_found")``, ``(410, "channel_is_archived")`` and so on, one per request, then
the normal behaviour again. Every request is recorded (path, JSON body, the status it got).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    body: dict | None
    status: int


@dataclass
class WebhookSim:
    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    planned: dict[str, list[tuple[int, str, dict]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def plan(self, path: str, *responses: tuple) -> None:
        """Answer the next requests to ``path`` with ``responses`` (status, body[, headers]), in order."""
        with self.lock:
            self.planned.setdefault(path, []).extend((r[0], r[1], r[2] if len(r) > 2 else {}) for r in responses)

    def accepted(self, path: str) -> list[Received]:
        """The messages a channel at ``path`` shows: requests answered 200."""
        return [r for r in self.requests if r.path == path and r.status == 200]

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _slack(body: dict | None) -> tuple[int, str]:
    if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
        return 400, "invalid_payload"
    blocks = body.get("blocks") or []
    if len(blocks) > 50:
        return 400, "invalid_blocks"
    for block in blocks:
        if block.get("type") == "section" and len(block.get("text", {}).get("text", "")) > 3000:
            return 400, "invalid_blocks"
    return 200, "ok"


def _mattermost(body: dict | None) -> tuple[int, str]:
    if not isinstance(body, dict) or not body.get("text"):
        error = {
            "id": "web.incoming_webhook.text.app_error",
            "message": "No text specified.",
            "status_code": 400,
        }
        return 400, json.dumps(error)
    return 200, "ok"


def start_webhook_sim() -> WebhookSim:
    sim: WebhookSim

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with sim.lock:
                queue = sim.planned.get(self.path) or []
                planned = queue.pop(0) if queue else None
            if planned is not None:
                status, text, headers = planned
            elif self.path.startswith("/services/"):
                status, text, headers = (*_slack(body), {})
            elif self.path.startswith("/hooks/"):
                status, text, headers = (*_mattermost(body), {})
            else:
                status, text, headers = 404, "no_service", {}
            with sim.lock:
                sim.requests.append(Received(self.path, body, status))
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sim = WebhookSim(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return sim
