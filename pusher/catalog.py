"""The metric catalog: one table declares every metric the agent sends.

Each `Metric` names its libvirt source key (if any), the factor to base units, its type, unit,
help and labels. `docs/metrics.md` is generated from this table (`python -m pusher.catalog`),
the dry-run's HELP/TYPE lines and the remote-write metadata come from it, and
`domain_samples` uses it to turn one domain's `getAllDomainStats` record into samples.

Names follow the libvirt-exporter lineage that existing dashboards query; keys those exporters
never had get names in the same families. Base units throughout: nanoseconds and KiB are
converted to seconds and bytes, and every counter ends in `_total`.
"""

from __future__ import annotations

import operator
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from pusher.devices import IOTUNE

__all__ = [
    "CATALOG",
    "DERIVED_KEYS",
    "DEVICE_PREFIXES",
    "EVENT_SERIES",
    "XML_DETAIL_LABELS",
    "XML_SERIES",
    "DomainPlan",
    "LabelLimits",
    "LabelPairs",
    "Metric",
    "Reading",
    "Reporter",
    "Sample",
    "SeriesKey",
    "add_derived",
    "by_name",
    "domain_samples",
    "label_pairs",
    "max_label_names",
    "plan_domain",
    "reading",
    "series_labels",
]

MetricType = Literal["counter", "gauge"]
LabelPairs = tuple[tuple[str, str], ...]
# (metric name, the series' own labels, labels shared by all series of one domain or agent).
# Kept apart so building a key costs two references; `series_labels` merges them once, and
# the encoder caches the result per key.
SeriesKey = tuple[str, LabelPairs, LabelPairs]
Sample = tuple[SeriesKey, float]
# One of the agent's own numbers: (metric name, the series' own labels, value). Each part of
# the agent that keeps numbers reports them as readings (`Reporter`); the agent adds the
# external labels.
Reading = tuple[str, LabelPairs, float]


class Reporter(Protocol):
    def readings(self) -> Iterable[Reading]: ...


NS = 1e-9  # nanoseconds -> seconds
KIB = 1024.0  # KiB -> bytes
MIB = 1024.0 * 1024.0  # MiB -> bytes
MS = 1e-3  # milliseconds -> seconds
# Mimir's default limits: a label value's length (bytes, as Go counts a string's length; the
# metric name counts as one), a label name's length, and label names per series.
MAX_LABEL_VALUE_BYTES = 2048
MAX_LABEL_NAME_LENGTH = 1024
MAX_LABEL_NAMES = 30

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# Units a metric name can end in (before `_total`), longest first; a name that ends in one
# has that unit in its metadata, and a metric with a unit names it.
UNITS = ("bytes_per_second", "seconds", "bytes", "hertz")


def unit_of(name: str) -> str:
    """The unit a metric name ends in (`_bytes`, `_seconds_total`…), or "" for none."""
    base = name.removesuffix("_total")
    return next((u for u in UNITS if base.endswith("_" + u)), "")


@dataclass(frozen=True)
class Metric:
    name: str
    type: MetricType
    unit: str  # "seconds", "bytes" or "" (a count or a code)
    help: str
    labels: tuple[str, ...] = ()  # the series' own labels, beyond the domain's or agent's
    # libvirt stats key; "<n>" stands for a device, vCPU or IOThread index, "<i>" for a second
    # index below it (a memory controller of a bandwidth monitor)
    source: str = ""
    scale: float = 1.0
    scope: Literal["domain", "host", "agent"] = "domain"

    def __post_init__(self) -> None:
        # The one place names are checked, so a typo in the table fails at import.
        if not _NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r} is not snake_case")
        if (self.type == "counter") != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters, and only counters, end in _total")
        if self.unit != unit_of(self.name):
            raise ValueError(f"{self.name}: its unit is {unit_of(self.name)!r}, not {self.unit!r}")
        if not self.help.endswith("."):
            raise ValueError(f"{self.name}: help must be one sentence ending in a period")


# The own labels of a device's series, by the source key's prefix (the part before "<n>").
_DEVICE_LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "vcpu": ("vcpu",),
    "placement": ("vcpu",),
    "net": ("target_device", "port_id"),
    "block": ("target_device", "source_file", "volume_id"),
    "iothread": ("iothread",),
    "dirtyrate.vcpu": ("vcpu",),
    "cpu.cache.monitor": ("monitor",),
    "memory.bandwidth.monitor": ("monitor",),
}
# Monitors (resctrl) report per cache bank or memory controller: the second index ("<i>")
# of their keys, with the key naming the host's id for it and the label that carries it.
_SUB_INDEX: dict[str, tuple[str, str]] = {
    "cpu.cache.monitor": ("bank", "cache_bank"),
    "memory.bandwidth.monitor": ("node", "memory_node"),
}


def _m(
    name: str, type_: MetricType, unit: str, help_: str, source: str = "",
    scale: float = 1.0, labels: tuple[str, ...] = (), scope: str = "domain",
) -> Metric:  # fmt: skip
    if not labels and "<n>" in source:
        prefix = source.partition(".<n>.")[0]
        labels = _DEVICE_LABEL_NAMES[prefix]
        if "<i>" in source:
            labels = (*labels, _SUB_INDEX[prefix][1])
    return Metric(name, type_, unit, help_, labels, source, scale, scope)  # type: ignore[arg-type]


def _kvm(stat: str, kind: str, help_: str, vcpu: bool = False) -> Metric:
    """A KVM statistic (`pusher.kvm`): `kind` is libvirt's suffix (sum: a counter; cur, max:
    gauges); a name in `_ns` is a time, in seconds here. `vcpu`: per vCPU in libvirt, summed
    over the guest's vCPUs by the agent (`vm.vcpus.<name>.<kind>`)."""
    base, scale, unit = stat, 1.0, ""
    if stat.endswith("_ns"):
        base, scale, unit = stat.removesuffix("_ns") + "_seconds", NS, "seconds"
    name = f"libvirt_domain_kvm_{base}" + ("_total" if kind == "sum" else "")
    source = f"vm.{'vcpus.' if vcpu else ''}{stat}.{kind}"
    if vcpu and kind != "cur":
        help_ = help_.removesuffix(".") + ", all vCPUs together."
    return _m(name, "counter" if kind == "sum" else "gauge", unit, help_, source, scale)


def _iotune_help(element: str) -> str:
    """The help of the gauge of an `<iotune>` element."""
    if element == "size_iops_sec":
        return "Size of one I/O operation as the disk's IOPS limits count it: a larger one counts as several (iotune size_iops_sec)."
    op, _, rest = element.partition("_")
    what = {"total": "reads and writes together", "read": "reads", "write": "writes"}[op]
    unit = "bytes per second" if rest.startswith("bytes") else "I/O operations per second"
    if rest.endswith("_max_length"):
        return f"Longest time the disk's {what} may run at their burst limit in {unit}, in seconds (iotune {element})."
    if rest.endswith("_max"):
        return f"Burst limit of the disk's {what}, in {unit} (iotune {element})."
    return (
        f"Limit of the disk's {what}, in {unit} (iotune {element}); compare with the measured rate."
    )


_D = "libvirt_domain_"
_B = "libvirt_domain_block_stats_"
_I = "libvirt_domain_interface_stats_"
_M = "libvirt_domain_memory_stats_"
_P = "libvirt_domain_perf_"

