"""libvirt collection: one bulk `getAllDomainStats` call per cycle, one XML read per domain.

The connection is read-only (it works through `libvirt-sock-ro` and can call nothing that
changes a domain), long-lived, and reopened when it drops. A domain's XML is fetched only when
the domain is new to the agent, when libvirt reports a metadata or definition change for it,
or when the safety-net refresh interval has passed, and the parsed result is cached by UUID
(`DomainInfoCache`). After the bulk call, a few per-domain calls may follow: a second ask for
a record left partial by another client's job, and job info (`FollowUpCalls`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import libvirt

from pusher.catalog import Reading, add_derived, reading
from pusher.config import DEFAULT_STATS_GROUPS, Config
from pusher.filters import DomainFilter
from pusher.host import HostLayout, HostStats, read_host_stats, read_layout
from pusher.jobs import DomainJobs, JobTally
from pusher.kvm import add_vcpu_totals
from pusher.nova import DomainInfo, NovaInstance, parse_domain_xml
from pusher.placement import read_placement
from pusher.pools import PoolStats, StoragePools

__all__ = [
    "Collector",
    "DaemonPool",
    "DeadlineCollector",
    "DomainInfoCache",
    "DomainStats",
    "FollowUpCalls",
    "HostInfo",
    "LibvirtUnavailable",
    "Snapshot",
    "is_partial",
    "read_host_info",
    "stats_flags",
    "version_string",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# libvirt-python prints every error to stderr besides raising it; the exception (logged by the
# agent with context) is enough.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

STATS_GROUPS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
# No state filter: running, paused, shut-off (and crashed, suspended) domains all come back.
# NOWAIT: a domain busy with a job (migration, hung monitor) answers with what it has
# instead of stalling the whole call.
STATS_FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT


# Keys a running domain always reports, one per group (a domain without disks still has
# block.count = 0).
_RUNNING_KEY = {
    "cpu_total": "cpu.time",
    "balloon": "balloon.current",
    "vcpu": "vcpu.current",
    "interface": "net.count",
    "block": "block.count",
}
# Per-domain calls in flight at once (the fallbacks for stuck and partial domains).
EACH_WORKERS = 8
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_PAUSED = 3
LIVE_STATES = (VIR_DOMAIN_RUNNING, VIR_DOMAIN_PAUSED)  # states that can have a job
# jobStats calls in flight at once (collect.job_info), on their own threads.
JOB_WORKERS = 4
# Bulk stats calls left hanging (by stuck guests) before the agent stops starting new ones.
MAX_PENDING_CALLS = 3
# Beyond its own deadline, the per-domain fallback may take this many seconds more (or one
# collect.timeout, if longer) before the cycle gives it up. Its listing and new domains' XML
# wait for domains that libvirtd holds while it starts or tears a guest down, which on a loaded
# host takes seconds (1.5 s was seen to be too short): a bound on a hung libvirtd, not a
# deadline for a slow one, whose late snapshot is better than a gap and a false libvirt_up 0.
FALLBACK_GRACE = 10.0


def stats_flags(groups: Iterable[str]) -> int:
    """`collect.groups` names -> libvirt's VIR_DOMAIN_STATS_* flags, OR-ed."""
    flags = 0
    for name in groups:
        flag = getattr(libvirt, f"VIR_DOMAIN_STATS_{name.upper()}", None)
        if flag is None:
            log.warning("this libvirt-python has no stats group %r; not asking for it", name)
            continue
        flags |= flag
    return flags


def is_partial(stats: dict[str, Any], groups: Collection[str] = DEFAULT_STATS_GROUPS) -> bool:
    """Whether a running domain's record lacks what only its QEMU monitor gives: with
    NOWAIT, a domain whose job another client holds comes back with block devices named but
    without their counters, and without some cpu and balloon keys. Only the stats `groups`
    asked for are expected."""
    if stats.get("state.state") != VIR_DOMAIN_RUNNING:
        return False
    if any(key not in stats for group, key in _RUNNING_KEY.items() if group in groups):
        return True
    return "block" in groups and bool(stats.get("block.count")) and "block.0.rd.reqs" not in stats


