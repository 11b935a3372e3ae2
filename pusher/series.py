"""From a libvirt snapshot to the series of one cycle (pure: no I/O, no threads).

`Planner.cycle` turns a `Snapshot` into a `Cycle`: per domain a `DomainPlan` (cached while
the domain's name, Nova data and stats keys stay the same) with this cycle's values, the Nova
info series, the host series, and stale markers for the series that ended. `StaleTracker`
remembers the last cycle's domains to know what ended: a domain that went away, a device
detached, labels changed by a Nova rename, a stuck guest's timeouts series.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from pusher import catalog, mimir
from pusher.catalog import LabelLimits, LabelPairs, Sample, SeriesKey
from pusher.collect import VIR_DOMAIN_RUNNING, DomainStats, HostInfo, Snapshot
from pusher.config import Config
from pusher.encode import STALE_NAN
from pusher.filters import DomainFilter
from pusher.host import HostStats
from pusher.nova import NovaInstance

__all__ = [
    "Cycle",
    "DomainSeries",
    "Planner",
    "StaleTracker",
    "build_samples",
    "host_samples",
    "host_stats_samples",
    "identity_labels",
    "plan_samples",
    "plan_snapshot",
]

log = logging.getLogger(__name__)

TIMEOUTS_METRIC = "libvirt_domain_stats_timeouts_total"
# Mimir's id of a rejection naming a label limit -> the LabelLimits field that keeps to it.
_LIMIT_ATTRIBUTES = {
    "label-value-too-long": "max_value_bytes",
    "label-name-too-long": "max_name_length",
    "max-label-names-per-series": "max_names",
}
Admits = Callable[[str, NovaInstance | None], bool]  # (domain name, Nova data) -> exported


def plan_samples(plan: catalog.DomainPlan, values: Sequence[float]) -> list[Sample]:
    """A plan's series with their values: the one place plans become samples."""
    return list(zip(plan.series, values, strict=True))


