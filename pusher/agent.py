"""The agent: collect every interval at the node's own offset, spool, send, stop cleanly.

Two kinds of thread. The collecting thread (the caller of `run`) ticks every
`collect.interval` on the wall clock, `collect.offset` past each multiple of it (by default
a share of the interval drawn from the `host` label, so that a fleet's nodes do not all push
in the same second, as Prometheus spreads its scrapes). Each tick it collects
(`DeadlineCollector`), plans the cycle's series (`Planner`), adds the agent's own numbers,
spools the cycle for every endpoint (`Endpoint.put_cycle`: each spool keeps it as records and
builds the requests when they are read), and writes the health file. Each endpoint's sending
lanes (`Delivery.drain`, one thread each) drain its spool oldest first. On stop the lanes get
`shutdown_grace` to send what is left; the rest stays in the spools for the next start.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from pusher import __version__, catalog
from pusher.catalog import Reading, Reporter, Sample, reading
from pusher.collect import Collector, DeadlineCollector
from pusher.config import Config
from pusher.delivery import Transport
from pusher.endpoint import Endpoint
from pusher.health import LibvirtStreak, write_health
from pusher.series import Cycle, Planner
from pusher.spool import Spool

__all__ = ["Agent", "BuildInfo", "configured_offset", "cycle_offset", "next_tick", "own_samples"]

log = logging.getLogger(__name__)


def own_samples(reporters: Iterable[Reporter], external: catalog.LabelPairs) -> list[Sample]:
    """The agent's own numbers as samples: every reporter's readings, external labels on."""
    return [((name, own, external), value) for r in reporters for name, own, value in r.readings()]


def cycle_offset(offset: float, interval: float, host: str) -> float:
    """Seconds past each multiple of `interval` at which cycles start: `offset` when set
    (>= 0), else a share of the interval drawn from `host`, the same on every start of the
    node and spread evenly over a fleet's nodes."""
    if offset >= 0:
        return offset
    digest = hashlib.sha256(host.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval


def configured_offset(cfg: Config) -> float:
    """The node's `cycle_offset` as its config sets it, the host drawn from its `host` label."""
    host = cfg.external_labels.get("host", "")
    return cycle_offset(cfg.collect.offset, cfg.collect.interval, host)


def next_tick(now: float, interval: float, offset: float) -> float:
    """The first cycle start after `now`."""
    return offset + (math.floor((now - offset) / interval) + 1) * interval


class BuildInfo:
    """`pusher_build_info`: which version runs (in a dry run too)."""

    def readings(self) -> list[Reading]:
        return [reading("pusher_build_info", 1, (("version", __version__),))]


Output = tuple[Transport, Spool]  # an endpoint's sender and spool, opened by the caller


class Agent:
    def __init__(
        self,
        cfg: Config,
        outputs: Sequence[Output],
        collector: Collector | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`outputs`: each endpoint's sender and spool, in `cfg.endpoints` order."""
        if len(outputs) != len(cfg.endpoints):
            raise ValueError(f"{len(outputs)} outputs for {len(cfg.endpoints)} endpoints")
        self.cfg = cfg
        self.clock = clock
        self.planner = Planner.from_config(cfg)
        collector = collector or Collector.from_config(cfg)
        self.collection = DeadlineCollector(collector, cfg.collect.timeout)
        self._learned: dict[str, int] = {}  # tenant limits Mimir named, for the next cycle
        self._learned_lock = threading.Lock()
        self.endpoints = tuple(
            Endpoint(rw, cfg.collect.interval, spool, sender, clock, on_limit=self._learn_limit)
            for rw, (sender, spool) in zip(cfg.endpoints, outputs, strict=True)
        )
        self.cycles = 0
        self.collected = 0
        self.libvirt_streak = LibvirtStreak()  # failed reads in a row, for --health
        self.stop_event = threading.Event()  # stop collecting
        self.reporters: list[Reporter] = [
            BuildInfo(), self, self.collection, *self.endpoints, self.planner.limits,
        ]  # fmt: skip
        if self.planner.relabeler is not None:
            self.reporters.append(self.planner.relabeler)

    @property
    def libvirt_up(self) -> bool:
        """Whether the last cycle read libvirt."""
        return self.libvirt_streak.failures == 0

    def cached_series(self) -> int:
        """Series the spools' record writers keep (one per endpoint)."""
        return sum(e.spool.cached_series() for e in self.endpoints)

    def readings(self) -> list[Reading]:
        return [
            reading("pusher_cycles_total", self.cycles),
            reading("pusher_samples_collected_total", self.collected),
            reading("pusher_cached_series", self.cached_series()),
        ]

    # --- collecting

    def _learn_limit(self, mimir_id: str, value: int) -> None:
        """From a sending lane: a rejection named a tenant limit (applied by the next cycle)."""
        with self._learned_lock:
            self._learned[mimir_id] = min(value, self._learned.get(mimir_id, value))

    def collect_cycle(self) -> Cycle:
        """One collection with its stale markers, without the agent's own metrics.
        libvirt being unreachable is not an error here: `libvirt_up` says it."""
        with self._learned_lock:
            learned, self._learned = self._learned, {}
        for mimir_id, value in learned.items():
            self.planner.adopt_limit(mimir_id, value)
        snapshot = self.collection.collect()
        now = self.clock()
        self.libvirt_streak.record(snapshot is not None, now, self.collection.last_error)
        now_ms = int(now * 1000)
        return self.planner.cycle(snapshot, frozenset(self.collection.stuck), now_ms)

    def self_samples(self) -> list[Sample]:
        for endpoint in self.endpoints:
            endpoint.take_drops()
        return own_samples(self.reporters, self.planner.external)

    def run_cycle(self) -> int:
        """Collect, add the agent's metrics and spool one cycle for every endpoint;
        returns the cycle's samples."""
        cycle = self.collect_cycle()
        self.cycles += 1
        self.planner.add_own(cycle, self.self_samples())
        n = cycle.count()
        self.collected += n  # after the readings: the figure includes this cycle next time
        now = time.monotonic()
        for endpoint in self.endpoints:
            endpoint.put_cycle(cycle, endpoint.metadata_due(now))
        self._write_health(cycle.ts_ms / 1000)
        return n

    def _write_health(self, cycle_at: float) -> None:
        """`<buffer.path>/health.json`, read by `libvirt-pusher --health` (no port needed)."""
        state = {
            "cycle_at": cycle_at,
            "interval": self.cfg.collect.interval,
            "libvirt_up": int(self.libvirt_up),
            "endpoints": {e.name: e.health() for e in self.endpoints},
            **self.libvirt_streak.state(),
        }
        write_health(self.cfg.buffer.path, state)

    # --- the threads

    def run(self) -> None:
        """Collect every interval at the node's offset until `stop()`, then drain within the
        grace."""
        self.start_sender()
        interval = self.cfg.collect.interval
        offset = configured_offset(self.cfg)
        log.info("collecting every %gs, %.3fs past each multiple of it", interval, offset)
        try:
            while not self.stop_event.is_set():
                now = self.clock()
                if self.stop_event.wait(next_tick(now, interval, offset) - now):
                    break
                try:
                    self.run_cycle()
                except Exception:  # one bad cycle must not end the agent
                    log.exception("collection cycle failed")
        finally:
            self.shutdown(self.cfg.shutdown_grace)

    def stop(self) -> None:
        self.stop_event.set()

    def start_sender(self) -> None:
        """Every endpoint's lanes (`Endpoint.start`)."""
        for endpoint in self.endpoints:
            endpoint.start()

    def shutdown(self, grace: float) -> None:
        """Send what can be sent within `grace` seconds; the rest stays in the spools."""
        self.stop_event.set()
        deadline = time.monotonic() + grace
        for endpoint in self.endpoints:  # all at once: the grace is not per endpoint
            endpoint.stop(deadline)
        for endpoint in self.endpoints:
            endpoint.join()
        for endpoint in self.endpoints:
            endpoint.close()
        self.collection.close()

    def drain_once(self, deadline: float) -> bool:
        """Send until every spool is empty or the deadline passes, the endpoints side by side;
        True when every spool emptied (`Endpoint.pending` says which did not)."""
        self.stop_event.set()
        threads = []
        for endpoint in self.endpoints:
            endpoint.stop(deadline)
            t = threading.Thread(target=endpoint.drain, name=f"send-{endpoint.name}-once")
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        return all(e.pending() == 0 for e in self.endpoints)