class DaemonPool:
    """A pool of daemon threads for libvirt calls that may never return.

    A call that reaches a stuck QEMU monitor hangs for as long as the guest is stuck, hours
    maybe, and libvirt cannot cancel it. `ThreadPoolExecutor`'s workers are joined when the
    interpreter exits, so one such call would keep every mode of the agent from exiting;
    these workers are daemon threads, left behind at exit."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._queue: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._queue.put((future, fn, args))
            if self._idle == 0 and len(self._threads) < self._workers:
                t = threading.Thread(target=self._work, daemon=True,
                                     name=f"{self._name}-{len(self._threads)}")  # fmt: skip
                self._threads.append(t)
                t.start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as e:  # handed to whoever waits on the future
                future.set_exception(e)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        """Cancel what has not started; idle workers end, busy ones when their call does."""
        with self._lock:
            self._closed = True
            threads = len(self._threads)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in range(threads):
            self._queue.put(None)


class LibvirtUnavailable(Exception):
    """libvirt could not be reached or the bulk call failed; the message says why."""


@dataclass(frozen=True)
class DomainStats:
    name: str
    uuid: str
    stats: dict[str, Any]
    info: DomainInfo


@dataclass(frozen=True)
class HostInfo:
    """The host as libvirt describes it; read once per connection."""

    cpus: int
    memory_bytes: int
    cpu_mhz: int
    libvirt_version: str
    hypervisor: str
    hypervisor_version: str


def version_string(v: int) -> str:
    """libvirt's packed version number (major * 1,000,000 + minor * 1,000 + release)."""
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def read_host_info(conn: Any) -> HostInfo | None:
    """The host as the connection describes it; None (logged) when libvirt will not say."""
    try:
        _model, memory_mib, cpus, mhz, *_ = conn.getInfo()
        hv_version = conn.getVersion()
        return HostInfo(
            cpus=int(cpus),
            memory_bytes=int(memory_mib) * 1024 * 1024,
            cpu_mhz=int(mhz),
            libvirt_version=version_string(conn.getLibVersion()),
            hypervisor=str(conn.getType()),
            hypervisor_version=version_string(hv_version) if hv_version else "",
        )
    except libvirt.libvirtError as e:
        log.info("no host information from libvirt: %s", e)
        return None


@dataclass(frozen=True)
class Snapshot:
    ts_ms: int
    domains: list[DomainStats]
    duration: float  # seconds the bulk call took
    xml_fetches: int  # domain XML documents read this cycle
    host: HostInfo | None = None
    host_stats: HostStats | None = None  # `collect.host_stats`: None when off or not read
    pools: tuple[PoolStats, ...] | None = None  # `collect.storage_pools`: None when off
    # uuid -> the domain's finished jobs, from libvirt's job-completed event (`pusher.jobs`)
    finished_jobs: dict[str, DomainJobs] = field(default_factory=dict)


_event_loop_lock = threading.Lock()
_event_loop_started = False


def _start_event_loop() -> None:
    """libvirt's default event loop on a daemon thread: needed for keepalive and events."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class DomainInfoCache:
    """Each domain's parsed XML (its Nova metadata), by UUID, read again only when needed.

    A class of its own because two threads share it: libvirt's event thread marks domains
    whose XML changed (or drops those undefined) while a collection reads and fills it."""

    def __init__(self, refresh_interval: float) -> None:
        self.refresh_interval = refresh_interval  # seconds before an unchanged XML is re-read
        self.metadata_errors = 0  # XML documents read with problems (`DomainInfo.problems`)
        self._cache: dict[str, tuple[float, DomainInfo]] = {}  # uuid -> (fetched at, info)
        self._dirty: set[str] = set()  # uuids whose XML changed since it was read
        self._lock = threading.Lock()

    def on_xml_change(self, _conn: Any, dom: Any, *_args: Any) -> None:
        """Any event after which the domain XML reads differently: read it again."""
        with self._lock:
            self._dirty.add(dom.UUIDString())

    def on_lifecycle(self, _conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        uuid = dom.UUIDString()
        with self._lock:
            if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
                self._cache.pop(uuid, None)
            elif event == libvirt.VIR_DOMAIN_EVENT_DEFINED:
                self._dirty.add(uuid)  # redefined: Nova rewrote the XML (resize, rebuild)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def readings(self) -> list[Reading]:
        return [reading("pusher_nova_metadata_errors_total", self.metadata_errors)]

    def cached(self, uuid: str) -> DomainInfo | None:
        """What was read of the domain's XML, without reading it."""
        with self._lock:
            entry = self._cache.get(uuid)
        return entry[1] if entry is not None else None

    def retain(self, uuids: set[str]) -> None:
        """Forget every domain not in `uuids` (gone from libvirt)."""
        with self._lock:
            for gone in set(self._cache) - uuids:
                del self._cache[gone]

    def info(self, dom: Any, uuid: str, now: float) -> tuple[DomainInfo | None, int]:
        """The domain's info, and 1 if its XML was read for it (0 if it came from the cache).
        None: the domain is gone and nothing is known of it (undefined while its record was
        on the way: the undefine event dropped its cache entry); exported without its Nova
        data it would change every label set of its series for its last cycle."""
        with self._lock:
            cached = self._cache.get(uuid)
            dirty = uuid in self._dirty
            self._dirty.discard(uuid)
        if cached is not None and not dirty and now - cached[0] < self.refresh_interval:
            return cached[1], 0
        try:
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as e:
            # Gone between the stats call and now, or a transient error: keep what we had.
            log.debug("cannot read XML of %s: %s", uuid, e)
            if cached is not None:
                return cached[1], 1
            return (None if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN else DomainInfo()), 1
        info = parse_domain_xml(xml)
        if info.problems:
            self.metadata_errors += 1
            log.warning("domain %s: %s", uuid, "; ".join(info.problems))
        if cached is not None and cached[1].nova != info.nova:
            log.info("domain %s: Nova metadata changed", uuid)
        with self._lock:
            self._cache[uuid] = (now, info)
        return info, 1