# fmt: off
CATALOG: tuple[Metric, ...] = (
    # --- host and agent
    _m("libvirt_up", "gauge", "", "Whether the last bulk stats call to libvirt succeeded (1) or not (0).", scope="host"),
    _m("libvirt_domains", "gauge", "", "Number of domains the last bulk stats call returned.", scope="host"),
    _m("libvirt_node_cpus", "gauge", "", "Logical CPUs of the host, as libvirt reports them.", scope="host"),
    _m("libvirt_node_memory_bytes", "gauge", "bytes", "Physical memory of the host.", scope="host"),
    _m("libvirt_node_cpu_frequency_hertz", "gauge", "hertz", "Nominal CPU frequency of the host.", scope="host"),
    # --- host capacity (collect.host_stats: three node calls per cycle)
    _m("libvirt_node_cpu_seconds_total", "counter", "seconds", "CPU time of all the host's CPUs together, by mode as libvirt names it (kernel, user, idle, iowait).", labels=("mode",), scope="host"),
    _m("libvirt_node_memory_total_bytes", "gauge", "bytes", "Memory of the host usable by the kernel (MemTotal).", scope="host"),
    _m("libvirt_node_memory_free_bytes", "gauge", "bytes", "Memory of the host left unused (MemFree).", scope="host"),
    _m("libvirt_node_memory_buffers_bytes", "gauge", "bytes", "Memory of the host in block device buffers (Buffers).", scope="host"),
    _m("libvirt_node_memory_cached_bytes", "gauge", "bytes", "Memory of the host in the page cache (Cached).", scope="host"),
    _m("libvirt_node_hugepages_free", "gauge", "", "Free huge pages of this size on this NUMA node of the host.", labels=("numa_node", "page_size_bytes"), scope="host"),
    # --- storage pools (collect.storage_pools: a list call and one or two calls per pool per cycle)
    _m("libvirt_storage_pool_state_code", "gauge", "", "State of the storage pool as libvirt's virStoragePoolState number (0 inactive, 1 building, 2 running, 3 degraded, 4 inaccessible).", labels=("pool", "pool_uuid", "pool_type"), scope="host"),
    _m("libvirt_storage_pool_capacity_bytes", "gauge", "bytes", "Size of the storage pool as of its last refresh (running or degraded pools only).", labels=("pool", "pool_uuid", "pool_type"), scope="host"),
    _m("libvirt_storage_pool_allocation_bytes", "gauge", "bytes", "Space of the storage pool allocated to volumes or otherwise in use, as of its last refresh (running or degraded pools only).", labels=("pool", "pool_uuid", "pool_type"), scope="host"),
    _m("libvirt_storage_pool_available_bytes", "gauge", "bytes", "Space of the storage pool free for new volumes, as of its last refresh (running or degraded pools only).", labels=("pool", "pool_uuid", "pool_type"), scope="host"),
    _m("libvirt_storage_pool_volumes", "gauge", "", "Number of volumes libvirt knows in the storage pool, as of its last refresh (active pools only).", labels=("pool", "pool_uuid", "pool_type"), scope="host"),
    _m("libvirt_versions_info", "gauge", "", "Versions of libvirt and of the hypervisor; the value is always 1.", labels=("libvirt_version", "hypervisor", "hypervisor_version"), scope="host"),
    # --- state
    _m(f"{_D}state_code", "gauge", "", "Domain state as libvirt's virDomainState number (1 running, 3 paused, 5 shut off).", "state.state"),
    _m(f"{_D}state_reason_code", "gauge", "", "Reason for the domain state as libvirt's per-state reason number.", "state.reason"),
    # --- Nova
    _m(f"{_D}openstack_info", "gauge", "", "Nova instance data of the domain; the value is always 1.", labels=("instance_name", "flavor", "flavor_id", "user_name", "user_uuid", "project_name", "project_uuid", "root_type", "root_uuid", "image_uuid")),
    _m(f"{_D}stats_timeouts_total", "counter", "", "Cycles in which the domain's stats did not arrive within collect.timeout (a stuck QEMU monitor); its other series keep their last values meanwhile."),
    # --- cpu_total
    _m(f"{_D}info_cpu_time_seconds_total", "counter", "seconds", "CPU time used by the domain.", "cpu.time", NS),
    _m(f"{_D}info_cpu_user_seconds_total", "counter", "seconds", "User-mode CPU time used by the domain.", "cpu.user", NS),
    _m(f"{_D}info_cpu_system_seconds_total", "counter", "seconds", "Kernel-mode CPU time used by the domain.", "cpu.system", NS),
    _m(f"{_D}cpu_haltpoll_success_time_seconds_total", "counter", "seconds", "CPU time spent in successful halt polling.", "cpu.haltpoll.success.time", NS),
    _m(f"{_D}cpu_haltpoll_fail_time_seconds_total", "counter", "seconds", "CPU time spent in failed halt polling.", "cpu.haltpoll.fail.time", NS),
    _m(f"{_D}cpu_cache_monitors", "gauge", "", "Number of last-level cache monitors of the domain (resctrl; 0 without).", "cpu.cache.monitor.count"),
    _m(f"{_D}cpu_cache_monitor_banks", "gauge", "", "Number of cache banks the cache monitor reports on.", "cpu.cache.monitor.<n>.bank.count"),
    _m(f"{_D}cpu_cache_occupancy_bytes", "gauge", "bytes", "Last-level cache the monitor's vCPUs occupy on this cache bank.", "cpu.cache.monitor.<n>.bank.<i>.bytes"),
    # --- balloon
    _m(f"{_D}info_maximum_memory_bytes", "gauge", "bytes", "Maximum memory the domain may be given.", "balloon.maximum", KIB),
    _m(f"{_D}info_memory_usage_bytes", "gauge", "bytes", "Memory currently given to the domain (the balloon's size).", "balloon.current", KIB),
    _m(f"{_M}actual_balloon_bytes", "gauge", "bytes", "Current balloon size as the guest sees it; same source as info_memory_usage_bytes.", "balloon.current", KIB),
    _m(f"{_M}swap_in_bytes_total", "counter", "bytes", "Memory the guest read in from swap.", "balloon.swap_in", KIB),
    _m(f"{_M}swap_out_bytes_total", "counter", "bytes", "Memory the guest wrote out to swap.", "balloon.swap_out", KIB),
    _m(f"{_M}major_fault_total", "counter", "", "Page faults in the guest that needed disk I/O.", "balloon.major_fault"),
    _m(f"{_M}minor_fault_total", "counter", "", "Page faults in the guest served without disk I/O.", "balloon.minor_fault"),
    _m(f"{_M}unused_bytes", "gauge", "bytes", "Memory the guest leaves completely unused.", "balloon.unused", KIB),
    _m(f"{_M}available_bytes", "gauge", "bytes", "Memory the guest's operating system can use.", "balloon.available", KIB),
    _m(f"{_M}usable_bytes", "gauge", "bytes", "Memory the guest can reclaim without swapping.", "balloon.usable", KIB),
    _m(f"{_M}used_bytes", "gauge", "bytes", "Memory the guest's operating system uses, page cache included: available minus unused, when the guest's balloon driver reports both.", "balloon.used", KIB),
    _m(f"{_M}rss_bytes", "gauge", "bytes", "Resident memory of the guest's process on the host.", "balloon.rss", KIB),
    _m(f"{_M}disk_cache_bytes", "gauge", "bytes", "Guest memory holding disk caches that can be reclaimed.", "balloon.disk_caches", KIB),
    _m(f"{_M}last_update_timestamp_seconds", "gauge", "seconds", "When the guest last updated its memory statistics.", "balloon.last-update"),
    _m(f"{_M}hugetlb_pgalloc_total", "counter", "", "Successful huge page allocations in the guest.", "balloon.hugetlb_pgalloc"),
    _m(f"{_M}hugetlb_pgfail_total", "counter", "", "Failed huge page allocations in the guest.", "balloon.hugetlb_pgfail"),
    # --- vcpu
    _m(f"{_D}info_virtual_cpus", "gauge", "", "Number of virtual CPUs the domain has online.", "vcpu.current"),
    _m(f"{_D}info_maximum_virtual_cpus", "gauge", "", "Maximum number of virtual CPUs of the domain.", "vcpu.maximum"),
    _m(f"{_D}vcpu_state", "gauge", "", "Virtual CPU state as libvirt's virVcpuState number (1 running).", "vcpu.<n>.state"),
    _m(f"{_D}vcpu_time_seconds_total", "counter", "seconds", "CPU time used by the virtual CPU.", "vcpu.<n>.time", NS),
    _m(f"{_D}vcpu_wait_seconds_total", "counter", "seconds", "Time the virtual CPU wanted to run but waited, outside the guest's control.", "vcpu.<n>.wait", NS),
    _m(f"{_D}vcpu_delay_seconds_total", "counter", "seconds", "Time the virtual CPU was runnable but waited for a host CPU (steal time).", "vcpu.<n>.delay", NS),
    _m(f"{_D}vcpu_halted", "gauge", "", "Whether the virtual CPU is halted (1) or not (0).", "vcpu.<n>.halted"),
    # --- vCPU placement (collect.vcpu_placement: one virDomainGetVcpus call per live domain)
    _m(f"{_D}vcpu_cpu", "gauge", "", "Host CPU the virtual CPU last ran on (its number, as in /proc/cpuinfo).", "placement.<n>.cpu"),
    _m(f"{_D}vcpu_affinity_cpus", "gauge", "", "Number of host CPUs the virtual CPU may run on: all of the host's unless it is pinned.", "placement.<n>.affinity_cpus"),
    _m(f"{_D}vcpu_pinned_cpu", "gauge", "", "Host CPU the virtual CPU is pinned to, when it may run on exactly one (no series otherwise).", "placement.<n>.pinned_cpu"),
    # --- interface
    _m(f"{_D}interface_info", "gauge", "", "A network interface as the domain XML describes it (join on uuid and target_device); the value is always 1.", labels=("target_device", "interface_mac", "interface_model", "interface_type", "interface_source", "interface_mtu", "port_id")),
    _m(f"{_D}interfaces", "gauge", "", "Number of network interfaces of the domain.", "net.count"),
    _m(f"{_I}receive_bytes_total", "counter", "bytes", "Bytes received on the interface.", "net.<n>.rx.bytes"),
    _m(f"{_I}receive_packets_total", "counter", "", "Packets received on the interface.", "net.<n>.rx.pkts"),
    _m(f"{_I}receive_errors_total", "counter", "", "Receive errors on the interface.", "net.<n>.rx.errs"),
    _m(f"{_I}receive_drops_total", "counter", "", "Received packets dropped on the interface.", "net.<n>.rx.drop"),
    _m(f"{_I}transmit_bytes_total", "counter", "bytes", "Bytes transmitted on the interface.", "net.<n>.tx.bytes"),
    _m(f"{_I}transmit_packets_total", "counter", "", "Packets transmitted on the interface.", "net.<n>.tx.pkts"),
    _m(f"{_I}transmit_errors_total", "counter", "", "Transmit errors on the interface.", "net.<n>.tx.errs"),
    _m(f"{_I}transmit_drops_total", "counter", "", "Transmitted packets dropped on the interface.", "net.<n>.tx.drop"),
    # --- block
    _m(f"{_D}block_info", "gauge", "", "A disk as the domain XML describes it (join on uuid and target_device); the value is always 1.", labels=("target_device", "disk_device", "disk_bus", "disk_driver_type", "disk_cache", "disk_discard", "disk_io", "disk_serial", "volume_id", "disk_source_type", "disk_iotune_group")),
    *(_m(name, "gauge", unit_of(name), _iotune_help(element), labels=("target_device",)) for element, name in IOTUNE.items()),
    _m(f"{_D}block_devices", "gauge", "", "Number of block devices of the domain.", "block.count"),
    _m(f"{_B}read_requests_total", "counter", "", "Read requests completed on the block device.", "block.<n>.rd.reqs"),
    _m(f"{_B}read_bytes_total", "counter", "bytes", "Bytes read from the block device.", "block.<n>.rd.bytes"),
    _m(f"{_B}read_time_seconds_total", "counter", "seconds", "Time spent on reads from the block device.", "block.<n>.rd.times", NS),
    _m(f"{_B}write_requests_total", "counter", "", "Write requests completed on the block device.", "block.<n>.wr.reqs"),
    _m(f"{_B}write_bytes_total", "counter", "bytes", "Bytes written to the block device.", "block.<n>.wr.bytes"),
    _m(f"{_B}write_time_seconds_total", "counter", "seconds", "Time spent on writes to the block device.", "block.<n>.wr.times", NS),
    _m(f"{_B}flush_requests_total", "counter", "", "Flush requests completed on the block device.", "block.<n>.fl.reqs"),
    _m(f"{_B}flush_time_seconds_total", "counter", "seconds", "Time spent on flushes of the block device.", "block.<n>.fl.times", NS),
    _m(f"{_B}allocation_bytes", "gauge", "bytes", "Highest offset written in the block device's image (its allocation).", "block.<n>.allocation"),
    _m(f"{_B}capacity_bytes", "gauge", "bytes", "Logical size of the block device as the guest sees it.", "block.<n>.capacity"),
    _m(f"{_B}physicalsize_bytes", "gauge", "bytes", "Size of the block device's image on the host.", "block.<n>.physical"),
    _m(f"{_B}threshold_bytes", "gauge", "bytes", "Write threshold set on the block device, when one is set.", "block.<n>.threshold"),
    # --- perf (optional group: collect.groups; events must be enabled in the domain XML)
    _m(f"{_P}cmt_bytes", "gauge", "bytes", "Last-level cache the domain occupies (Intel CMT).", "perf.cmt"),
    _m(f"{_P}mbmt_bytes_per_second", "gauge", "bytes_per_second", "Memory bandwidth from one level of cache to another (Intel MBM total), in bytes per second.", "perf.mbmt"),
    _m(f"{_P}mbml_bytes_per_second", "gauge", "bytes_per_second", "Memory bandwidth through the socket's memory controller (Intel MBM local), in bytes per second.", "perf.mbml"),
    _m(f"{_P}cpu_cycles_total", "counter", "", "CPU cycles the domain used.", "perf.cpu_cycles"),
    _m(f"{_P}instructions_total", "counter", "", "Instructions the domain executed.", "perf.instructions"),
    _m(f"{_P}cache_references_total", "counter", "", "Cache references (hits) of the domain.", "perf.cache_references"),
    _m(f"{_P}cache_misses_total", "counter", "", "Cache misses of the domain.", "perf.cache_misses"),
    _m(f"{_P}branch_instructions_total", "counter", "", "Branch instructions the domain executed.", "perf.branch_instructions"),
    _m(f"{_P}branch_misses_total", "counter", "", "Mispredicted branches of the domain.", "perf.branch_misses"),
    _m(f"{_P}bus_cycles_total", "counter", "", "Bus cycles of the domain.", "perf.bus_cycles"),
    _m(f"{_P}stalled_cycles_frontend_total", "counter", "", "CPU cycles stalled in the front end of the pipeline.", "perf.stalled_cycles_frontend"),
    _m(f"{_P}stalled_cycles_backend_total", "counter", "", "CPU cycles stalled in the back end of the pipeline.", "perf.stalled_cycles_backend"),
    _m(f"{_P}ref_cpu_cycles_total", "counter", "", "Reference CPU cycles (not scaled by frequency changes) of the domain.", "perf.ref_cpu_cycles"),
    _m(f"{_P}cpu_clock_seconds_total", "counter", "seconds", "CPU clock time of the domain (perf's cpu-clock event).", "perf.cpu_clock", NS),
    _m(f"{_P}task_clock_seconds_total", "counter", "seconds", "Task clock time of the domain (perf's task-clock event).", "perf.task_clock", NS),
    _m(f"{_P}page_faults_total", "counter", "", "Page faults of the domain.", "perf.page_faults"),
    _m(f"{_P}context_switches_total", "counter", "", "Context switches of the domain.", "perf.context_switches"),
    _m(f"{_P}cpu_migrations_total", "counter", "", "Migrations of the domain's threads between host CPUs.", "perf.cpu_migrations"),
    _m(f"{_P}page_faults_min_total", "counter", "", "Minor page faults of the domain.", "perf.page_faults_min"),
    _m(f"{_P}page_faults_maj_total", "counter", "", "Major page faults of the domain.", "perf.page_faults_maj"),
    _m(f"{_P}alignment_faults_total", "counter", "", "Alignment faults of the domain.", "perf.alignment_faults"),
    _m(f"{_P}emulation_faults_total", "counter", "", "Emulation faults of the domain.", "perf.emulation_faults"),
    # --- job (collect.job_info: one jobStats call per running or paused domain)
    _m(f"{_D}job_type", "gauge", "", "Type of the domain's current job as libvirt's virDomainJobType number (0 none, 1 bounded, 2 unbounded).", "job.type"),
    _m(f"{_D}job_operation", "gauge", "", "Operation of the current job as libvirt's virDomainJobOperation number (2 save, 5 outgoing migration, 6 snapshot, 8 dump, 9 backup).", "job.operation"),
    _m(f"{_D}job_time_elapsed_seconds", "gauge", "seconds", "Time since the current job started.", "job.time_elapsed", MS),
    _m(f"{_D}job_time_remaining_seconds", "gauge", "seconds", "Time the current job is expected to take still (bounded jobs).", "job.time_remaining", MS),
    _m(f"{_D}job_downtime_seconds", "gauge", "seconds", "Downtime of the migration: expected while it runs, real once it completed.", "job.downtime", MS),
    _m(f"{_D}job_setup_time_seconds", "gauge", "seconds", "Time the migration took to set up before it started transferring.", "job.setup_time", MS),
    _m(f"{_D}job_data_total_bytes", "gauge", "bytes", "Bytes the current job has to transfer in all (memory and disks).", "job.data_total"),
    _m(f"{_D}job_data_processed_bytes", "gauge", "bytes", "Bytes the current job has transferred.", "job.data_processed"),
    _m(f"{_D}job_data_remaining_bytes", "gauge", "bytes", "Bytes the current job has still to transfer.", "job.data_remaining"),
    _m(f"{_D}job_memory_total_bytes", "gauge", "bytes", "Guest memory the current job has to transfer.", "job.memory_total"),
    _m(f"{_D}job_memory_processed_bytes", "gauge", "bytes", "Guest memory the current job has transferred.", "job.memory_processed"),
    _m(f"{_D}job_memory_remaining_bytes", "gauge", "bytes", "Guest memory the current job has still to transfer.", "job.memory_remaining"),
    _m(f"{_D}job_memory_bytes_per_second", "gauge", "bytes_per_second", "Rate at which the current job transfers guest memory, in bytes per second.", "job.memory_bps"),
    _m(f"{_D}job_memory_dirty_pages_per_second", "gauge", "", "Rate at which the guest dirties memory pages while the migration runs.", "job.memory_dirty_rate"),
    _m(f"{_D}job_memory_iterations", "gauge", "", "Passes the migration made over the guest's memory so far.", "job.memory_iteration"),
    _m(f"{_D}job_memory_postcopy_requests", "gauge", "", "Page requests the destination made during post-copy migration.", "job.memory_postcopy_requests"),
    _m(f"{_D}job_disk_total_bytes", "gauge", "bytes", "Disk data the current job has to transfer.", "job.disk_total"),
    _m(f"{_D}job_disk_processed_bytes", "gauge", "bytes", "Disk data the current job has transferred.", "job.disk_processed"),
    _m(f"{_D}job_disk_remaining_bytes", "gauge", "bytes", "Disk data the current job has still to transfer.", "job.disk_remaining"),
    _m(f"{_D}job_disk_bytes_per_second", "gauge", "bytes_per_second", "Rate at which the current job transfers disk data, in bytes per second.", "job.disk_bps"),
    _m(f"{_D}job_auto_converge_throttle_ratio", "gauge", "", "Share of the guest's CPU time the migration's auto-converge takes away (0 to 1).", "job.auto_converge_throttle", 0.01),
    # --- finished jobs (libvirt's job-completed event: no call per cycle; pusher.jobs)
    _m(f"{_D}jobs_finished_total", "counter", "", "Jobs of the domain that ended (live migrations out and in, saves, dumps, backups), by operation and result (completed, failed, cancelled), as libvirt's job-completed event reports them.", labels=("operation", "result")),
    _m(f"{_D}jobs_finished_seconds_total", "counter", "seconds", "Time the domain's ended jobs took from start to end (time_elapsed); divided by jobs_finished_total, their mean duration.", labels=("operation", "result")),
    _m(f"{_D}jobs_finished_bytes_total", "counter", "bytes", "Data the domain's ended jobs transferred, memory and disks (data_processed, or memory_processed plus disk_processed).", labels=("operation", "result")),
    # --- iothread (optional group)
    _m(f"{_D}iothreads", "gauge", "", "Number of IOThreads of the domain.", "iothread.count"),
    _m(f"{_D}iothread_poll_max_seconds", "gauge", "seconds", "Longest time the IOThread polls for work before it sleeps (0 when polling is off).", "iothread.<n>.poll-max-ns", NS),
    _m(f"{_D}iothread_poll_grow", "gauge", "", "Factor by which the IOThread's polling time grows (0 when the hypervisor chooses).", "iothread.<n>.poll-grow"),
    _m(f"{_D}iothread_poll_shrink", "gauge", "", "Divisor by which the IOThread's polling time shrinks (0 when the hypervisor chooses).", "iothread.<n>.poll-shrink"),
    # --- memory bandwidth (optional group "memory": resctrl monitors of the domain's vCPUs)
    _m(f"{_D}memory_bandwidth_monitors", "gauge", "", "Number of memory bandwidth monitors of the domain.", "memory.bandwidth.monitor.count"),
    _m(f"{_D}memory_bandwidth_monitor_nodes", "gauge", "", "Number of memory controllers the memory bandwidth monitor reports on.", "memory.bandwidth.monitor.<n>.node.count"),
    _m(f"{_D}memory_bandwidth_bytes_total", "counter", "bytes", "Bytes the monitor's vCPUs moved through memory controllers, local or remote, as counted at this controller.", "memory.bandwidth.monitor.<n>.node.<i>.bytes.total"),
    _m(f"{_D}memory_bandwidth_local_bytes_total", "counter", "bytes", "Bytes the monitor's vCPUs moved through the memory controller of the processor they ran on, as counted at this controller.", "memory.bandwidth.monitor.<n>.node.<i>.bytes.local"),
    # --- dirtyrate (optional group: the last calculation started with `virsh domdirtyrate-calc`)
    _m(f"{_D}dirtyrate_calc_status", "gauge", "", "Status of the last memory dirty-rate calculation as libvirt's virDomainDirtyRateStatus number (0 not started, 1 measuring, 2 measured).", "dirtyrate.calc_status"),
    _m(f"{_D}dirtyrate_calc_start_time_seconds", "gauge", "seconds", "Start of the last memory dirty-rate calculation, as QEMU reports it.", "dirtyrate.calc_start_time"),
    _m(f"{_D}dirtyrate_calc_period_seconds", "gauge", "seconds", "Length of the last memory dirty-rate calculation.", "dirtyrate.calc_period"),
    _m(f"{_D}dirtyrate_bytes_per_second", "gauge", "bytes_per_second", "Rate at which the guest dirtied its memory during the last calculation, in bytes per second.", "dirtyrate.megabytes_per_second", MIB),
    _m(f"{_D}dirtyrate_vcpu_bytes_per_second", "gauge", "bytes_per_second", "Rate at which the virtual CPU dirtied memory during the last calculation, in bytes per second.", "dirtyrate.vcpu.<n>.megabytes_per_second", MIB),
    # --- KVM (optional group "vm"; the vCPUs' figures are per guest, all vCPUs together)
    _kvm("remote_tlb_flush", "sum", "TLB flushes KVM made on all the guest's vCPUs at once (remote TLB flushes)."),
    _kvm("remote_tlb_flush_requests", "sum", "Remote TLB flushes of the guest requested, merged ones included."),
    _kvm("pages_4k", "cur", "Mappings of the guest's memory in KVM's page tables at 4 KiB page size (the guest's huge-page backing: compare with pages_2m and pages_1g)."),
    _kvm("pages_2m", "cur", "Mappings of the guest's memory in KVM's page tables at 2 MiB (huge) page size."),
    _kvm("pages_1g", "cur", "Mappings of the guest's memory in KVM's page tables at 1 GiB (huge) page size."),
    _kvm("mmu_shadow_zapped", "sum", "Shadow pages KVM's MMU discarded (zapped)."),
    _kvm("mmu_pte_write", "sum", "Writes to the guest's page table entries that KVM's MMU intercepted."),
    _kvm("mmu_pde_zapped", "sum", "Page directory entries KVM's MMU discarded."),
    _kvm("mmu_flooded", "sum", "Shadow pages KVM's MMU dropped after repeated writes to them (write flooding)."),
    _kvm("mmu_recycled", "sum", "Shadow pages KVM's MMU recycled to make room for others."),
    _kvm("mmu_cache_miss", "sum", "Shadow page lookups of KVM's MMU that missed its cache."),
    _kvm("mmu_unsync", "cur", "Shadow pages currently out of sync with the guest's page tables."),
    _kvm("nx_lpage_splits", "cur", "Huge pages KVM currently keeps split into small ones for non-executable mappings (iTLB multihit mitigation)."),
    _kvm("max_mmu_rmap_size", "max", "Longest reverse-mapping chain KVM's MMU has had (a peak)."),
    _kvm("max_mmu_page_hash_collisions", "max", "Most collisions one bucket of KVM's MMU page hash has had (a peak)."),
    _kvm("halt_poll_success_ns", "sum", "Time the guest's vCPUs spent polling before halting and found an event (successful halt polling).", vcpu=True),
    _kvm("halt_poll_fail_ns", "sum", "Time the guest's vCPUs spent polling before halting and found no event (failed halt polling).", vcpu=True),
    _kvm("halt_wait_ns", "sum", "Time the guest's vCPUs spent halted, waiting for an event.", vcpu=True),
    _kvm("halt_attempted_poll", "sum", "Halts during which KVM polled for an event before putting the vCPU to sleep.", vcpu=True),
    _kvm("halt_successful_poll", "sum", "Halts that ended with an event found while polling.", vcpu=True),
    _kvm("halt_poll_invalid", "sum", "Halt polls that ended on an event that did not wake the vCPU.", vcpu=True),
    _kvm("halt_wakeup", "sum", "Wakeups of the guest's halted vCPUs.", vcpu=True),
    _kvm("halt_exits", "sum", "Exits to KVM because a vCPU halted (HLT).", vcpu=True),
    _kvm("blocking", "cur", "Number of the guest's vCPUs currently blocked in KVM, waiting for an event.", vcpu=True),
    _kvm("guest_mode", "cur", "Number of the guest's vCPUs currently running a nested guest.", vcpu=True),
    _kvm("exits", "sum", "Exits from the guest to KVM (VM exits), for any reason.", vcpu=True),
    _kvm("io_exits", "sum", "Exits to QEMU for port I/O.", vcpu=True),
    _kvm("mmio_exits", "sum", "Exits to QEMU for memory-mapped I/O.", vcpu=True),
    _kvm("signal_exits", "sum", "Exits to QEMU because a signal was pending for a vCPU thread.", vcpu=True),
    _kvm("irq_exits", "sum", "Exits caused by external interrupts on the host.", vcpu=True),
    _kvm("irq_window_exits", "sum", "Exits to open an interrupt window, so that a pending interrupt can be injected.", vcpu=True),
    _kvm("nmi_window_exits", "sum", "Exits to open an NMI window.", vcpu=True),
    _kvm("request_irq_exits", "sum", "Exits to QEMU so that it could inject an interrupt.", vcpu=True),
    _kvm("notify_window_exits", "sum", "Exits because a vCPU went without an event window for too long (notify VM exit).", vcpu=True),
    _kvm("pf_taken", "sum", "Guest page faults KVM handled.", vcpu=True),
    _kvm("pf_fixed", "sum", "Guest page faults KVM fixed by mapping the page.", vcpu=True),
    _kvm("pf_emulate", "sum", "Guest page faults KVM resolved by emulating the faulting instruction.", vcpu=True),
    _kvm("pf_spurious", "sum", "Guest page faults already fixed by the time KVM looked (spurious).", vcpu=True),
    _kvm("pf_fast", "sum", "Guest page faults KVM fixed on its fast path, without the MMU lock.", vcpu=True),
    _kvm("pf_mmio_spte_created", "sum", "Page table entries KVM created to trap memory-mapped I/O.", vcpu=True),
    _kvm("pf_guest", "sum", "Page faults KVM passed on to the guest.", vcpu=True),
    _kvm("tlb_flush", "sum", "TLB flushes of the guest's vCPUs.", vcpu=True),
    _kvm("invlpg", "sum", "TLB entry invalidations (INVLPG) of the guest that KVM handled.", vcpu=True),
    _kvm("l1d_flush", "sum", "L1 data cache flushes before entering the guest (L1TF mitigation).", vcpu=True),
    _kvm("host_state_reload", "sum", "Reloads of the host's state (segments, MSRs) when leaving the guest.", vcpu=True),
    _kvm("fpu_reload", "sum", "Reloads of the guest's FPU state.", vcpu=True),
    _kvm("insn_emulation", "sum", "Guest instructions KVM emulated.", vcpu=True),
    _kvm("insn_emulation_fail", "sum", "Guest instructions KVM failed to emulate.", vcpu=True),
    _kvm("hypercalls", "sum", "Hypercalls the guest made to KVM.", vcpu=True),
    _kvm("irq_injections", "sum", "Interrupts KVM injected into the guest.", vcpu=True),
    _kvm("nmi_injections", "sum", "NMIs KVM injected into the guest.", vcpu=True),
    _kvm("req_event", "sum", "Event requests (interrupt or exception injection) KVM processed before entering the guest.", vcpu=True),
    _kvm("nested_run", "sum", "Entries into a nested guest.", vcpu=True),
    _kvm("directed_yield_attempted", "sum", "Directed yields attempted: a vCPU spinning on a lock yielding to the vCPU that holds it.", vcpu=True),
    _kvm("directed_yield_successful", "sum", "Directed yields that succeeded.", vcpu=True),
    _kvm("preemption_reported", "sum", "Preemptions of the guest's vCPUs that KVM reported to the guest (paravirtual preemption).", vcpu=True),
    _kvm("preemption_other", "sum", "Preemptions of the guest's vCPUs not reported to the guest.", vcpu=True),
    # --- the agent itself
    _m("pusher_build_info", "gauge", "", "Version of the running agent; the value is always 1.", labels=("version",), scope="agent"),
    _m("pusher_cycles_total", "counter", "", "Collection cycles run.", scope="agent"),
    _m("pusher_collect_duration_seconds", "gauge", "seconds", "Wall time of the last collection cycle.", scope="agent"),
    _m("pusher_collect_errors_total", "counter", "", "Collection cycles that failed to read libvirt.", scope="agent"),
    _m("pusher_samples_collected_total", "counter", "", "Samples collected and written to the spool.", scope="agent"),
    _m("pusher_samples_sent_total", "counter", "", "Samples the receiver acknowledged with a 2xx answer.", labels=("endpoint",), scope="agent"),
    _m("pusher_samples_retried_total", "counter", "", "Samples sent again after a failed attempt.", labels=("endpoint",), scope="agent"),
    _m("pusher_samples_dropped_total", "counter", "", "Samples the agent gave up without sending them, by reason (too_old, spool_full, spool_corrupt, spool_unwritable, too_large, not_written).", labels=("endpoint", "reason",), scope="agent"),
    _m("pusher_relabel_dropped_samples_total", "counter", "", "Samples relabel_configs left out, by reason: rule (a keep or drop rule), invalid_name (no valid metric name left), duplicate (the labels of another series of the cycle); only with relabel_configs.", labels=("reason",), scope="agent"),
    _m("pusher_requests_total", "counter", "", 'Remote-write requests answered, by HTTP status code ("error" when none came).', labels=("endpoint", "code",), scope="agent"),
    _m("pusher_requests_rejected_total", "counter", "", "Requests the receiver rejected (400 and other 4xx), by Mimir's error id or http_<code>; never sent again.", labels=("endpoint", "reason",), scope="agent"),
    _m("pusher_rejected_request_samples_total", "counter", "", "Samples in requests the receiver rejected, by reason; Mimir keeps the valid series of such a request, so these are an upper bound of what was lost.", labels=("endpoint", "reason",), scope="agent"),
    _m("pusher_request_bytes_total", "counter", "bytes", "Bytes on the wire (compressed bodies) of the requests the receiver accepted.", labels=("endpoint",), scope="agent"),
    _m("pusher_label_limit", "gauge", "", "The label limits the agent keeps to: its limits.* setting, or the tenant's lower limit once Mimir named it in a rejection.", labels=("limit",), scope="agent"),
    _m("pusher_send_duration_seconds_total", "counter", "seconds", "Wall time spent in remote-write requests.", labels=("endpoint",), scope="agent"),
    _m("pusher_last_send_success_timestamp_seconds", "gauge", "seconds", "When the receiver last acknowledged a request.", labels=("endpoint",), scope="agent"),
    _m("pusher_backlog_rate_limit_samples_per_second", "gauge", "", "Rate the backlog (rows older than the last two cycles) may be sent at: remote_write.backlog_rate_limit, lowered on 429s while remote_write.adaptive_rate is on; 0 when unlimited.", labels=("endpoint",), scope="agent"),
    _m("pusher_backlog_eta_seconds", "gauge", "seconds", "Estimated time until the spooled backlog is sent: its samples over the rate limit (or the rate measured when there is none); 0 without a backlog, +Inf while nothing is delivered.", labels=("endpoint",), scope="agent"),
    _m("pusher_throttled_requests_total", "counter", "", "Requests the receiver answered 429 (rate limited), by lane: backlog or fresh (the last two cycles).", labels=("endpoint", "lane"), scope="agent"),
    _m("pusher_spool_bytes", "gauge", "bytes", "Bytes the spool takes: its file's pages in use, and bodies waiting in memory.", labels=("endpoint",), scope="agent"),
    _m("pusher_spool_requests", "gauge", "", "Requests waiting in the spool.", labels=("endpoint",), scope="agent"),
    _m("pusher_spool_oldest_sample_age_seconds", "gauge", "seconds", "Age of the oldest sample waiting in the spool (0 when empty).", labels=("endpoint",), scope="agent"),
    _m("pusher_partial_records_total", "counter", "", "Running domains whose stats came back partial because another client held the domain's job; each is asked again, waiting for the job.", scope="agent"),
    _m("pusher_partial_records_kept_total", "counter", "", "Partial records that were still partial after asking again within a quarter of collect.timeout (their missing series miss a sample).", scope="agent"),
    _m("pusher_job_info_errors_total", "counter", "", "Job info calls (collect.job_info) that failed, as for a domain gone since the bulk call.", scope="agent"),
    _m("pusher_cached_series", "gauge", "", "Series whose encoded labels the agent keeps; follows the live series (a leak would make it grow).", scope="agent"),
    _m("pusher_labels_truncated_total", "counter", "", "Label values cut to limits.max_label_value_length bytes (Mimir's limit, 2048 by default) when a domain's label set was built.", scope="agent"),
    _m("pusher_labels_dropped_total", "counter", "", "Labels left off a domain's series to keep them within limits.max_label_names_per_series (Nova series labels first, then volume_id, port_id and source_file).", scope="agent"),
    _m("pusher_nova_metadata_errors_total", "counter", "", "Domain XML documents whose Nova metadata could not be read.", scope="agent"),
)
# fmt: on

