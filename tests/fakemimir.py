"""A remote-write receiver that behaves like Mimir's distributor, over real HTTP on loopback.

For the behaviours no real server here produces on demand: Mimir's status codes and error
bodies, 429 storms, 401 during a token rotation, 413, outages. It decodes every request with
the classes generated from `proto/`, enforces what Mimir enforces by default (tenant header
required, per-series timestamps in order, same timestamp with another value rejected, identical
resends accepted) and records every accepted sample.
"""

from __future__ import annotations

import http.server
import itertools
import math
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import snappy

from pusher.pb import remote_write_pb2, remote_write_v2_pb2

Labels = tuple[tuple[str, str], ...]


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    """One request as it arrived."""

    at: float
    headers: dict[str, str]
    size: int
    samples: int
    status: int
    newest_ts: int = 0  # the newest sample timestamp in the request (ms)


@dataclass
class _Label:
    name: str
    value: str


@dataclass
class _Series:
    labels: list[_Label]
    samples: list[Any]


@dataclass
class _Request:
    timeseries: list[_Series]


def _decode(raw: bytes, v2: bool) -> Any:
    """A 1.0 WriteRequest, or a 2.0 Request resolved into the same shape."""
    if not v2:
        return remote_write_pb2.WriteRequest.FromString(raw)
    req = remote_write_v2_pb2.Request.FromString(raw)
    sym = list(req.symbols)
    out = []
    for ts in req.timeseries:
        refs = list(ts.labels_refs)
        labels = [_Label(sym[refs[i]], sym[refs[i + 1]]) for i in range(0, len(refs), 2)]
        out.append(_Series(labels, list(ts.samples)))
    return _Request(out)


def _bits(v: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", v))[0])


class FakeMimir:
    def __init__(
        self,
        port: int = 0,
        max_body: int | None = None,
        ooo_window_ms: int = 0,
        accepts_v2: bool = True,
    ) -> None:
        # Without 2.0 support it answers 415 to a 2.0 request, as Mimir before 2.17 would.
        self.accepts_v2 = accepts_v2
        self.port = port
        self.max_body = max_body  # larger bodies get 413
        # A tenant's out_of_order_time_window: older samples within it are accepted.
        self.ooo_window_ms = ooo_window_ms
        self.script: list[Reply] = []  # answered in turn before normal processing
        self.hook: Callable[[Seen], Reply | None] | None = None
        self.series: dict[Labels, list[tuple[int, float]]] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/push"

    def start(self) -> None:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reply = fake._handle(dict(self.headers.items()), body)
                payload = reply.body.encode()
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Close the listening socket: the agent sees connection refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- request handling

    def _handle(self, headers: dict[str, str], body: bytes) -> Reply:
        with self.lock:
            v2 = "io.prometheus.write.v2.Request" in headers.get("Content-Type", "")
            if v2 and not self.accepts_v2:
                self.seen.append(Seen(time.time(), headers, len(body), 0, 415))
                return Reply(415, "unsupported content type")
            req = _decode(snappy.uncompress(body), v2)
            stamps = [s.timestamp for ts in req.timeseries for s in ts.samples]
            seen = Seen(
                time.time(), headers, len(body), len(req.timeseries), 0, max(stamps, default=0)
            )
            self.seen.append(seen)
            reply = self._decide(seen, headers, body, req)
            seen.status = reply.status
            if v2 and 200 <= reply.status < 300:
                written = str(len(req.timeseries))
                reply.headers["X-Prometheus-Remote-Write-Samples-Written"] = written
            return reply

    def _decide(self, seen: Seen, headers: dict[str, str], body: bytes, req: Any) -> Reply:
        if self.script:
            return self.script.pop(0)
        if self.hook is not None:
            hooked = self.hook(seen)
            if hooked is not None:
                return hooked
        if not headers.get("X-Scope-OrgID"):
            return Reply(401, "no org id")
        if self.max_body is not None and len(body) > self.max_body:
            return Reply(413, "request too large")
        errors = []
        for ts in req.timeseries:
            labels: Labels = tuple((lb.name, lb.value) for lb in ts.labels)
            stored = self.series.setdefault(labels, [])
            for s in ts.samples:
                if stored and s.timestamp < stored[-1][0]:
                    if stored[-1][0] - s.timestamp > self.ooo_window_ms:
                        errors.append("err-mimir-sample-out-of-order")
                    elif all(t != s.timestamp for t, _ in stored):
                        stored.append((s.timestamp, s.value))
                        stored.sort(key=lambda tv: tv[0])
                    continue
                if stored and s.timestamp == stored[-1][0]:
                    if _bits(s.value) != _bits(stored[-1][1]):
                        errors.append("err-mimir-sample-duplicate-timestamp")
                    continue  # an identical resend is accepted as a duplicate
                stored.append((s.timestamp, s.value))
        if errors:
            return Reply(400, f"failed pushing to ingester: ... ({errors[0]})")
        return Reply(200)

    # --- reading what arrived

    def find(self, name: str, **match: str) -> dict[Labels, list[tuple[int, float]]]:
        with self.lock:
            out = {}
            for labels, samples in self.series.items():
                d = dict(labels)
                if d.get("__name__") == name and all(d.get(k) == v for k, v in match.items()):
                    out[labels] = list(samples)
            return out

    def one(self, name: str, **match: str) -> list[tuple[int, float]]:
        found = self.find(name, **match)
        assert len(found) == 1, f"{name} {match}: {len(found)} series"
        return next(iter(found.values()))

    def latest(self, name: str, **match: str) -> float | None:
        found = self.find(name, **match)
        values = [s[-1] for s in found.values() if s]
        if not values:
            return None
        return max(values)[1]


def gaps(samples: list[tuple[int, float]], interval_ms: int) -> list[tuple[int, int]]:
    """(from, to) timestamps between which more than 1.5 intervals passed without a sample."""
    stamps = [ts for ts, v in samples if not math.isnan(v)]
    return [(a, b) for a, b in itertools.pairwise(stamps) if b - a > interval_ms * 1.5]
