"""The agent: collect on the interval's wall-clock boundaries, spool, send, stop cleanly.

Two kinds of thread. The collecting thread (the caller of `run`) ticks on multiples of
`collect.interval`: it collects (`DeadlineCollector`), plans the cycle's series
(`Planner`), adds the agent's own numbers, encodes and spools the cycle, and writes the
health file. The sending lanes (`Delivery.drain`, one thread each) drain the spool oldest
first. On stop the lanes get `shutdown_grace` to send what is left; the rest stays in the
spool for the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from pusher import __version__, catalog
from pusher.catalog import Reading, Reporter, Sample, reading
from pusher.collect import Collector, DeadlineCollector
from pusher.config import Config
from pusher.delivery import Delivery, Lane, ProtocolMemory, Transport
from pusher.health import LibvirtStreak, write_health
from pusher.series import Cycle, Planner
from pusher.spool import Spool

__all__ = ["Agent", "BuildInfo", "own_samples"]

log = logging.getLogger(__name__)


def own_samples(reporters: Iterable[Reporter], external: catalog.LabelPairs) -> list[Sample]:
    """The agent's own numbers as samples: every reporter's readings, external labels on."""
    return [((name, own, external), value) for r in reporters for name, own, value in r.readings()]


class BuildInfo:
    """`pusher_build_info`: which version runs (in a dry run too)."""

    def readings(self) -> list[Reading]:
        return [reading("pusher_build_info", 1, (("version", __version__),))]


class Agent:
    def __init__(
        self,
        cfg: Config,
        sender: Transport,
        spool: Spool,
        collector: Collector | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.spool = spool
        self.planner = Planner.from_config(cfg)
        collector = collector or Collector.from_config(cfg)
        self.collection = DeadlineCollector(collector, cfg.collect.timeout)
        self.protocol = ProtocolMemory(cfg.remote_write.protocol, spool.directory)
        self._learned: dict[str, int] = {}  # tenant limits Mimir named, for the next cycle
        self._learned_lock = threading.Lock()
        self.delivery = Delivery(
            cfg.remote_write, cfg.collect.interval, spool, sender, self.protocol, clock,
            on_limit=self._learn_limit,
        )  # fmt: skip
        self.cycles = 0
        self.collected = 0
        self.libvirt_streak = LibvirtStreak()  # failed reads in a row, for --health
        self._last_metadata = float("-inf")
        self.stop_event = threading.Event()  # stop collecting
        self._lanes: list[threading.Thread] = []
        self.reporters: list[Reporter] = [
            BuildInfo(), self, self.collection, self.spool, self.delivery.stats,
            self.planner.limits,
        ]  # fmt: skip

    @property
    def libvirt_up(self) -> bool:
        """Whether the last cycle read libvirt."""
        return self.libvirt_streak.failures == 0

    @property
    def encoder(self) -> Spool:
        """What new cycles are encoded by: the spool keeps them as records, and builds
        their requests when it hands them to delivery."""
        return self.spool

    def readings(self) -> list[Reading]:
        return [
            reading("pusher_cycles_total", self.cycles),
            reading("pusher_samples_collected_total", self.collected),
            reading("pusher_cached_series", self.encoder.cached_series()),
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
        for reason, n in self.spool.take_drops().items():
            self.delivery.stats.drop(reason, n)
        return own_samples(self.reporters, self.planner.external)

    def run_cycle(self) -> int:
        """Collect, add the agent's metrics, encode and spool one cycle; returns samples."""
        cycle = self.collect_cycle()
        self.cycles += 1
        cycle.samples.extend(self.self_samples())
        n = cycle.count()
        self.collected += n  # after the readings: the figure includes this cycle next time
        metadata = False  # requests carry the metric metadata once a metadata_interval
        now = time.monotonic()
        interval = self.cfg.remote_write.metadata_interval
        if interval > 0 and now - self._last_metadata >= interval:
            metadata = True
            self._last_metadata = now
        rw = self.cfg.remote_write
        self.spool.put_cycle(cycle.ts_ms, cycle.plans, cycle.samples, self.protocol.current,
                             metadata, rw.max_samples_per_send)  # fmt: skip
        self.delivery.wake()
        self._write_health(cycle.ts_ms / 1000)
        return n

    def _write_health(self, cycle_at: float) -> None:
        """`<buffer.path>/health.json`, read by `libvirt-pusher --health` (no port needed)."""
        requests, _, oldest = self.spool.stats()
        state = {
            "cycle_at": cycle_at,
            "interval": self.cfg.collect.interval,
            "libvirt_up": int(self.libvirt_up),
            "last_send_success": self.delivery.stats.last_success,
            "spool_requests": requests,
            "oldest_pending_ms": oldest,
            **self.libvirt_streak.state(),
        }
        write_health(self.spool.directory, state)

    # --- the threads

    def run(self) -> None:
        """Collect on every interval boundary until `stop()`, then drain within the grace."""
        self.start_sender()
        interval = self.cfg.collect.interval
        try:
            while not self.stop_event.is_set():
                now = self.clock()
                next_tick = (int(now / interval) + 1) * interval
                if self.stop_event.wait(next_tick - now):
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
        """One lane in `fifo` order. In `backfill` order two: the fresh lane sends the
        newest cycles at once, the backlog lane sends the older ones behind it, so a long
        backlog (or a receiver throttling it) never delays what dashboards show now."""
        if self._lanes:
            return
        lanes: list[Lane] = ["all"]
        if self.cfg.remote_write.order == "backfill":
            lanes = ["fresh", "backlog"]
        for lane in lanes:
            t = threading.Thread(target=self.delivery.drain, args=(lane,), name=f"send-{lane}",
                                 daemon=True)  # fmt: skip
            t.start()
            self._lanes.append(t)

    def shutdown(self, grace: float) -> None:
        """Send what can be sent within `grace` seconds; the rest stays in the spool."""
        self.stop_event.set()
        self.delivery.stop(time.monotonic() + grace)
        for t in self._lanes:
            t.join(max(0.0, self.delivery.remaining()) + 1.0)
        requests, _, _ = self.spool.stats()
        if requests:
            log.info("%d request(s) left in the spool for the next start", requests)
        self.spool.close()
        self.collection.close()
        self.delivery.transport.close()

    def drain_once(self, deadline: float) -> bool:
        """Send until the spool is empty or the deadline passes; True when it emptied."""
        self.stop_event.set()
        self.delivery.stop(deadline)
        self.delivery.drain()
        return self.spool.stats()[0] == 0