class FollowUpCalls:
    """The per-domain calls after a cycle's bulk call: a second ask for partial records and
    the job info calls (`collect.job_info`), with the pools they run on.

    A class of its own because these calls outlive their cycle when a guest is stuck: what
    is still in flight is remembered across cycles so that no domain is asked twice at once,
    and each domain's last job answer stands in for a late one."""

    def __init__(self, is_exported: Callable[[Any], bool]) -> None:
        # (virDomain) -> whether the filters export it: domains left out are not called.
        self._is_exported = is_exported
        self.job_errors = 0
        self.partial_records = 0  # running domains whose first record was partial
        self.partial_kept = 0  # of those, the ones still partial when exported
        # uuid -> the re-ask of its partial record, "job:" + uuid -> its jobStats call; two
        # collect() calls may overlap (one hung past its cycle), hence the lock, which also
        # keeps their prunings of `_jobs` apart.
        self._asking: dict[str, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}  # uuid -> its last job.<key> stats
        self._each_pool: DaemonPool | None = None
        self._job_pool: DaemonPool | None = None

    def readings(self, job_info: bool) -> list[Reading]:
        """`job_info`: whether job info is asked for at all (its error count only then)."""
        out = [
            reading("pusher_partial_records_total", self.partial_records),
            reading("pusher_partial_records_kept_total", self.partial_kept),
        ]
        if job_info:
            out.append(reading("pusher_job_info_errors_total", self.job_errors))
        return out

    def stats_pool(self) -> DaemonPool:
        """The pool for per-domain stats calls; `Collector.collect_each` shares it, so all
        such calls together stay within EACH_WORKERS threads."""
        if self._each_pool is None:
            self._each_pool = DaemonPool(EACH_WORKERS, "libvirt-each")
        return self._each_pool

    def close(self) -> None:
        if self._each_pool is not None:
            self._each_pool.shutdown()
            self._each_pool = None
        if self._job_pool is not None:
            self._job_pool.shutdown()
            self._job_pool = None

    def _in_flight(self, key: str) -> bool:
        with self._lock:
            pending = self._asking.get(key)
            return pending is not None and not pending.done()

    def _track(self, key: str, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._asking[key] = future

    def _untrack_done(self) -> None:
        with self._lock:
            for key in [k for k, f in self._asking.items() if f.done()]:
                del self._asking[key]

    def complete_partial(
        self, conn: Any, records: list[Any], groups: Collection[str], flags: int, deadline: float
    ) -> list[Any]:
        """Ask once more, after a moment, for running domains whose record is partial
        (`is_partial`): another client (Nova, an exporter) held the domain's job, which is
        usually short."""
        partial = [
            i
            for i, (dom, stats) in enumerate(records)
            if is_partial(stats, groups) and self._is_exported(dom)
        ]
        if not partial:
            return records
        self.partial_records += len(partial)
        # Ask each such domain again, this time waiting for its job (no NOWAIT): another
        # client's job is short. A domain whose monitor is stuck does not answer within
        # `partial_wait` and keeps its partial record.
        pool = self.stats_pool()
        futures: dict[concurrent.futures.Future[Any], int] = {}
        for i in partial:
            uuid = records[i][0].UUIDString()
            if self._in_flight(uuid):
                continue  # still waiting from an earlier cycle: one thread per domain at most
            f = pool.submit(conn.domainListGetStats, [records[i][0]], flags, 0)
            self._track(uuid, f)
            futures[f] = i
        wait = max(0.0, deadline - time.monotonic())
        done, _ = concurrent.futures.wait(futures, timeout=wait)
        self._untrack_done()
        out = list(records)
        for f in done:
            i = futures[f]
            try:
                again = f.result()
            except libvirt.libvirtError as e:
                log.debug("second stats call for a partial record failed: %s", e)
                continue
            if again and len(again[0][1]) > len(records[i][1]):
                out[i] = again[0]
            else:
                self.partial_kept += 1
        self.partial_kept += len(partial) - len(done)
        return out

    def ask_jobs(self, records: list[Any]) -> dict[concurrent.futures.Future[Any], str]:
        """Start the job info call (`collect.job_info`) of each running or paused domain, on
        a pool of its own (a call that hangs never holds up the stats fallbacks), one call
        in flight per domain at most."""
        if self._job_pool is None:
            self._job_pool = DaemonPool(JOB_WORKERS, "libvirt-job")
        futures: dict[concurrent.futures.Future[Any], str] = {}
        for dom, stats in records:
            if stats.get("state.state") not in LIVE_STATES:
                continue
            uuid = dom.UUIDString()
            if self._in_flight("job:" + uuid) or not self._is_exported(dom):
                continue
            f = self._job_pool.submit(dom.jobStats, 0)
            self._track("job:" + uuid, f)
            futures[f] = uuid
        return futures

    def add_jobs(
        self,
        records: list[Any],
        futures: dict[concurrent.futures.Future[Any], str],
        deadline: float,
    ) -> list[Any]:
        """Each running or paused domain's job info as `job.<key>` stats keys: this cycle's
        answer, or, for a domain whose call is late, the last answer (its series keep their
        values instead of flapping). The call needs no QEMU monitor while no job runs."""
        done, late = concurrent.futures.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        for f in late:
            f.cancel()  # not started yet: the next cycle asks again
        self._untrack_done()
        for f in done:
            uuid = futures[f]
            try:
                job = f.result()
            except concurrent.futures.CancelledError:
                continue
            except libvirt.libvirtError as e:
                # Refused for this domain (an incoming migration's destination has no
                # statistics), or the domain went away after the bulk call.
                if e.get_error_code() not in (
                    libvirt.VIR_ERR_OPERATION_INVALID,
                    libvirt.VIR_ERR_NO_DOMAIN,
                ):
                    self.job_errors += 1
                    log.debug("jobStats failed: %s", e)
                self._jobs.pop(uuid, None)
                continue
            self._jobs[uuid] = {f"job.{k}": v for k, v in job.items()}
        return [(dom, self.with_job(dom.UUIDString(), stats)) for dom, stats in records]

    def with_job(self, uuid: str, stats: dict[str, Any]) -> dict[str, Any]:
        """A live domain's record with its last answered job info (`job.<key>`) added."""
        job = self._jobs.get(uuid) if stats.get("state.state") in LIVE_STATES else None
        return {**stats, **job} if job else stats

    def retain(self, uuids: set[str]) -> None:
        """Forget the last job info of every domain not in `uuids` (gone from libvirt)."""
        with self._lock:
            for gone in set(self._jobs) - uuids:
                del self._jobs[gone]


class Collector:
    """Owns the libvirt connection and runs a cycle's collection: the bulk call, then the
    follow-up calls (`FollowUpCalls`) and the domains' XML (`DomainInfoCache`)."""

    def __init__(
        self,
        uri: str,
        refresh_interval: float = 600.0,
        clock: Callable[[], float] = time.time,
        use_events: bool = True,
        partial_wait: float = 1.0,
        groups: Iterable[str] = DEFAULT_STATS_GROUPS,
        job_info: bool = False,
        exported: Callable[[str, NovaInstance | None], bool] | None = None,
        host_stats: bool = False,
        storage_pools: bool = False,
        vcpu_placement: bool = False,
    ) -> None:
        # `collect.storage_pools`: a list call and one or two calls per pool per cycle
        self.pools = StoragePools() if storage_pools else None
        # `collect.vcpu_placement`: a virDomainGetVcpus call per live exported domain
        self.vcpu_placement = vcpu_placement
        self.job_info = job_info  # `collect.job_info`: a jobStats call per live domain
        self.host_stats = host_stats  # `collect.host_stats`: three node calls per cycle
        self.layout = HostLayout()  # the host's huge page sizes and NUMA nodes
        self.groups = tuple(groups)  # the stats groups asked for (`collect.groups`)
        self.flags = stats_flags(self.groups)
        # the vm group: a KVM guest's per-vCPU KVM statistics, summed per guest, join its own
        self.kvm_totals = "vm" in self.groups
        self.partial_wait = partial_wait
        self.uri = uri
        self.clock = clock
        self.use_events = use_events
        self._conn: Any = None
        self._callback_ids: list[int] = []
        self._domains = DomainInfoCache(refresh_interval)
        self._follow_ups = FollowUpCalls(self._is_exported)
        self.jobs = JobTally()  # finished jobs, counted across reconnections
        # (domain name, Nova data) -> whether the domain is exported (`filter.*`): domains
        # left out get no per-domain calls (partial re-asks, job info).
        self.exported = exported or (lambda name, nova: True)
        self.host: HostInfo | None = None

    @classmethod
    def from_config(cls, cfg: Config, use_events: bool = True) -> Collector:
        domain_filter = DomainFilter.from_config(cfg.filter)
        return cls(
            cfg.libvirt.uri,
            cfg.nova.refresh_interval,
            use_events=use_events,
            # Re-asks of partial records and job info share a quarter of collect.timeout.
            partial_wait=cfg.collect.timeout / 4,
            groups=cfg.collect.groups,
            job_info=cfg.collect.job_info,
            exported=domain_filter.admits if domain_filter else None,
            host_stats=cfg.collect.host_stats,
            storage_pools=cfg.collect.storage_pools,
            vcpu_placement=cfg.collect.vcpu_placement,
        )

    def readings(self) -> list[Reading]:
        """The numbers of its parts: the XML cache's and the follow-up calls'."""
        return [*self._domains.readings(), *self._follow_ups.readings(self.job_info)]

    # --- connection

    def _connect(self) -> Any:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            self.close()
            log.warning("libvirt connection to %s lost; reconnecting", self.uri)
        if self.use_events:
            _start_event_loop()
        try:
            conn = libvirt.openReadOnly(self.uri)
        except libvirt.libvirtError as e:
            raise LibvirtUnavailable(f"cannot connect to {self.uri}: {e}") from None
        if conn is None:
            raise LibvirtUnavailable(f"cannot connect to {self.uri}")
        if self.use_events:
            self._subscribe(conn)
        self.host = read_host_info(conn)
        if self.host_stats:
            self.layout = read_layout(conn)
        self._conn = conn
        # Anything may have changed while we were away: read every domain's XML again.
        self._domains.clear()
        log.info("connected to libvirt at %s", self.uri)
        return conn

    def _subscribe(self, conn: Any) -> None:
        # Drivers without a daemon (test:///) have no keepalive.
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(5, 3)
        # The XML changes with the metadata, a redefinition, a device hot-plugged or
        # unplugged, and live tuning (a disk's I/O limits set with blkdeviotune).
        events = (
            (libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._domains.on_xml_change),
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._domains.on_lifecycle),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._domains.on_xml_change),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._domains.on_xml_change),
            (libvirt.VIR_DOMAIN_EVENT_ID_TUNABLE, self._domains.on_xml_change),
            (libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self.jobs.on_job_completed),
        )
        for event_id, callback in events:
            try:
                self._callback_ids.append(
                    conn.domainEventRegisterAny(None, event_id, callback, None)
                )
            except libvirt.libvirtError as e:
                log.info("libvirt events unavailable (%s); refreshing XML periodically", e)

    def close(self) -> None:
        self._follow_ups.close()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for cid in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(cid)
        self._callback_ids.clear()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    # --- collection

    def collect(self) -> Snapshot:
        """One cycle: the bulk stats call, then XML for domains not (or no longer) cached."""
        conn = self._connect()
        ts_ms = int(self.clock() * 1000)
        start = time.monotonic()
        try:
            records = conn.getAllDomainStats(self.flags, STATS_FLAGS)
        except libvirt.libvirtError as e:
            # A dead connection surfaces here; drop it so the next cycle reconnects.
            if not self._alive():
                self.close()
            raise LibvirtUnavailable(f"getAllDomainStats failed: {e}") from None
        # The re-asks of partial records and the job info calls run together, within one
        # quarter of collect.timeout in all.
        deadline = time.monotonic() + self.partial_wait
        jobs = self._follow_ups.ask_jobs(records) if self.job_info else {}
        records = self._follow_ups.complete_partial(
            conn, records, self.groups, self.flags, deadline
        )
        if self.job_info:
            records = self._follow_ups.add_jobs(records, jobs, deadline)
        duration = time.monotonic() - start
        now = self.clock()
        domains: list[DomainStats] = []
        fetches = 0
        seen: set[str] = set()
        for dom, stats in records:
            uuid = dom.UUIDString()
            info, fetched = self._domains.info(dom, uuid, now)
            fetches += fetched
            if info is None:  # undefined since the stats call
                continue
            seen.add(uuid)
            if self.vcpu_placement:
                stats = self._with_placement(dom, stats)
            if self.kvm_totals:
                add_vcpu_totals(stats)
            add_derived(stats)
            domains.append(DomainStats(dom.name(), uuid, stats, info))
        self._domains.retain(seen)
        self._follow_ups.retain(seen)
        self.jobs.retain(seen)
        host = read_host_stats(conn, self.layout) if self.host_stats else None
        pools = self.pools.read(conn) if self.pools is not None else None
        return Snapshot(
            ts_ms, domains, duration, fetches, self.host, host, pools, self.jobs.totals()
        )

    def _with_placement(self, dom: Any, stats: dict[str, Any]) -> dict[str, Any]:
        """A live exported domain's record with its vCPU placement (`placement.<n>.*`)."""
        if stats.get("state.state") not in LIVE_STATES or not self._is_exported(dom):
            return stats
        return {**stats, **read_placement(dom)}

    def _is_exported(self, dom: Any) -> bool:
        """Whether the filters export this domain, judged on the Nova data already read
        (a domain not read yet counts as exported)."""
        cached = self._domains.cached(dom.UUIDString())
        if cached is None:
            return True
        try:
            return self.exported(dom.name(), cached.nova)
        except libvirt.libvirtError:
            return True

    def collect_each(self, timeout: float, skip: set[str]) -> tuple[Snapshot, set[str]]:
        """The fallback when the bulk call hangs: one stats call per domain, in parallel,
        all given up after `timeout`. Returns what answered in time and the UUIDs of the
        domains that did not (their QEMU monitor is stuck). Domains in `skip` are known to
        be stuck already and are not called.

        These calls wait for a domain's job (no NOWAIT), so the stuck domain is the one that
        does not answer; libvirt gives up such a wait after about 30 s, freeing the thread.
        """
        conn = self._connect()
        ts_ms = int(self.clock() * 1000)
        start = time.monotonic()
        try:
            doms = [d for d in conn.listAllDomains(0) if d.UUIDString() not in skip]
        except libvirt.libvirtError as e:
            raise LibvirtUnavailable(f"listAllDomains failed: {e}") from None
        pool = self._follow_ups.stats_pool()
        futures = {pool.submit(conn.domainListGetStats, [d], self.flags, 0): d for d in doms}
        done, not_done = concurrent.futures.wait(futures, timeout=timeout)
        now = self.clock()
        domains: list[DomainStats] = []
        stuck = {futures[f].UUIDString() for f in not_done}
        fetches = 0
        for f in done:
            try:
                records = f.result()
            except libvirt.libvirtError as e:
                log.debug("per-domain stats failed: %s", e)
                stuck.add(futures[f].UUIDString())
                continue
            for dom, stats in records:
                uuid = dom.UUIDString()
                info, fetched = self._domains.info(dom, uuid, now)
                fetches += fetched
                if info is None:  # undefined since the stats call
                    continue
                if self.job_info:  # no job calls here: the last answer stands
                    stats = self._follow_ups.with_job(uuid, stats)
                if self.kvm_totals:
                    add_vcpu_totals(stats)
                add_derived(stats)
                domains.append(DomainStats(dom.name(), uuid, stats, info))
        took = time.monotonic() - start
        snapshot = Snapshot(
            ts_ms, domains, took, fetches, self.host, finished_jobs=self.jobs.totals()
        )
        return snapshot, stuck

    def _alive(self) -> bool:
        try:
            return bool(self._conn is not None and self._conn.isAlive())
        except libvirt.libvirtError:
            return False


