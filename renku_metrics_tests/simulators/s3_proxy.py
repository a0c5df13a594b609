"""An HTTP proxy in front of the moto S3 server that can misbehave on demand.

Modes, for the next ``times`` requests (then it passes requests through again):

* ``reset``: the connection is closed without any answer (a reset or a dropped
  connection: botocore gets no response at all);
* ``error``: an S3 error answer with the given HTTP status and error ``code``
  (e.g. 403 ``InvalidAccessKeyId``, 403 ``AccessDenied``), as S3 sends it.

``down()`` stops the proxy (the endpoint becomes unreachable); ``up()`` starts
it again on the same port.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests


class S3FaultProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.mode = "pass"
        self.times = 0
        self.code = "AccessDenied"
        self.status = 403
        self.methods: set[str] | None = None  # only these methods misbehave (None: all)
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0

    def fail(self, mode: str, times: int = 10**9, code: str = "AccessDenied", status: int = 403, methods=None):
        with self._lock:
            self.mode, self.times, self.code, self.status = mode, times, code, status
            self.methods = set(methods) if methods else None
        return self

    def _take(self, method: str) -> str:
        with self._lock:
            self.requests += 1
            if self.mode == "pass" or self.times <= 0 or (self.methods and method not in self.methods):
                return "pass"
            self.times -= 1
            return self.mode

    def start(self, port: int = 0) -> S3FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                super().finish()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = proxy._take(self.command)
                if mode == "reset":
                    self.close_connection = True
                    try:  # RST instead of FIN: a connection reset by peer
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    except OSError:
                        pass
                    return
                if mode == "error":
                    xml = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{proxy.code}</Code>'
                        f"<Message>simulated {proxy.code}</Message><RequestId>1</RequestId></Error>"
                    ).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                upstream = requests.request(
                    self.command, proxy.target + self.path, headers=headers, data=body, allow_redirects=False
                )
                self.send_response(upstream.status_code)
                for name, value in upstream.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(name, value)
                content = upstream.content
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port or self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def down(self) -> None:
        """Stop listening and drop every open connection (kept-alive ones too)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def up(self) -> None:
        self.start(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.down()
