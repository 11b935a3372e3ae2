"""The agent: collect on the interval's wall-clock boundaries, spool, drain, count.

Two threads. The collecting thread ticks on multiples of `collect.interval`, turns each
snapshot into samples (plus stale markers for series that ended and the agent's own
metrics), encodes them and writes them to the spool. The sending thread drains the spool
oldest first, one batch at a time, so every series reaches the receiver in timestamp order;
it retries, holds, splits or drops according to the sender's `Outcome`, and counts each case.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pusher import __version__, catalog
from pusher.catalog import LabelPairs, Sample, SeriesKey, label_pairs
from pusher.collect import (
    VIR_DOMAIN_RUNNING,
    Collector,
    DomainStats,
    HostInfo,
    LibvirtUnavailable,
    Snapshot,
)
from pusher.config import Config
from pusher.encode import (
    STALE_NAN,
    Encoder,
    EncoderV2,
    compress,
    decompress,
    metadata_bytes,
    v2_to_v1,
)
from pusher.filters import DomainFilter
from pusher.sender import Outcome, Sender
from pusher.spool import Row, Spool

__all__ = ["Agent", "Counters", "build_samples", "check_health", "split_request"]

log = logging.getLogger(__name__)

# Bulk stats calls left hanging (by stuck guests) before the agent stops starting new ones.
MAX_PENDING_CALLS = 3
# Drop reasons reported from the first cycle on (at 0), so alerts see the series exist.
KNOWN_DROP_REASONS = ("too_old", "spool_full", "spool_corrupt", "spool_unwritable", "too_large")
# While credentials are refused, probe this often at the least, and log at most once a minute.
HOLD_MIN_PROBE = 10.0
HOLD_MAX_PROBE = 300.0
HOLD_LOG_EVERY = 60.0


@dataclass
class Counters:
    """The agent's own numbers, written by both threads under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    cycles: int = 0
    collect_errors: int = 0
    collect_duration: float = 0.0
    collected: int = 0
    sent: int = 0
    retried: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    responses: collections.Counter[str] = field(default_factory=collections.Counter)
    send_seconds: float = 0.0
    last_success: float = 0.0


# --- pure: snapshot -> samples ------------------------------------------------------------


def identity_labels(
    d: DomainStats,
    series_labels: Sequence[str],
    external: LabelPairs,
    drop: frozenset[str] = frozenset(),
) -> LabelPairs:
    """Labels on every series of one domain: identity, chosen Nova labels (but those in
    `drop`), external labels."""
    labels = dict(external)
    labels["domain"] = d.name
    labels["uuid"] = d.uuid
    if d.info.nova is not None:
        nova = d.info.nova.labels()
        for name in series_labels:
            if name in nova and name not in drop:
                labels[name] = nova[name]
    return label_pairs(labels)


@dataclass(frozen=True)
class DomainSeries:
    """A domain's plan and its other series, kept while its name, Nova data and stats keys
    stay the same."""

    name: str
    info: object  # the DomainInfo it was built from (compared by identity: it is cached)
    plan: catalog.DomainPlan
    extra: tuple[SeriesKey, ...]  # the Nova info series, when there is Nova data
    running: bool = True
    devices: frozenset[LabelPairs] = frozenset()  # the devices the record names

    def keys(self) -> set[SeriesKey]:
        return {*self.plan.series, *self.extra}


