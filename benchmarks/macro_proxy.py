"""A counting HTTP/1.1 proxy for benchmarks/macro.py: sender -> proxy -> receiver on loopback.

It forwards every byte unchanged in both directions and counts, in the sender -> receiver
direction, the request bodies (by Content-Length, or by chunk sizes for chunked bodies), the
requests and the raw TCP bytes (request lines, headers and bodies). Both sides of the benchmark
go through the same proxy code, so their wire bytes are measured the same way.

With `transcode_v2`, a Remote-Write 2.0 request is counted as sent, then handed to the
receiver as the same series in 1.0 (`pusher.encode.v2_to_v1`), and the receiver's 2xx answer
gets the `X-Prometheus-Remote-Write-*-Written` headers a 2.0 receiver would add: the receiver
here (Prometheus 2.42) predates 2.0, and this measures what a 2.0 sender puts on the wire.
Requests and responses then go one at a time per connection.

`set_down(True)` simulates a receiver outage: open connections are cut and new ones are
closed as soon as they are accepted (the sender sees a network error and keeps its backlog).

The proxy runs its own asyncio loop in a daemon thread; counters are plain ints written only
by that thread and read by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from pusher.encode import decode_v2, decompress, v2_to_v1

V2_TYPE = b"io.prometheus.write.v2.Request"
# Request headers replaced when a 2.0 body is handed on as 1.0.
_V2_HEADERS = (b"content-type", b"content-length", b"x-prometheus-remote-write-version")


def _framing(head: bytes) -> tuple[int, bool, bytes]:
    """An HTTP message head -> (Content-Length, whether chunked, Content-Type)."""
    length, chunked, content_type = 0, False, b""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"content-type":
            content_type = value.strip()
    return length, chunked, content_type


@dataclass
class Counts:
    requests: int = 0
    body_bytes: int = 0
    raw_bytes: int = 0  # sender -> receiver, everything on the wire above TCP
    connections: int = 0
    refused: int = 0  # connections closed while down


class CountingProxy:
    def __init__(
        self, upstream_port: int, host: str = "127.0.0.1", transcode_v2: bool = False
    ) -> None:
        self.upstream = (host, upstream_port)
        self.transcode_v2 = transcode_v2
        self.counts = Counts()
        self._down = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        started = threading.Event()
        self._error: BaseException | None = None

        async def start() -> None:
            self._server = await asyncio.start_server(self._client, host, 0)

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(start())
            except BaseException as e:
                self._error = e
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="counting-proxy", daemon=True)
        self._thread.start()
        if not started.wait(10) or self._error or self._server is None:
            raise RuntimeError(f"counting proxy did not start: {self._error}")
        self.port: int = self._server.sockets[0].getsockname()[1]

    # --- control (any thread)

    def snapshot(self) -> Counts:
        c = self.counts
        return Counts(c.requests, c.body_bytes, c.raw_bytes, c.connections, c.refused)

    def set_down(self, down: bool) -> None:
        def apply() -> None:
            self._down = down
            if down:
                for w in list(self._writers):
                    w.close()

        self._loop.call_soon_threadsafe(apply)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()

        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # --- the proxy (loop thread)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            self.counts.refused += 1
            writer.close()
            return
        self.counts.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        if self.transcode_v2:
            back = asyncio.ensure_future(asyncio.sleep(0))  # answers are relayed in _requests
            answers: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = (up_reader, writer)
        else:
            back = asyncio.ensure_future(self._pipe(up_reader, writer))
            answers = None
        try:
            await self._requests(reader, up_writer, answers)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()
            back.cancel()
            with contextlib.suppress(BaseException):
                await back

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        up: asyncio.StreamWriter,
        answers: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
    ) -> None:
        c = self.counts
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the sender closed the connection between requests
            c.raw_bytes += len(head)
            length, chunked, content_type = _framing(head)
            v2 = V2_TYPE in content_type
            if answers is not None and v2 and not chunked:
                body = await reader.readexactly(length)
                c.raw_bytes += length
                c.body_bytes += length
                c.requests += 1
                samples = sum(len(s) for _, s in decode_v2(decompress(body)))
                up.write(self._as_v1(head, v2_to_v1(body)))
                await up.drain()
                await self._answer(*answers, written=samples)
                continue
            up.write(head)
            if chunked:
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0].strip(), 16)
                    data = await reader.readexactly(size + 2)  # chunk + CRLF
                    up.write(size_line + data)
                    c.raw_bytes += len(size_line) + len(data)
                    c.body_bytes += size
                    if size == 0:
                        break  # (no trailers are sent by either sender)
            elif length:
                remaining = length
                while remaining:
                    data = await reader.read(min(remaining, 65536))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    up.write(data)
                    remaining -= len(data)
                c.raw_bytes += length
                c.body_bytes += length
            c.requests += 1
            await up.drain()
            if answers is not None:
                await self._answer(*answers, written=None)

    @staticmethod
    def _as_v1(head: bytes, body: bytes) -> bytes:
        lines = [
            line
            for line in head[:-4].split(b"\r\n")
            if line.partition(b":")[0].strip().lower() not in _V2_HEADERS
        ]
        lines += [
            b"Content-Type: application/x-protobuf",
            b"X-Prometheus-Remote-Write-Version: 0.1.0",
            b"Content-Length: %d" % len(body),
        ]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    @staticmethod
    async def _answer(
        up: asyncio.StreamReader, writer: asyncio.StreamWriter, written: int | None
    ) -> None:
        """Relays one response; a 2xx to a transcoded 2.0 request gets the -Written headers."""
        head = await up.readuntil(b"\r\n\r\n")
        length, chunked, _ = _framing(head)
        status = head.split(b" ", 2)[1]
        if written is not None and status.startswith(b"2"):
            head = head[:-2] + (
                b"X-Prometheus-Remote-Write-Samples-Written: %d\r\n"
                b"X-Prometheus-Remote-Write-Histograms-Written: 0\r\n"
                b"X-Prometheus-Remote-Write-Exemplars-Written: 0\r\n\r\n" % written
            )
        body = b""
        if chunked:
            while True:
                size_line = await up.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                body += size_line + await up.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            body = await up.readexactly(length)
        writer.write(head + body)
        await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
