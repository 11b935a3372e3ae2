"""Endpoints: one remote-write destination each, with a spool, a delivery and lanes of its own.

The collecting thread writes every cycle into every endpoint's spool (`put_cycle`): one copy
per endpoint, so the disk holds up to `buffer.max_bytes` per endpoint. Each endpoint's lanes
drain its own spool with its own sender, so an endpoint that is down, slow or throttled keeps
its backlog (and counts what its byte cap drops) without delaying the others. An endpoint's
numbers are reported with an `endpoint` label, its log lines (with several endpoints) name it.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable

from pusher.catalog import Reading
from pusher.config import Config, RemoteWriteConfig
from pusher.delivery import Delivery, Lane, ProtocolMemory, Transport
from pusher.series import Cycle
from pusher.spool import Spool, SpoolError

__all__ = ["Endpoint", "EndpointLogFilter", "open_spools"]

log = logging.getLogger(__name__)

# The endpoint the running code works for: set by its lanes and around its spool writes.
_current: contextvars.ContextVar[str] = contextvars.ContextVar("endpoint", default="")


def _working_for(name: str, work: Callable[..., None], *args: object) -> None:
    """`work(*args)` with `name` as the endpoint worked for (in a context of its own)."""
    context = contextvars.copy_context()
    context.run(_current.set, name)
    context.run(work, *args)


class EndpointLogFilter(logging.Filter):
    """Puts `endpoint NAME: ` before what is logged while working for an endpoint (delivery's
    retries and holds, the spool's drops), so that with several endpoints a line says which
    one it is about. The CLI installs it on its log handler when there are several."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = _current.get()
        if name and not hasattr(record, "endpoint"):
            record.endpoint = name
            record.msg = f"endpoint {name}: {record.msg}"
        return True


class Endpoint:
    """One remote-write endpoint: its section of the config, spool, delivery and lanes."""

    def __init__(
        self,
        rw: RemoteWriteConfig,
        interval: float,
        spool: Spool,
        transport: Transport,
        clock: Callable[[], float] = time.time,
        on_limit: Callable[[str, int], None] | None = None,
    ) -> None:
        self.name = rw.name
        self.rw = rw
        self.spool = spool
        self.protocol = ProtocolMemory(rw.protocol, spool.directory)
        self.delivery = Delivery(rw, interval, spool, transport, self.protocol, clock,
                                 on_limit=on_limit)  # fmt: skip
        self._label = (("endpoint", self.name),)
        self._last_metadata = -math.inf
        self._lanes: list[threading.Thread] = []

    # --- the collecting thread

    def metadata_due(self, now: float) -> bool:
        """Whether this cycle carries the metadata (once a `metadata_interval`); `now` is
        monotonic. Asking is deciding: a True starts the next interval."""
        interval = self.rw.metadata_interval
        if interval <= 0 or now - self._last_metadata < interval:
            return False
        self._last_metadata = now
        return True

    def put_cycle(self, cycle: Cycle, metadata: bool) -> None:
        """Spool one cycle as records (its requests are built when read) and wake the lanes;
        `metadata`: its requests carry the metric metadata."""
        _working_for(
            self.name, self.spool.put_cycle, cycle.ts_ms, cycle.plans, cycle.samples,
            self.protocol.current, metadata, self.rw.max_samples_per_send,
        )  # fmt: skip
        self.delivery.wake()

    def take_drops(self) -> None:
        """What the spool dropped since the last call, into the delivery's counts."""
        for reason, n in self.spool.take_drops().items():
            self.delivery.stats.drop(reason, n)

    def readings(self) -> list[Reading]:
        """The spool's and the delivery's numbers, with the `endpoint` label."""
        own = [*self.spool.readings(), *self.delivery.stats.readings()]
        return [(name, tuple(sorted(labels + self._label)), v) for name, labels, v in own]

    def health(self) -> dict[str, object]:
        """What `--health` needs to judge the endpoint (`pusher.health`)."""
        requests, _, oldest = self.spool.stats()
        return {"last_send_success": self.delivery.stats.last_success,
                "spool_requests": requests, "oldest_pending_ms": oldest}  # fmt: skip

    # --- the lanes

    def start(self) -> None:
        """One lane in `fifo` order. In `backfill` order two: the fresh lane sends the newest
        cycles at once, the backlog lane the older ones behind it, so a long backlog (or a
        receiver throttling it) never delays what dashboards show now."""
        if self._lanes:
            return
        lanes: list[Lane] = ["fresh", "backlog"] if self.rw.order == "backfill" else ["all"]
        for lane in lanes:
            t = threading.Thread(target=self.drain, args=(lane,), daemon=True,
                                 name=f"send-{self.name}-{lane}")  # fmt: skip
            t.start()
            self._lanes.append(t)

    def drain(self, lane: Lane = "all") -> None:
        _working_for(self.name, self.delivery.drain, lane)

    def stop(self, deadline: float) -> None:
        """Send what is left until `deadline` (monotonic), then stop."""
        self.delivery.stop(deadline)

    def join(self) -> None:
        for t in self._lanes:
            t.join(max(0.0, self.delivery.remaining()) + 1.0)

    def pending(self) -> int:
        return self.spool.stats()[0]

    def close(self) -> None:
        pending = self.pending()
        if pending:
            log.info("%d request(s) left in the spool of endpoint %s for the next start",
                     pending, self.name)  # fmt: skip
        self.spool.close()
        self.delivery.transport.close()


def open_spools(cfg: Config) -> list[Spool]:
    """Every endpoint's spool, in `cfg.endpoints` order (`Config.spool_directory`). Raises
    SpoolError, having closed those already opened, when one cannot be used."""
    spools: list[Spool] = []
    try:
        for rw in cfg.endpoints:
            directory = cfg.spool_directory(rw)
            if directory != cfg.buffer.path:
                _private_directory(cfg.buffer.path)
                _private_directory(os.path.dirname(directory))
            spools.append(Spool(directory, cfg.buffer.max_bytes, cfg.buffer.fsync))
    except BaseException:
        for spool in spools:
            spool.close()
        raise
    return spools


def _private_directory(path: str) -> None:
    """A directory above a spool: created 0700, refused when others could replace what is
    in it (as the spool refuses its own directory)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        mode = os.stat(path).st_mode
    except OSError as e:
        raise SpoolError(f"buffer.path {path}: {e.strerror}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SpoolError(f"buffer.path {path} is writable by group or others (chmod 700 it)")