# Series read off the cached domain XML (`pusher.devices`), not from a stats key.
XML_SERIES = frozenset({"libvirt_domain_interface_info", "libvirt_domain_block_info",
                        *IOTUNE.values()})  # fmt: skip
# Series counted from libvirt's job-completed event (`pusher.jobs`), not from a stats key.
EVENT_SERIES = frozenset({"libvirt_domain_jobs_finished_total",
                          "libvirt_domain_jobs_finished_seconds_total",
                          "libvirt_domain_jobs_finished_bytes_total"})  # fmt: skip
# Labels of the XML series that only add detail: `labels.drop` may name them, and a series
# that would carry too many label names loses them first.
XML_DETAIL_LABELS = tuple(dict.fromkeys(
    x for m in CATALOG if m.name in XML_SERIES for x in m.labels if x != "target_device"
))  # fmt: skip

_BY_NAME = {m.name: m for m in CATALOG}
if len(_BY_NAME) != len(CATALOG):
    raise ValueError("duplicate metric name in the catalog")


def by_name(name: str) -> Metric:
    return _BY_NAME[name]


def reading(name: str, value: float, labels: LabelPairs = ()) -> Reading:
    """One of the agent's own numbers, under a name the catalog declares (or KeyError)."""
    if name not in _BY_NAME:
        raise KeyError(f"{name} is not in the catalog")
    return (name, labels, float(value))