def plan_snapshot(
    snapshot: Snapshot,
    series_labels: Sequence[str],
    external: LabelPairs,
    cache: dict[str, DomainSeries],
    unknown: set[str] | None = None,
    drop: frozenset[str] = frozenset(),
) -> dict[str, DomainSeries]:
    """Every domain's series for this snapshot, reusing `cache` (uuid -> DomainSeries)
    for domains whose name, Nova data and stats keys did not change.

    Labels named in `drop` (`labels.drop`) are left off every series. A series that would
    carry more label names than `catalog.LIMITS.max_names` loses the lowest-priority ones
    (`catalog.plan_within_limits`): a configuration where that can happen is refused at
    load, so this is a safety net."""
    out: dict[str, DomainSeries] = {}
    for d in snapshot.domains:
        cached = cache.get(d.uuid)
        if (
            cached is not None
            and cached.name == d.name
            and cached.info is d.info
            and cached.plan.signature == tuple(d.stats)
        ):
            out[d.uuid] = cached
            continue
        shared = identity_labels(d, series_labels, external, drop)
        if cached is not None and cached.plan.shared == shared:
            shared = cached.plan.shared  # the same tuple: the encoder's heads stay valid
        plan, device_drop = catalog.plan_within_limits(
            d.stats, shared, series_labels, unknown, d.info.labels_for, drop
        )
        extra: tuple[SeriesKey, ...] = ()
        if d.info.nova is not None:
            nova = {k: v for k, v in d.info.nova.labels().items() if k not in drop}
            info = catalog.by_name(catalog.INFO_METRIC)
            own = catalog.fit_own_labels(label_pairs(nova), plan.shared, info.labels)
            extra = ((info.name, own, plan.shared),)
        running = d.stats.get("state.state") == VIR_DOMAIN_RUNNING
        devices = catalog.devices(d.stats, d.info.labels_for, device_drop)
        out[d.uuid] = DomainSeries(d.name, d.info, plan, extra, running, devices)
    return out


def host_samples(host: HostInfo | None, external: LabelPairs) -> list[Sample]:
    if host is None:
        return []
    versions = label_pairs({
        "libvirt_version": host.libvirt_version,
        "hypervisor": host.hypervisor,
        "hypervisor_version": host.hypervisor_version,
    })  # fmt: skip
    return [
        (("libvirt_node_cpus", (), external), float(host.cpus)),
        (("libvirt_node_memory_bytes", (), external), float(host.memory_bytes)),
        (("libvirt_node_cpu_frequency_hertz", (), external), host.cpu_mhz * 1e6),
        (("libvirt_versions_info", versions, external), 1.0),
    ]


def build_samples(
    snapshot: Snapshot,
    series_labels: Sequence[str],
    external: LabelPairs,
    unknown: set[str] | None = None,
) -> list[Sample]:
    """Every domain's samples and its Nova info series, for one snapshot, as a list."""
    out: list[Sample] = []
    stats = {d.uuid: d.stats for d in snapshot.domains}
    for uuid, ds in plan_snapshot(snapshot, series_labels, external, {}, unknown).items():
        out.extend(zip(ds.plan.series, ds.plan.values(stats[uuid]), strict=True))
        out.extend((key, 1.0) for key in ds.extra)
    return out


HEALTH_FILE = "health.json"
PROTOCOL_FILE = "protocol"  # "1" once an `auto` agent found its receiver takes only 1.0
# --health fails when a backlog has had no successful send for this long.
HEALTH_MAX_SEND_AGE = 600.0


def write_health(directory: str, state: Mapping[str, object]) -> None:
    path = os.path.join(directory, HEALTH_FILE)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, path)  # readers never see a half-written file
    except OSError as e:
        log.debug("cannot write %s: %s", path, e)