class DeadlineCollector:
    """A cycle's collection within `timeout`, whatever guests are stuck.

    The bulk call runs on a worker thread, given half of the timeout; if it does not
    answer, one call per domain in parallel for the other half (`Collector.collect_each`).
    A stuck QEMU monitor holds the first call that reaches it forever (NOWAIT does not help
    that one; it helps the calls after it, which skip the held domain). A call that missed
    its deadline keeps running, as libvirt cannot cancel it, on a daemon thread that never
    keeps the process from exiting; domains found stuck stay in `stuck` until every such
    call has returned.
    """

    def __init__(
        self, collector: Collector, timeout: float, fallback_grace: float = FALLBACK_GRACE
    ) -> None:
        self.collector = collector
        self.timeout = timeout
        self.fallback_grace = max(timeout, fallback_grace)
        self.stuck: set[str] = set()  # uuids whose stats calls hang
        self.errors = 0
        self.last_error = ""  # why the last collection failed; "" when it succeeded
        self.duration = 0.0  # seconds the last collection took
        self._pool = DaemonPool(MAX_PENDING_CALLS, "libvirt")
        self._each_pool = DaemonPool(1, "libvirt-fallback")
        self._fallback: concurrent.futures.Future[tuple[Snapshot, set[str]]] | None = None
        self._pending: list[concurrent.futures.Future[Snapshot]] = []

    def collect(self) -> Snapshot | None:
        """This cycle's snapshot; None when libvirt cannot be read (logged and counted)."""
        start = time.monotonic()
        try:
            snapshot = self._collect()
        except LibvirtUnavailable as e:
            self.errors += 1
            self.last_error = str(e)
            log.error("%s", e)
            return None
        else:
            self.last_error = ""
            return snapshot
        finally:
            self.duration = time.monotonic() - start

    def _collect(self) -> Snapshot:
        self._pending = [f for f in self._pending if not f.done()]
        if not self._pending and self.stuck:
            log.info("stuck libvirt calls returned; %d domain(s) answer again", len(self.stuck))
            self.stuck.clear()
        if len(self._pending) >= MAX_PENDING_CALLS:
            raise LibvirtUnavailable(
                f"{len(self._pending)} libvirt calls have not returned; not starting another"
            )
        half = self.timeout / 2
        bulk = self._pool.submit(self.collector.collect)
        try:
            return bulk.result(timeout=half)
        except concurrent.futures.TimeoutError:
            self._pending.append(bulk)
        snapshot, stuck = self._collect_each(half)
        new = stuck - self.stuck
        if new:
            log.warning("libvirt stats did not answer within %gs for %d domain(s): %s",
                        half, len(new), ", ".join(sorted(new)))  # fmt: skip
        self.stuck |= stuck
        return snapshot

    def _collect_each(self, half: float) -> tuple[Snapshot, set[str]]:
        """The fallback, on a thread of its own: its listing and connection calls can hang
        too (libvirtd holds a domain that is being destroyed while QEMU is reaped, or is
        itself stuck), and the cycle must not hang with them."""
        if self._fallback is not None and not self._fallback.done():
            raise LibvirtUnavailable("the last per-domain fallback has not returned")
        self._fallback = self._each_pool.submit(self.collector.collect_each, half, set(self.stuck))
        wait = half + self.fallback_grace
        start = time.monotonic()
        try:
            result = self._fallback.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            raise LibvirtUnavailable(
                f"libvirt did not answer the per-domain fallback within {wait:g}s"
            ) from None
        took = time.monotonic() - start
        if took > half:
            log.info("the per-domain fallback took %.2fs, past its %gs", took, half)
        return result

    def readings(self) -> list[Reading]:
        return [
            reading("pusher_collect_duration_seconds", self.duration),
            reading("pusher_collect_errors_total", self.errors),
            *self.collector.readings(),
        ]

    def close(self, wait: float = 1.0) -> None:
        """Give up the pending calls and close the connection, waiting at most `wait`
        seconds: closing talks to libvirtd (event deregistrations), which a stuck guest's
        calls can keep busy, and an agent that is stopping must not wait on that."""
        self._pool.shutdown()
        self._each_pool.shutdown()
        closing = threading.Thread(target=self.collector.close, name="libvirt-close", daemon=True)
        closing.start()
        closing.join(wait)