def families_of(names: Iterable[str]) -> list[Metric]:
    """The catalog's metrics of these names, in catalog order (names it lacks are left out):
    the metadata sent is that of the families actually sent, no more."""
    wanted = set(names)
    return [m for m in CATALOG if m.name in wanted]


def group_of(name: str) -> str:
    """The libvirt stats group prefix a metric comes from ("block", "cpu"…; "" if none)."""
    m = _BY_NAME.get(name)
    return m.source.partition(".")[0] if m is not None and m.source else ""


# --- from libvirt stats to samples -------------------------------------------------------

# Keys the agent adds to a record, worked out from two keys libvirt gives in the same record
# (so from the same balloon update): key -> (minuend, subtrahend).
DERIVED_KEYS: dict[str, tuple[str, str]] = {
    "balloon.used": ("balloon.available", "balloon.unused"),
}


def add_derived(stats: dict[str, object]) -> None:
    """Add the DERIVED_KEYS a record has the parts of, in place. A difference below zero
    (a guest reporting more unused memory than available) is no figure and is left out."""
    for key, (minuend, subtrahend) in DERIVED_KEYS.items():
        a, b = _number(stats.get(minuend)), _number(stats.get(subtrahend))
        if a is not None and b is not None and a >= b:
            stats[key] = a - b