def identity_labels(
    d: DomainStats,
    series_labels: Sequence[str],
    external: LabelPairs,
    drop: frozenset[str] = frozenset(),
    limits: LabelLimits | None = None,
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
    return catalog.label_pairs(labels, limits)


@dataclass(frozen=True)
class DomainSeries:
    """A domain's plan and its other series, kept while its name, Nova data and stats keys
    stay the same."""

    name: str
    info: object  # the DomainInfo it was built from (compared by identity: it is cached)
    plan: catalog.DomainPlan
    # The series read off the domain XML, with their values: the Nova info series (when there
    # is Nova data), the devices' info series.
    extra: tuple[Sample, ...]
    running: bool = True
    devices: frozenset[LabelPairs] = frozenset()  # the devices the record names

    def extra_keys(self) -> set[SeriesKey]:
        return {key for key, _ in self.extra}

    def keys(self) -> set[SeriesKey]:
        return {*self.plan.series, *self.extra_keys()}


def _reusable(cached: DomainSeries | None, d: DomainStats) -> bool:
    return (
        cached is not None
        and cached.name == d.name
        and cached.info is d.info
        and cached.plan.signature == tuple(d.stats)
    )


def _domain_series(
    d: DomainStats,
    cached: DomainSeries | None,
    series_labels: Sequence[str],
    external: LabelPairs,
    unknown: set[str] | None,
    drop: frozenset[str],
    limits: LabelLimits,
) -> DomainSeries:
    shared = identity_labels(d, series_labels, external, drop, limits)
    if cached is not None and cached.plan.shared == shared:
        shared = cached.plan.shared  # the same tuple: the encoder's heads stay valid
    plan, device_drop = catalog.plan_within_limits(
        d.stats, shared, series_labels, unknown, d.info.labels_for, drop, limits
    )
    running = d.stats.get("state.state") == VIR_DOMAIN_RUNNING
    devices = catalog.devices(d.stats, d.info.labels_for, device_drop, limits)
    extra = _xml_series(d, plan.shared, drop, limits)
    return DomainSeries(d.name, d.info, plan, extra, running, devices)


def _xml_series(
    d: DomainStats, shared: LabelPairs, drop: frozenset[str], limits: LabelLimits
) -> tuple[Sample, ...]:
    """The series read off the domain XML: the Nova info series and the devices' info
    series, their labels in `drop` left off and the rest fitted to the label limits."""
    found = list(d.info.devices)
    if d.info.nova is not None:
        found.insert(0, (catalog.INFO_METRIC, tuple(d.info.nova.labels().items()), 1.0))
    out: list[Sample] = []
    for name, labels, value in found:
        pairs = catalog.label_pairs({k: v for k, v in labels if k not in drop}, limits)
        own = catalog.fit_own_labels(pairs, shared, catalog.by_name(name).labels, limits)
        out.append(((name, own, shared), value))
    return tuple(out)


def plan_snapshot(
    snapshot: Snapshot,
    series_labels: Sequence[str],
    external: LabelPairs,
    cache: dict[str, DomainSeries],
    unknown: set[str] | None = None,
    drop: frozenset[str] = frozenset(),
    limits: LabelLimits | None = None,
) -> dict[str, DomainSeries]:
    """Every domain's series for this snapshot, reusing `cache` (uuid -> DomainSeries)
    for domains whose name, Nova data and stats keys did not change.

    Labels named in `drop` (`labels.drop`) are left off every series. A series that would
    carry more label names than `limits.max_names` loses the lowest-priority ones
    (`catalog.plan_within_limits`): a configuration where that can happen is refused at
    load, so this is a safety net."""
    limits = limits or LabelLimits()
    out: dict[str, DomainSeries] = {}
    for d in snapshot.domains:
        cached = cache.get(d.uuid)
        if cached is not None and _reusable(cached, d):
            out[d.uuid] = cached
        else:
            out[d.uuid] = _domain_series(d, cached, series_labels, external, unknown, drop, limits)
    return out


def host_samples(
    host: HostInfo | None, external: LabelPairs, limits: LabelLimits | None = None
) -> list[Sample]:
    if host is None:
        return []
    versions = catalog.label_pairs({
        "libvirt_version": host.libvirt_version,
        "hypervisor": host.hypervisor,
        "hypervisor_version": host.hypervisor_version,
    }, limits)  # fmt: skip
    return [
        (("libvirt_node_cpus", (), external), float(host.cpus)),
        (("libvirt_node_memory_bytes", (), external), float(host.memory_bytes)),
        (("libvirt_node_cpu_frequency_hertz", (), external), host.cpu_mhz * 1e6),
        (("libvirt_versions_info", versions, external), 1.0),
    ]


def host_stats_samples(stats: HostStats | None, external: LabelPairs) -> list[Sample]:
    """The node's capacity (`collect.host_stats`) in base units."""
    if stats is None:
        return []
    out: list[Sample] = [
        (("libvirt_node_cpu_seconds_total", (("mode", mode),), external), ns * catalog.NS)
        for mode, ns in stats.cpu_ns
    ]
    out += [
        ((f"libvirt_node_memory_{kind}_bytes", (), external), kib * catalog.KIB)
        for kind, kib in stats.memory_kib
    ]
    for cell, size, count in stats.free_huge_pages:
        own = (("numa_node", str(cell)), ("page_size_bytes", str(size * 1024)))
        out.append((("libvirt_node_hugepages_free", own, external), float(count)))
    return out


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
        out.extend(plan_samples(ds.plan, ds.plan.values(stats[uuid])))
        out.extend(ds.extra)
    return out


@dataclass
class Cycle:
    """One cycle's data: domain plans with their values, and the other samples."""

    ts_ms: int
    plans: list[tuple[catalog.DomainPlan, list[float]]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    ended: set[SeriesKey] = field(default_factory=set)  # given stale markers in this cycle

    def count(self) -> int:
        return len(self.samples) + sum(len(values) for _, values in self.plans)

    def names(self) -> set[str]:
        """The metric names this cycle carries."""
        names = {key[0] for key, _ in self.samples}
        for plan, _ in self.plans:
            names.update(plan.names)
        return names

    def all_samples(self) -> list[Sample]:
        out: list[Sample] = []
        for plan, values in self.plans:
            out.extend(plan_samples(plan, values))
        return out + self.samples


class StaleTracker:
    """The series of the last cycle, to mark those that ended, once each.

    A stuck domain (its stats calls hang) keeps its last series, and its timeouts series
    counts the cycles it missed; that series ends with the domain, or when its labels
    change."""

    def __init__(self) -> None:
        self.domains: dict[str, DomainSeries] = {}  # the last successful cycle's, by uuid
        self._timeouts: collections.Counter[str] = collections.Counter()  # uuid -> cycles
        self._timeout_keys: dict[str, SeriesKey] = {}  # uuid -> its timeouts series

    def keep_stuck(self, domains: dict[str, DomainSeries], stuck: Iterable[str]) -> None:
        """Stuck domains keep their last series (no stale markers) and count a timeout."""
        for uuid in stuck:
            if uuid in self.domains:
                domains[uuid] = self.domains[uuid]
                self._timeouts[uuid] += 1

    def timeouts(self, domains: dict[str, DomainSeries]) -> tuple[list[Sample], set[SeriesKey]]:
        """Each stuck domain's timeouts series, and those of them that ended."""
        out: list[Sample] = []
        keys: dict[str, SeriesKey] = {}
        for uuid in list(self._timeouts):
            if uuid not in domains:
                del self._timeouts[uuid]
                continue
            keys[uuid] = (TIMEOUTS_METRIC, (), domains[uuid].plan.shared)
            out.append((keys[uuid], float(self._timeouts[uuid])))
        # A timeouts series is no part of a domain's plan: it ends here, with its domain
        # (or its old labels).
        ended = set(self._timeout_keys.values()) - set(keys.values())
        self._timeout_keys = keys
        return out, ended

    def ended(self, domains: dict[str, DomainSeries]) -> set[SeriesKey]:
        """The series of the last successful cycle that are gone now: domains that went
        away, devices that did, and series whose labels changed. Remembers `domains`."""
        gone: set[SeriesKey] = set()
        for uuid, old in self.domains.items():
            new = domains.get(uuid)
            if new is old:
                continue  # the same plan: the same series
            gone |= old.keys() if new is None else _vanished(old, new)
        self.domains = domains
        return gone


def _vanished(old: DomainSeries, new: DomainSeries) -> set[SeriesKey]:
    vanished = old.keys() - new.keys()
    if not (vanished and new.running and new.plan.shared == old.plan.shared):
        return vanished
    # A series read off the XML is gone only when the XML changed: it ends.
    from_xml = old.extra_keys() - new.extra_keys()
    # Still running, same labels: a series missing from the record is a partial record
    # (another client held the domain's job), unless its device is gone: no longer named
    # in a group the record has; or unless it is a job series and the record has the
    # domain's job info (its job ended).
    groups = {k.partition(".")[0] for k in new.plan.signature}
    has_job = "job.type" in new.plan.signature
    return from_xml | {
        k for k in vanished
        if (k[1] and k[1] not in new.devices and catalog.group_of(k[0]) in groups)
        or (has_job and catalog.group_of(k[0]) == "job")
    }  # fmt: skip


class Planner:
    """Snapshots -> cycles, for one configuration: the Nova labels chosen for every series,
    the external labels, the labels dropped, the label limits and the domain filter."""

    def __init__(
        self,
        series_labels: Sequence[str],
        external: LabelPairs,
        drop: Iterable[str] = (),
        limits: LabelLimits | None = None,
        admits: Admits | None = None,
    ) -> None:
        self.series_labels = tuple(series_labels)
        self.external = external
        self._replan = False  # plan every domain afresh next cycle (the limits changed)
        self.drop = frozenset(drop)
        self.limits = limits or LabelLimits()
        self.admits = admits
        self.tracker = StaleTracker()
        self.unknown_keys: set[str] = set()
        self._logged_unknown: set[str] = set()

    @classmethod
    def from_config(cls, cfg: Config) -> Planner:
        """The planner of this configuration, with label limits of its own (`limits.*`)."""
        limits = LabelLimits(
            cfg.limits.max_label_names_per_series,
            cfg.limits.max_label_name_length,
            cfg.limits.max_label_value_length,
        )
        domain_filter = DomainFilter.from_config(cfg.filter)
        return cls(
            cfg.nova.series_labels,
            catalog.label_pairs(cfg.external_labels, limits),
            cfg.labels.drop,
            limits,
            domain_filter.admits if domain_filter else None,
        )

    def cycle(self, snapshot: Snapshot | None, stuck: frozenset[str], now_ms: int) -> Cycle:
        """One cycle's series; `None` when libvirt could not be read (nothing ends then).
        A stuck domain's stats (partial, if any) are left out: its series keep their last
        values at the receiver instead of being marked stale. Domains the filters exclude
        (`filter.*`) are left out entirely: no series at all."""
        if snapshot is None:
            cycle = Cycle(now_ms)
        else:
            cycle = Cycle(snapshot.ts_ms)
            self._domain_series(cycle, snapshot, stuck)
        up = 1.0 if snapshot is not None else 0.0
        cycle.samples.append((("libvirt_up", (), self.external), up))
        if snapshot is not None:
            n = float(len(snapshot.domains))
            cycle.samples.append((("libvirt_domains", (), self.external), n))
            cycle.samples.extend(host_samples(snapshot.host, self.external, self.limits))
            cycle.samples.extend(host_stats_samples(snapshot.host_stats, self.external))
        return cycle

    def _domain_series(self, cycle: Cycle, snapshot: Snapshot, stuck: frozenset[str]) -> None:
        answered = [
            d for d in snapshot.domains
            if d.uuid not in stuck and (self.admits is None or self.admits(d.name, d.info.nova))
        ]  # fmt: skip
        cache = {} if self._replan else self.tracker.domains
        self._replan = False
        domains = plan_snapshot(
            Snapshot(snapshot.ts_ms, answered, snapshot.duration, snapshot.xml_fetches),
            self.series_labels, self.external, cache,
            self.unknown_keys, self.drop, self.limits,
        )  # fmt: skip
        for d in answered:
            ds = domains[d.uuid]
            cycle.plans.append((ds.plan, ds.plan.values(d.stats)))
            cycle.samples.extend(ds.extra)
        self.tracker.keep_stuck(domains, stuck)
        timeouts, timeouts_ended = self.tracker.timeouts(domains)
        cycle.samples.extend(timeouts)
        cycle.ended = self.tracker.ended(domains) | timeouts_ended
        cycle.samples.extend((key, STALE_NAN) for key in cycle.ended)
        self._log_unknown_keys()

    def adopt_limit(self, mimir_id: str, value: int) -> bool:
        """Keep to a tenant limit Mimir named in a rejection, when it is lower than ours:
        from the next cycle on, labels are cut or shed instead of the series rejected.
        Returns whether anything changed."""
        attribute = _LIMIT_ATTRIBUTES.get(mimir_id)
        if attribute is None or value < 1 or value >= getattr(self.limits, attribute):
            return False
        log.warning(
            "Mimir's limit for this tenant is %d (%s), lower than %s (%d): keeping to %d from "
            "now on; set %s: %d to start with it", value, mimir_id, mimir.LIMIT_KEYS[mimir_id],
            getattr(self.limits, attribute), value, mimir.LIMIT_KEYS[mimir_id], value,
        )  # fmt: skip
        setattr(self.limits, attribute, value)
        self.external = catalog.label_pairs(dict(self.external), self.limits)
        self._replan = True
        return True

    def _log_unknown_keys(self) -> None:
        new = self.unknown_keys - self._logged_unknown
        if new:
            log.info("libvirt stats keys not in the catalog (skipped): %s", ", ".join(sorted(new)))
            self._logged_unknown |= new