def check_health(directory: str, now: float) -> tuple[bool, str]:
    """(healthy, why) from the agent's health file: a cycle within three intervals, and no
    backlog left unsent for more than HEALTH_MAX_SEND_AGE."""
    path = os.path.join(directory, HEALTH_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        cycle_at = float(state["cycle_at"])
        interval = float(state["interval"])
        last_send = float(state["last_send_success"])
        oldest = state["oldest_pending_ms"]
        pending = int(state["spool_requests"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"no readable health file at {path}: {e}"
    if now - cycle_at > 3 * interval + 5:
        return False, f"last cycle {now - cycle_at:.0f}s ago (interval {interval:g}s)"
    if pending and oldest is not None:
        waiting = now - max(last_send, float(oldest) / 1000)
        if waiting > HEALTH_MAX_SEND_AGE:
            return False, f"{pending} request(s) unsent; no successful send for {waiting:.0f}s"
    libvirt = "up" if state.get("libvirt_up") else "DOWN"
    return True, f"last cycle {now - cycle_at:.1f}s ago, libvirt {libvirt}, {pending} pending"


def split_request(raw: bytes) -> list[bytes]:
    """An uncompressed WriteRequest's top-level fields, each as its own bytes, in order."""
    fields: list[bytes] = []
    i = 0
    while i < len(raw):
        start = i
        i += 1  # every field we write has a one-byte tag
        length = shift = 0
        while True:
            b = raw[i]
            i += 1
            length |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        i += length
        fields.append(raw[start:i])
    return fields


def _count_series(fields: Sequence[bytes], proto: int = 1) -> int:
    # Every TimeSeries this agent writes holds exactly one sample.
    tag = b"\x2a" if proto == 2 else b"\x0a"  # Request.timeseries = 5 / WriteRequest's = 1
    return sum(1 for f in fields if f[:1] == tag)


@dataclass
class Cycle:
    """One cycle's data: domain plans with their values, and the other samples."""

    ts_ms: int
    plans: list[tuple[catalog.DomainPlan, list[float]]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def count(self) -> int:
        return len(self.samples) + sum(len(values) for _, values in self.plans)

    def all_samples(self) -> list[Sample]:
        out: list[Sample] = []
        for plan, values in self.plans:
            out.extend(zip(plan.series, values, strict=True))
        return out + self.samples


@dataclass
class _Part:
    body: bytes  # compressed
    samples: int
    proto: int = 1


class Agent:
    def __init__(
        self,
        cfg: Config,
        collector: Collector | None = None,
        sender: Sender | None = None,
        spool: Spool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        # Before any label set is built (external labels included).
        catalog.set_limits(
            cfg.limits.max_label_names_per_series,
            cfg.limits.max_label_name_length,
            cfg.limits.max_label_value_length,
        )
        self._filter = DomainFilter.from_config(cfg.filter)
        self.collector = collector or Collector(
            cfg.libvirt.uri, cfg.nova.refresh_interval, partial_wait=cfg.collect.timeout / 4
        )
        if isinstance(self.collector, Collector):
            # The config's collection settings, whoever built the collector.
            self.collector.groups = cfg.collect.groups
            self.collector.job_info = cfg.collect.job_info
            if self._filter:
                self.collector.exported = self._filter.admits
        self._drop = frozenset(cfg.labels.drop)
        self.spool = spool
        self.sender = sender
        self.encoder = Encoder(cfg.remote_write.max_samples_per_send)
        self.encoder_v2 = EncoderV2(cfg.remote_write.max_samples_per_send)
        self.protocol = self._initial_protocol()  # 1 or 2: what new cycles are encoded as
        self.counters = Counters()
        self.external = label_pairs(cfg.external_labels)
        self._domains: dict[str, DomainSeries] = {}  # the last successful cycle's
        self._ended: set[SeriesKey] = set()  # series given stale markers this cycle
        self._unknown_keys: set[str] = set()
        self._logged_unknown: set[str] = set()
        self._last_metadata = float("-inf")
        self._libvirt_up = 0
        self._libvirt_domains = 0
        self._metadata_errors_seen = 0
        self.stop_event = threading.Event()  # stop collecting
        self._lane_wake: dict[str, threading.Event] = {}  # set when the spool has new data
        self._send_deadline = float("inf")  # monotonic; set on shutdown
        self._sender_threads: list[threading.Thread] = []
        self._last_hold_log = float("-inf")
        self._last_retry_log = float("-inf")
        self._failing = 0  # failed attempts since the last success
        self._executor = concurrent.futures.ThreadPoolExecutor(
            MAX_PENDING_CALLS, thread_name_prefix="libvirt"
        )
        self._pending: list[concurrent.futures.Future[Snapshot]] = []
        self._stuck: set[str] = set()  # uuids whose stats calls hang
        self._timeouts: collections.Counter[str] = collections.Counter()  # uuid -> cycles
        self._timeout_keys: dict[str, SeriesKey] = {}  # uuid -> its timeouts series

    # --- collecting

    def collect_cycle(self) -> Cycle:
        """One collection, with stale markers and without the agent's own metrics.
        libvirt being unreachable is not an error here: `libvirt_up` says it."""
        start = time.monotonic()
        snapshot: Snapshot | None
        try:
            snapshot = self._collect_with_deadline()
        except LibvirtUnavailable as e:
            snapshot = None
            with self.counters.lock:
                self.counters.collect_errors += 1
            log.error("%s", e)
        cycle = Cycle(snapshot.ts_ms if snapshot else int(self.clock() * 1000))
        if snapshot is not None:
            # A stuck domain's stats (partial, if any) are left out; its series keep their
            # last values at the receiver instead of being marked stale. Domains the filters
            # exclude (`filter.*`) are left out entirely: no series at all.
            answered = Snapshot(
                snapshot.ts_ms,
                [d for d in snapshot.domains if d.uuid not in self._stuck
                 and (not self._filter or self._filter.admits(d.name, d.info.nova))],
                snapshot.duration, snapshot.xml_fetches,
            )  # fmt: skip
            domains = plan_snapshot(
                answered, self.cfg.nova.series_labels, self.external,
                self._domains, self._unknown_keys, self._drop,
            )  # fmt: skip
            stats = {d.uuid: d.stats for d in answered.domains}
            for uuid, ds in domains.items():
                cycle.plans.append((ds.plan, ds.plan.values(stats[uuid])))
                cycle.samples.extend((key, 1.0) for key in ds.extra)
            for uuid in self._stuck:
                if uuid in self._domains:
                    domains[uuid] = self._domains[uuid]
                    self._timeouts[uuid] += 1
            timeout_keys: dict[str, SeriesKey] = {}
            for uuid in list(self._timeouts):
                if uuid not in domains:
                    del self._timeouts[uuid]
                    continue
                key = ("libvirt_domain_stats_timeouts_total", (), domains[uuid].plan.shared)
                timeout_keys[uuid] = key
                cycle.samples.append((key, float(self._timeouts[uuid])))
            cycle.samples.extend(self._stale_markers(domains))
            # A timeouts series is no part of a domain's plan: it ends here, with its domain
            # (or its old labels).
            ended = set(self._timeout_keys.values()) - set(timeout_keys.values())
            cycle.samples.extend((key, STALE_NAN) for key in ended)
            self._ended |= ended
            self._timeout_keys = timeout_keys
            self._domains = domains
            self._log_unknown_keys()
            self._libvirt_domains = len(snapshot.domains)
        self._libvirt_up = 1 if snapshot is not None else 0
        cycle.samples.append((("libvirt_up", (), self.external), float(self._libvirt_up)))
        # Counted where label sets are built (plan_snapshot), so reported with the cycle.
        drops = float(catalog.LABEL_DROPS.count)
        cycle.samples.append((("pusher_labels_dropped_total", (), self.external), drops))
        if snapshot is not None:
            n = float(self._libvirt_domains)
            cycle.samples.append((("libvirt_domains", (), self.external), n))
            cycle.samples.extend(host_samples(snapshot.host, self.external))
        with self.counters.lock:
            self.counters.collect_duration = time.monotonic() - start
        return cycle

    def _collect_with_deadline(self) -> Snapshot:
        """The bulk call on a worker thread, given half of `collect.timeout`; if it does not
        answer, one call per domain in parallel for the other half (`Collector.collect_each`).

        A stuck QEMU monitor holds the first call that reaches it forever (NOWAIT does not
        help that one; it helps the calls after it, which skip the held domain). A call that
        missed its deadline keeps running, as libvirt cannot cancel it; domains found stuck
        stay in `self._stuck` until every such call has returned.
        """
        self._pending = [f for f in self._pending if not f.done()]
        if not self._pending and self._stuck:
            log.info("stuck libvirt calls returned; %d domain(s) answer again", len(self._stuck))
            self._stuck.clear()
        if len(self._pending) >= MAX_PENDING_CALLS:
            raise LibvirtUnavailable(
                f"{len(self._pending)} libvirt calls have not returned; not starting another"
            )
        half = self.cfg.collect.timeout / 2
        bulk = self._executor.submit(self.collector.collect)
        try:
            return bulk.result(timeout=half)
        except concurrent.futures.TimeoutError:
            self._pending.append(bulk)
        snapshot, stuck = self.collector.collect_each(half, skip=self._stuck)
        new = stuck - self._stuck
        if new:
            log.warning("libvirt stats did not answer within %gs for %d domain(s): %s",
                        half, len(new), ", ".join(sorted(new)))  # fmt: skip
        self._stuck |= stuck
        return snapshot

    def _stale_markers(self, domains: dict[str, DomainSeries]) -> list[Sample]:
        """Stale markers for the series of the last successful cycle that are gone now:
        domains that went away, devices that did, and series whose labels changed."""
        gone: set[SeriesKey] = set()
        for uuid, old in self._domains.items():
            new = domains.get(uuid)
            if new is old:
                continue  # the same plan: the same series
            if new is None:
                gone |= old.keys()
                continue
            vanished = old.keys() - new.keys()
            if vanished and new.running and new.plan.shared == old.plan.shared:
                # Still running, same labels: a series missing from the record is a partial
                # record (another client held the domain's job), unless its device is gone:
                # no longer named in a group the record has; or unless it is a job series and
                # the record has the domain's job info (its job ended).
                groups = {k.partition(".")[0] for k in new.plan.signature}
                has_job = "job.type" in new.plan.signature
                vanished = {
                    k for k in vanished
                    if (k[1] and k[1] not in new.devices and catalog.group_of(k[0]) in groups)
                    or (has_job and catalog.group_of(k[0]) == "job")
                }  # fmt: skip
            gone |= vanished
        self._ended = gone  # forgotten by the encoder once their stale markers are written
        return [(key, STALE_NAN) for key in gone]

    def _log_unknown_keys(self) -> None:
        new = self._unknown_keys - self._logged_unknown
        if new:
            log.info("libvirt stats keys not in the catalog (skipped): %s", ", ".join(sorted(new)))
            self._logged_unknown |= new

    def self_samples(self) -> list[Sample]:
        c = self.counters
        ext = self.external
        requests, nbytes, oldest = self.spool.stats() if self.spool else (0, 0, None)
        if self.spool:
            for reason, n in self.spool.take_drops().items():
                with c.lock:
                    c.dropped[reason] += n
        age = max(0.0, self.clock() - oldest / 1000) if oldest is not None else 0.0
        meta_errors = self.collector.metadata_errors
        partial = self.collector.partial_records
        partial_kept = self.collector.partial_kept
        truncated = catalog.TRUNCATIONS.count
        with c.lock:
            out: list[Sample] = [
                (("pusher_build_info", (("version", __version__),), ext), 1.0),
                (("pusher_cycles_total", (), ext), float(c.cycles)),
                (("pusher_collect_duration_seconds", (), ext), c.collect_duration),
                (("pusher_collect_errors_total", (), ext), float(c.collect_errors)),
                (("pusher_samples_collected_total", (), ext), float(c.collected)),
                (("pusher_samples_sent_total", (), ext), float(c.sent)),
                (("pusher_samples_retried_total", (), ext), float(c.retried)),
                (("pusher_send_duration_seconds_total", (), ext), c.send_seconds),
                (("pusher_last_send_success_timestamp_seconds", (), ext), c.last_success),
                (("pusher_spool_bytes", (), ext), float(nbytes)),
                (("pusher_spool_requests", (), ext), float(requests)),
                (("pusher_spool_oldest_sample_age_seconds", (), ext), age),
                (("pusher_nova_metadata_errors_total", (), ext), float(meta_errors)),
                (("pusher_partial_records_total", (), ext), float(partial)),
                (("pusher_partial_records_kept_total", (), ext), float(partial_kept)),
                (("pusher_labels_truncated_total", (), ext), float(truncated)),
                (("pusher_cached_series", (), ext), float(self.encoder.cached_series())),
            ]
            if self.cfg.collect.job_info:
                job_errors = float(self.collector.job_errors)
                out.append((("pusher_job_info_errors_total", (), ext), job_errors))
            for reason in sorted(set(KNOWN_DROP_REASONS) | set(c.dropped)):
                key = ("pusher_samples_dropped_total", (("reason", reason),), ext)
                out.append((key, float(c.dropped[reason])))
            for code, n in sorted(c.responses.items()):
                out.append((("pusher_requests_total", (("code", code),), ext), float(n)))
        return out

    def run_cycle(self) -> int:
        """Collect, add the agent's metrics, encode and spool one cycle; returns samples."""
        assert self.spool is not None
        cycle = self.collect_cycle()
        with self.counters.lock:
            self.counters.cycles += 1
        cycle.samples.extend(self.self_samples())
        n = cycle.count()
        with self.counters.lock:
            # Counted before the write so the figure includes this very cycle next time.
            self.counters.collected += n
        metadata = b""
        now = time.monotonic()
        interval = self.cfg.remote_write.metadata_interval
        if interval > 0 and now - self._last_metadata >= interval:
            metadata = metadata_bytes(catalog.CATALOG)
            self._last_metadata = now
        encoder = self.encoder_v2 if self.protocol == 2 else self.encoder
        self.spool.put(encoder.encode(cycle.samples, cycle.ts_ms, metadata, cycle.plans))
        self.encoder.forget(self._ended)
        self._ended = set()
        self._wake_lanes()
        self._write_health(cycle.ts_ms / 1000)
        return n

    def _write_health(self, cycle_at: float) -> None:
        """`<buffer.path>/health.json`, read by `libvirt-pusher --health` (no port needed)."""
        assert self.spool is not None
        requests, _, oldest = self.spool.stats()
        with self.counters.lock:
            state = {
                "cycle_at": cycle_at,
                "interval": self.cfg.collect.interval,
                "libvirt_up": self._libvirt_up,
                "last_send_success": self.counters.last_success,
                "spool_requests": requests,
                "oldest_pending_ms": oldest,
            }
        write_health(self.spool.directory, state)

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

    # --- sending

    def start_sender(self) -> None:
        """One lane in `fifo` order. In `backfill` order two: the fresh lane sends the
        newest cycles at once, the backlog lane sends the older ones behind it, so a long
        backlog (or a receiver throttling it) never delays what dashboards show now."""
        if self._sender_threads:
            return
        lanes = ["fresh", "backlog"] if self.cfg.remote_write.order == "backfill" else ["all"]
        for lane in lanes:
            t = threading.Thread(target=self._drain, args=(lane,), name=f"send-{lane}",
                                 daemon=True)  # fmt: skip
            t.start()
            self._sender_threads.append(t)

    def shutdown(self, grace: float) -> None:
        """Send what can be sent within `grace` seconds; the rest stays in the spool."""
        self.stop_event.set()
        self._send_deadline = time.monotonic() + grace
        self._wake_lanes()
        for t in self._sender_threads:
            t.join(max(0.0, self._remaining()) + 1.0)
        if self.spool is not None:
            requests, _, _ = self.spool.stats()
            if requests:
                log.info("%d request(s) left in the spool for the next start", requests)
            self.spool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.collector.close()
        if self.sender is not None:
            self.sender.close()

    def drain_once(self, deadline: float) -> bool:
        """Send until the spool is empty or the deadline passes; True when it emptied."""
        self._send_deadline = deadline
        self.stop_event.set()
        self._drain()
        assert self.spool is not None
        return self.spool.stats()[0] == 0

    def _wake_lanes(self) -> None:
        for event in list(self._lane_wake.values()):
            event.set()

    def _remaining(self) -> float:
        return self._send_deadline - time.monotonic()

    def _sleep(self, seconds: float) -> bool:
        """Wait for a backoff; False when the shutdown deadline leaves no time for it."""
        if seconds >= self._remaining():
            return False
        if self.stop_event.is_set():
            time.sleep(max(0.0, seconds))
        else:
            self.stop_event.wait(seconds)
        return True

    def _fresh_since_ms(self) -> int:
        """Rows from the last two cycles count as fresh."""
        return int((self.clock() - 2 * self.cfg.collect.interval) * 1000)

    def _drain(self, lane: str = "all") -> None:
        assert self.spool is not None and self.sender is not None
        wake = self._lane_wake.setdefault(lane, threading.Event())
        while self._remaining() > 0:
            since = before = None
            if lane == "fresh":
                since = self._fresh_since_ms()
            elif lane == "backlog":
                before = self._fresh_since_ms()
            rows = self.spool.peek(
                self.cfg.remote_write.max_samples_per_send, since, before, claim=True
            )
            if not rows:
                if self.stop_event.is_set():
                    return
                wake.wait(1.0)
                wake.clear()
                continue
            rows = self._drop_too_old(rows)
            if not rows:
                continue
            result = self._deliver(rows, lane)
            if result != "done":
                self.spool.release(rows)  # for the backlog lane, or the next start
            if result == "deadline":
                return

    def _drop_too_old(self, rows: list[Row]) -> list[Row]:
        max_age = self.cfg.remote_write.max_sample_age
        if max_age <= 0:
            return rows
        horizon = (self.clock() - max_age) * 1000
        old = [r for r in rows if r.ts_ms < horizon]
        if not old:
            return rows
        assert self.spool is not None
        self.spool.remove(old)
        n = sum(r.samples for r in old)
        self._count_drop("too_old", n)
        log.warning("dropped %d sample(s) older than remote_write.max_sample_age", n)
        return [r for r in rows if r.ts_ms >= horizon]

    def _deliver(self, rows: list[Row], lane: str = "all") -> str:
        """Send one batch of spooled rows to the end: "done" when they are delivered or
        dropped, "deadline" when the shutdown deadline came first, "handover" when the
        fresh lane's rows aged into the backlog lane's while it was retrying them."""
        assert self.spool is not None and self.sender is not None
        if len(rows) == 1 or any(r.proto != 1 for r in rows):
            # 2.0 requests each carry their own symbol table: sent one by one.
            parts = [_Part(r.body, r.samples, r.proto) for r in rows]
        else:  # merge a backlog's rows into one request: fewer, larger requests drain faster
            raw = b"".join(decompress(r.body) for r in rows)
            parts = [_Part(compress(raw), sum(r.samples for r in rows))]
        attempt = 0
        backoff = self.cfg.remote_write.min_backoff
        while parts:
            part = parts[0]
            if part.proto == 2 and self.protocol == 1:
                part = parts[0] = _Part(v2_to_v1(part.body), part.samples, 1)
            if attempt:
                with self.counters.lock:
                    self.counters.retried += part.samples
            outcome = self._post(part.body, attempt, part.proto)
            if outcome.kind == "unsupported" and self.cfg.remote_write.protocol == "auto":
                self._fall_back_to_v1(outcome)
                continue  # the same part again, as 1.0
            if outcome.kind == "unsupported":
                why = "the receiver does not take Remote-Write 2.0 (remote_write.protocol: v2)"
                outcome = Outcome("hold", outcome.code, message=why)
            if outcome.kind == "ok":
                if outcome.written is not None and outcome.written < part.samples:
                    self._count_drop("not_written", part.samples - outcome.written)
                if self._failing:
                    log.info("remote write recovered after %d failed attempt(s)", self._failing)
                    self._failing = 0
                parts.pop(0)
                attempt, backoff = 0, self.cfg.remote_write.min_backoff
                with self.counters.lock:
                    self.counters.sent += part.samples
                    self.counters.last_success = self.clock()
            elif outcome.kind == "reject":
                parts.pop(0)
                self._count_drop(outcome.reason, part.samples)
                log.error("receiver rejected %d sample(s) (%s %s): %s", part.samples,
                          outcome.code, outcome.reason, outcome.message[:300])  # fmt: skip
            elif outcome.kind == "too_large":
                parts[0:1] = self._split(part)
            elif outcome.kind == "hold":
                self._log_hold(outcome)
                attempt += 1
                delay = min(max(HOLD_MIN_PROBE, backoff, outcome.retry_after or 0), HOLD_MAX_PROBE)
                backoff = min(max(backoff * 2, HOLD_MIN_PROBE), HOLD_MAX_PROBE)
                if not self._sleep(delay):
                    return "deadline"
                if self._aged_out(rows, lane):
                    return "handover"
            else:  # retry
                attempt += 1
                jittered = backoff / 2 + random.uniform(0, backoff / 2)
                delay = outcome.retry_after if outcome.retry_after is not None else jittered
                backoff = min(backoff * 2, self.cfg.remote_write.max_backoff)
                self._log_retry(outcome, delay)
                if not self._sleep(delay):
                    return "deadline"
                if self._aged_out(rows, lane):
                    return "handover"
        self.spool.remove(rows)
        return "done"

    def _fall_back_to_v1(self, outcome: Outcome) -> None:
        """The receiver is 1.x: send 1.0 from now on, and remember it across restarts."""
        if self.protocol == 2:
            log.warning("the receiver does not take Remote-Write 2.0 (%s: %s); using 1.0 from "
                        "now on", outcome.code, outcome.message[:200])  # fmt: skip
        self.protocol = 1
        if self.spool is not None:
            with contextlib.suppress(OSError):
                path = os.path.join(self.spool.directory, PROTOCOL_FILE)
                with open(path, "w", encoding="utf-8") as f:
                    f.write("1\n")

    def _initial_protocol(self) -> int:
        choice = self.cfg.remote_write.protocol
        if choice == "v1":
            return 1
        if choice == "v2" or self.spool is None:
            return 2
        try:
            path = os.path.join(self.spool.directory, PROTOCOL_FILE)
            with open(path, encoding="utf-8") as f:
                return 1 if f.read().strip() == "1" else 2
        except OSError:
            return 2

    def _aged_out(self, rows: list[Row], lane: str) -> bool:
        return lane == "fresh" and max(r.ts_ms for r in rows) < self._fresh_since_ms()

    def _post(self, body: bytes, attempt: int, proto: int = 1) -> Outcome:
        assert self.sender is not None
        start = time.monotonic()
        outcome = self.sender.send(body, attempt, proto)
        with self.counters.lock:
            self.counters.send_seconds += time.monotonic() - start
            self.counters.responses[outcome.code] += 1
        return outcome

    def _split(self, part: _Part) -> list[_Part]:
        fields = split_request(decompress(part.body))
        # A 2.0 request's series refer to its symbol table: both halves keep all of it.
        common = [f for f in fields if part.proto == 2 and f[:1] == b"\x22"]
        fields = [f for f in fields if not (part.proto == 2 and f[:1] == b"\x22")]
        if len(fields) < 2:
            self._count_drop("too_large", part.samples)
            log.error("a single series is larger than the receiver accepts; dropped")
            return []
        mid = len(fields) // 2
        halves = (common + fields[:mid], common + fields[mid:])
        log.warning("receiver answered 413; splitting a request of %d sample(s)", part.samples)
        return [
            _Part(compress(b"".join(h)), _count_series(h, part.proto), part.proto) for h in halves
        ]

    def _count_drop(self, reason: str, samples: int) -> None:
        with self.counters.lock:
            self.counters.dropped[reason] += samples

    def _log_retry(self, outcome: Outcome, delay: float) -> None:
        """The first failure of a streak, then at most one line a minute: an outage of hours
        must not fill the disk with log lines."""
        self._failing += 1
        now = time.monotonic()
        if self._failing == 1 or now - self._last_retry_log >= HOLD_LOG_EVERY:
            self._last_retry_log = now
            assert self.spool is not None
            requests, _, _ = self.spool.stats()
            log.warning("remote write failed (%s: %s); %d attempt(s) so far, %d request(s) "
                        "spooled; retrying in %.2fs", outcome.code, outcome.message[:200],
                        self._failing, requests, delay)  # fmt: skip

    def _log_hold(self, outcome: Outcome) -> None:
        now = time.monotonic()
        if now - self._last_hold_log >= HOLD_LOG_EVERY:
            self._last_hold_log = now
            assert self.spool is not None
            requests, _, _ = self.spool.stats()
            log.error("receiver refused the request (%s: %s); holding %d request(s) in the "
                      "spool and probing again", outcome.code, outcome.message[:200],
                      requests)  # fmt: skip