DEVICE_PREFIXES = tuple(_DEVICE_LABEL_NAMES)
# "cpu.time" -> metrics; "block.<n>.rd.bytes" -> metrics
_DOMAIN_KEYS: dict[str, list[Metric]] = {}
_DEVICE_KEYS: dict[str, list[Metric]] = {}
for _metric in CATALOG:
    if "<n>" in _metric.source:
        _DEVICE_KEYS.setdefault(_metric.source, []).append(_metric)
    elif _metric.source:
        _DOMAIN_KEYS.setdefault(_metric.source, []).append(_metric)
# Keys that are labels or bookkeeping, not values.
_LABEL_KEYS = {
    # job keys that repeat others in other units, or only matter to QEMU's own tuning
    "job.time_elapsed_net", "job.downtime_net", "job.memory_constant", "job.memory_normal",
    "job.memory_normal_bytes", "job.memory_page_size", "job.compression_cache",
    "job.compression_bytes", "job.compression_pages", "job.compression_cache_misses",
    "job.compression_overflow", "job.success", "job.errmsg", "job.disk_temp_used",
    "job.disk_temp_total", "job.vfio_data_transferred",
    "net.<n>.name", "block.<n>.name", "block.<n>.path", "block.<n>.backingIndex",
    "memory.bandwidth.monitor.<n>.name", "memory.bandwidth.monitor.<n>.vcpus",
    "memory.bandwidth.monitor.<n>.node.<i>.id",
    "cpu.cache.monitor.<n>.name", "cpu.cache.monitor.<n>.vcpus",
    "cpu.cache.monitor.<n>.bank.<i>.id",
    # a KVM guest's per-vCPU KVM statistics (vcpu group): exported per guest, summed
    # (pusher.kvm), and only with the vm group
    *(m.source.replace("vm.vcpus.", "vcpu.<n>.") for m in CATALOG
      if m.source.startswith("vm.vcpus.")),
}  # fmt: skip
_INDEX_MARKS = ("<n>", "<i>")


