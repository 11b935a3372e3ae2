"""Shared fixtures for the unit tests: real HTTP servers on 127.0.0.1, never mocks."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message

import pytest


@dataclass
class Reply:
    """What the server answers. `filler` streams that many bytes of body after `body`."""

    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    filler: int = 0


@dataclass
class Received:
    method: str
    path: str
    headers: Message
    body: bytes


class RecordingServer:
    """A real HTTP server in a thread on an ephemeral port; records every request."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with server._lock:
                    server.received.append(Received("POST", self.path, self.headers, body))
                    reply = server.reply
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body) + reply.filler))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    chunk = b"x" * 65536
                    left = reply.filler
                    while left > 0:
                        self.wfile.write(chunk[:left])
                        left -= len(chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: that is what some tests check

            do_GET = do_POST

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/api/v1/push"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def answer(
        self,
        status: int,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        filler: int = 0,
    ) -> None:
        with self._lock:
            self.reply = Reply(status, dict(headers or {}), body, filler)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def http_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def other_http_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts TCP connections (the kernel's backlog) but never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1/push"
    finally:
        sock.close()


@pytest.fixture
def refused_url() -> str:
    """A port nothing listens on: connecting is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/api/v1/push"