def _device_key(key: str) -> tuple[str, str, tuple[str, ...]]:
    """'block.0.rd.bytes' -> ('block.<n>.rd.bytes', 'block', ('0',)): the catalog's source
    notation, the prefix before the first index, and the indices (at most two)."""
    parts = key.split(".")
    indices: list[str] = []
    prefix = ""
    for i, part in enumerate(parts):
        if part.isascii() and part.isdigit() and len(indices) < len(_INDEX_MARKS):
            if not indices:
                prefix = ".".join(parts[:i])
            parts[i] = _INDEX_MARKS[len(indices)]
            indices.append(part)
    return ".".join(parts), prefix, tuple(indices)


@dataclass
class LabelLimits:
    """Mimir's label limits the agent keeps to (`limits.*`), and what keeping them cost:
    label values cut (`truncated`) and labels left off (`dropped`). Label sets are built
    once per domain and cached, so these count distinct events, not cycles. The agent has
    one, built from its config and handed to whatever builds label sets; the default is
    Mimir's limits, with counts nobody reads."""

    max_names: int = MAX_LABEL_NAMES
    max_name_length: int = MAX_LABEL_NAME_LENGTH
    max_value_bytes: int = MAX_LABEL_VALUE_BYTES
    truncated: int = 0
    dropped: int = 0

    def readings(self) -> list[Reading]:
        return [
            reading("pusher_labels_truncated_total", self.truncated),
            reading("pusher_labels_dropped_total", self.dropped),
            reading("pusher_label_limit", self.max_names,
                    (("limit", "max_label_names_per_series"),)),
            reading("pusher_label_limit", self.max_name_length,
                    (("limit", "max_label_name_length"),)),
            reading("pusher_label_limit", self.max_value_bytes,
                    (("limit", "max_label_value_length"),)),
        ]  # fmt: skip


def truncate_label_value(value: str, limits: LabelLimits | None = None) -> str:
    """Cut a value to the byte limit (`limits.max_value_bytes`) on a UTF-8 character
    boundary."""
    limits = limits or LabelLimits()
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= limits.max_value_bytes:
        return value
    limits.truncated += 1
    return raw[: limits.max_value_bytes].decode("utf-8", "ignore")


def label_pairs(labels: Mapping[str, str], limits: LabelLimits | None = None) -> LabelPairs:
    """A label map as sorted pairs, empty values left out and long values cut."""
    limits = limits or LabelLimits()
    return tuple(sorted((k, truncate_label_value(v, limits)) for k, v in labels.items() if v))


def series_labels(key: SeriesKey) -> list[tuple[str, str]]:
    """All labels of a series, sorted by name, `__name__` first; own labels win on a clash."""
    merged = dict(key[2])
    merged.update(key[1])
    merged["__name__"] = key[0]
    return sorted(merged.items())


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


DeviceExtra = Callable[[str], LabelPairs]  # target device -> extra labels


def _no_extra(_target: str) -> LabelPairs:
    return ()


@dataclass(eq=False)  # compared and hashed by identity: the encoder caches bytes per plan
class DomainPlan:
    """How one domain's stats record becomes samples: which keys feed which series.

    Built once and reused while the domain's set of stats keys and its labels stay the same,
    so a cycle costs one C-level lookup of all values (`values`) instead of parsing every
    key and building every series' labels again.
    """

    signature: tuple[str, ...]  # the stats keys, in libvirt's order
    shared: LabelPairs
    keys: tuple[str, ...]  # numeric stats key per series (a key may feed two series)
    scales: tuple[float, ...]
    series: tuple[SeriesKey, ...]

    def __post_init__(self) -> None:
        self._get = operator.itemgetter(*self.keys) if self.keys else None
        self.names = frozenset(key[0] for key in self.series)  # the metric families it feeds

    def values(self, stats: Mapping[str, object]) -> list[float]:
        if self._get is None:
            return []
        raw = self._get(stats)
        if len(self.keys) == 1:
            raw = (raw,)
        # itemgetter returns one value per key, so raw and scales have the same length.
        return list(map(operator.mul, raw, self.scales))


def plan_domain(
    stats: Mapping[str, object],
    shared: LabelPairs,
    unknown: set[str] | None = None,
    extra: DeviceExtra = _no_extra,
    drop: frozenset[str] = frozenset(),
    limits: LabelLimits | None = None,
) -> DomainPlan:
    """The plan for one domain's `getAllDomainStats` record.

    `shared` are the labels every series of this domain carries (identity, Nova, external).
    Keys the catalog does not know are added to `unknown` (for a one-time log) and skipped.
    Device labels named in `drop` (`labels.drop`: source_file, volume_id, port_id) are left
    off.
    """
    keys: list[str] = []
    scales: list[float] = []
    series: list[SeriesKey] = []
    device_labels: dict[tuple[str, tuple[str, ...]], LabelPairs] = {}
    for key, raw in stats.items():
        if _number(raw) is None:
            continue  # strings: device names and paths, used as labels below
        metrics = _DOMAIN_KEYS.get(key)
        own: LabelPairs = ()
        if metrics is None:
            source, prefix, indices = _device_key(key)
            metrics = _DEVICE_KEYS.get(source)
            if metrics is None:
                if unknown is not None and source not in _LABEL_KEYS:
                    unknown.add(key)
                continue
            own = device_labels.get((prefix, indices)) or ()
            if not own:
                own = device_labels[(prefix, indices)] = _device_labels(
                    stats, prefix, indices, extra, drop, limits
                )
        for m in metrics:
            keys.append(key)
            scales.append(m.scale)
            series.append((m.name, own, shared))
    return DomainPlan(tuple(stats), shared, tuple(keys), tuple(scales), tuple(series))


def domain_samples(
    stats: Mapping[str, object],
    shared: LabelPairs,
    unknown: set[str] | None = None,
    drop: frozenset[str] = frozenset(),
    limits: LabelLimits | None = None,
) -> list[Sample]:
    """One domain's `getAllDomainStats` record -> samples in base units (via its plan)."""
    plan = plan_domain(stats, shared, unknown, drop=drop, limits=limits)
    return list(zip(plan.series, plan.values(stats), strict=True))


def devices(
    stats: Mapping[str, object],
    extra: DeviceExtra = _no_extra,
    drop: frozenset[str] = frozenset(),
    limits: LabelLimits | None = None,
) -> frozenset[LabelPairs]:
    """The label sets of the devices (vCPUs, NICs, disks) a record names, whether or not it
    carries their counters (a partial record names its disks without counting them)."""
    out = set()
    for key in stats:
        prefix, _, tail = key.partition(".")
        index, _, rest = tail.partition(".")
        if index.isdigit() and (
            (prefix == "vcpu" and rest == "state")
            or (prefix in ("net", "block") and rest == "name")
        ):
            out.add(_device_labels(stats, prefix, (index,), extra, drop, limits))
    return frozenset(out)


def _device_labels(
    stats: Mapping[str, object],
    prefix: str,
    indices: tuple[str, ...],
    extra: DeviceExtra = _no_extra,
    drop: frozenset[str] = frozenset(),
    limits: LabelLimits | None = None,
) -> LabelPairs:
    index = indices[0]
    if prefix in ("vcpu", "dirtyrate.vcpu", "placement"):
        return (("vcpu", index),)
    if prefix == "iothread":
        return (("iothread", index),)
    if prefix in _SUB_INDEX:
        name = stats.get(f"{prefix}.{index}.name")
        labels = {"monitor": name if isinstance(name, str) and name else index}
        if len(indices) > 1:
            sub, label = _SUB_INDEX[prefix]
            host_id = stats.get(f"{prefix}.{index}.{sub}.{indices[1]}.id")
            ok = isinstance(host_id, int) and not isinstance(host_id, bool)
            labels[label] = str(host_id) if ok else indices[1]
        return label_pairs(labels, limits)
    name = stats.get(f"{prefix}.{index}.name")
    target = name if isinstance(name, str) and name else f"{prefix}{index}"
    labels = dict(extra(target))
    labels["target_device"] = target
    path = stats.get(f"{prefix}.{index}.path")
    if prefix == "block" and isinstance(path, str):
        labels["source_file"] = path
    for label in drop & labels.keys():
        del labels[label]
    return label_pairs(labels, limits)


# --- label limits ------------------------------------------------------------------------

INFO_METRIC = "libvirt_domain_openstack_info"
# Labels `labels.drop` may name besides the Nova labels: the device labels that only add
# detail. Also the order in which the agent leaves them off a series that has too many.
DEVICE_EXTRAS = ("volume_id", "port_id", "source_file")


def max_label_names(
    external: Iterable[str],
    series_labels: Iterable[str],
    drop: Iterable[str] = (),
    fitted: Iterable[str] = (),
) -> int:
    """The most label names, `__name__` included, that any series the agent sends can carry
    with these external labels, Nova series labels and dropped labels. Of the metrics named
    in `fitted` only the first own label counts: the others are left off when they do not fit
    (`fit_own_labels`)."""
    dropped = set(drop)
    ext = set(external)
    cut = set(fitted)
    domain = {*ext, "domain", "uuid", *(set(series_labels) - dropped)}
    worst = 0
    for m in CATALOG:
        own = m.labels[:1] if m.name in cut else m.labels
        names = (domain if m.scope == "domain" else ext) | (set(own) - dropped)
        worst = max(worst, 1 + len(names))
    return worst


def plan_within_limits(
    stats: Mapping[str, object],
    shared: LabelPairs,
    droppable: Iterable[str],
    unknown: set[str] | None = None,
    extra: DeviceExtra = _no_extra,
    drop: frozenset[str] = frozenset(),
    limits: LabelLimits | None = None,
) -> tuple[DomainPlan, frozenset[str]]:
    """`plan_domain`, with every series kept within `limits.max_names` label names
    (`__name__` included): while the widest would carry more, leave off the `droppable`
    shared labels (the Nova series labels), the last first, then the device labels of
    DEVICE_EXTRAS; never the domain's identity, the external labels, or a device's own name.
    Each label left off is counted in `limits.dropped`. Returns the plan and the device
    labels dropped. (A configuration where this can happen is refused at load: a safety
    net.)"""
    limits = limits or LabelLimits()
    plan = plan_domain(stats, shared, unknown, extra, drop, limits)
    candidates = [n for n in reversed(list(droppable)) if n in dict(shared)]
    candidates += [n for n in DEVICE_EXTRAS if n not in drop]
    while candidates and _widest(plan) > limits.max_names:
        name = candidates.pop(0)
        if any(k == name for k, _ in shared):
            shared = tuple(p for p in shared if p[0] != name)
        elif any(k == name for _, own, _ in plan.series for k, _ in own):
            drop = drop | {name}
        else:
            continue  # no series of this domain carries it
        limits.dropped += 1
        plan = plan_domain(stats, shared, None, extra, drop, limits)
    return plan, drop


def _widest(plan: DomainPlan) -> int:
    """The most label names a series of the plan carries (device labels never repeat a
    shared one; were they to, this overcounts)."""
    own = max((len(k[1]) for k in plan.series), default=0)
    return 1 + len(plan.shared) + own


def fit_own_labels(
    own: LabelPairs, shared: LabelPairs, order: Iterable[str], limits: LabelLimits | None = None
) -> LabelPairs:
    """One series' own labels cut to fit `limits.max_names` together with the shared ones:
    own labels the shared ones lack are left off in the reverse of `order` (each counted in
    `limits.dropped`)."""
    limits = limits or LabelLimits()
    shared_names = {k for k, _ in shared}
    keep = {k for k, _ in own}
    width = 1 + len(keep | shared_names)
    for name in reversed(list(order)):
        if width <= limits.max_names:
            break
        if name in keep and name not in shared_names:
            keep.discard(name)
            width -= 1
            limits.dropped += 1
    if len(keep) == len(own):
        return own
    return tuple(p for p in own if p[0] in keep)


# --- docs --------------------------------------------------------------------------------


# docs/metrics.md on the series counted from libvirt's job-completed event (`pusher.jobs`).
_EVENT_NOTE = (
    'The series whose key reads "job-completed event" count the jobs that ended (libvirt',
    "reports each with an event; no call per cycle), so a live migration shorter than a",
    "cycle is counted too. Each series starts at 0 one cycle before its first count; a",
    "domain gone from libvirt (migrated away, deleted) keeps them for 10 cycles after its",
    "last event, then they end. libvirt 9.0's QEMU driver sends the event for saves",
    "(managed saves included), live migrations and backups, not for dumps or restores; only",
    "a backup's event tells a failure or cancellation, the others come when QEMU finished.",
    "",
)

# docs/metrics.md on the series that a switch adds.
_SWITCHED_SERIES = (
    "The storage pool series (`libvirt_storage_pool_*`, labelled with the pool's name,",
    "UUID and type) come only with `collect.storage_pools: true`: a list call and one or",
    "two calls per pool each cycle, figures as of the pool's last refresh (the read-only",
    "connection cannot refresh). The state is a gauge holding libvirt's number, as",
    "`libvirt_domain_state_code` does; sizes only for running or degraded pools, the",
    "volume count only for active ones.",
    "",
    "The vCPU placement series (`libvirt_domain_vcpu_cpu`, `…_affinity_cpus`,",
    "`…_pinned_cpu`) come only with `collect.vcpu_placement: true`: one",
    "`virDomainGetVcpus` call per running or paused domain each cycle.",
    "",
    "The KVM series (`libvirt_domain_kvm_*`) come only with the `vm` group in",
    "`collect.groups`, from KVM guests (TCG guests have none). libvirt names each statistic",
    "after KVM's with its kind as a suffix: `sum` (cumulative) makes a counter, `cur`",
    "(instant) and `max` (peak) a gauge; `_ns` names are times, in seconds here. KVM's",
    "per-vCPU statistics are exported per guest, all vCPUs together (`vm.vcpus.*`: sums, a",
    "boolean's sum counting the vCPUs where it holds); libvirt's vcpu group reports them",
    "per vCPU, and without the vm group the agent leaves them out.",
    "",
)


def _markdown_row(m: Metric) -> str:
    """One metric's row of docs/metrics.md: where its value comes from, in the key column."""
    labels = ", ".join(f"`{x}`" for x in m.labels) or "—"
    source = f"`{m.source}`" if m.source else m.scope
    if m.name in XML_SERIES:
        source = "domain XML"
    if m.name in EVENT_SERIES:
        source = "job-completed event"
    if m.source.startswith("placement."):
        source = "`virDomainGetVcpus`"
    if m.source in DERIVED_KEYS:
        source = " minus ".join(f"`{k}`" for k in DERIVED_KEYS[m.source])
    return f"| `{m.name}` | {m.type} | {m.unit or '—'} | {labels} | {source} | {m.help} |"


def markdown(metrics: Iterable[Metric] = CATALOG) -> str:
    """docs/metrics.md, generated from the table."""
    lines = [
        "# Metrics",
        "",
        "Generated from `pusher/catalog.py` by `python -m pusher.catalog > docs/metrics.md`;",
        "a test fails when this file is stale.",
        "",
        "Every domain series also carries `domain` (libvirt name), `uuid` (libvirt UUID, equal",
        "to the Nova instance UUID), the Nova labels named in `nova.series_labels` and the",
        "`external_labels`; host and agent series carry the `external_labels` only. Labels",
        "named in `labels.drop` are left off every series. `relabel_configs`, when set, rename,",
        "add or drop labels and series on top of this, names included.",
        "",
        "The perf, iothread, memory (bandwidth) and dirtyrate series come only from the",
        "groups listed in `collect.groups`; the default groups are state, cpu_total, balloon,",
        "vcpu, interface and block.",
        "",
        "The host capacity series (`libvirt_node_cpu_seconds_total`, the total, free, buffers",
        "and cached `libvirt_node_memory_*_bytes`, `libvirt_node_hugepages_free`) come only",
        "with `collect.host_stats: true`: off by default, as its three libvirt calls cost",
        "libvirtd about 0.7 ms of CPU per cycle.",
        "",
        *_SWITCHED_SERIES,
        'The series whose key reads "domain XML" come from the domain XML the agent caches',
        "(read when a domain appears or libvirt reports a change): no libvirt call per cycle.",
        "Join them to the stats series on `uuid` and `target_device`.",
        "",
        "The delivery and spool series carry `endpoint`: the name of the remote-write endpoint",
        "they describe (`default` for a single `remote_write` mapping). Every endpoint receives",
        "the series of all of them, so a receiver that is up shows how the others fare.",
        "",
        *_EVENT_NOTE,
        "| name | type | unit | labels | libvirt key | help |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines.extend(_markdown_row(m) for m in metrics)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
