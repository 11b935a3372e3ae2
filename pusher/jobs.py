"""Finished jobs: libvirt's job-completed event, counted per domain and exported as counters.

A job that starts and ends between two cycles (a short live migration, a save, a dump, a
backup) is never seen by the job info calls (`collect.job_info`). libvirt reports each job
that ended with its job-completed event, whose parameters are the job's last statistics.
Events cost nothing per cycle: the agent registers for them once per connection.

- `parse_job` (pure) reads one event's parameters: operation, result, seconds, bytes. It
  never fails: a key missing or of the wrong type counts as unknown, or as nothing moved.
- `JobTally` adds the events up per domain, on libvirt's event thread; each snapshot carries
  a copy of its totals (`JobTally.totals`).
- `JobSeries` (pure) turns the totals into the counters of the planner's cycle.

Lifecycle. A domain's counters grow for as long as the domain stays on the host (shut off
included), across reconnections to libvirt. A domain gone from libvirt (migrated away,
deleted) keeps its series, with the labels it had, for JOBS_LINGER cycles after its last
event or its last appearance: a live migration out is counted on the source after the guest
left. Then its series end with a stale marker and its counts are forgotten; should the
domain come back, its counters start again from zero, in new series. A counter's first
sample is 0, one cycle before its first count: a series that began at its first count
would give Prometheus' `increase()` nothing to compare with. Jobs that end while the agent
is disconnected from libvirt are not counted (events are not replayed).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pusher.catalog import LabelPairs, Sample, SeriesKey

__all__ = [
    "JOBS_LINGER",
    "JOB_METRICS",
    "DomainJobs",
    "JobKey",
    "JobSeries",
    "JobTally",
    "JobTotals",
    "parse_job",
]

log = logging.getLogger(__name__)

# Cycles a domain gone from libvirt keeps its finished-job series after its last event.
JOBS_LINGER = 10
# virDomainJobOperation -> the `operation` label; other numbers are "unknown".
OPERATIONS = {
    0: "unknown",
    1: "start",
    2: "save",
    3: "restore",
    4: "migration_in",
    5: "migration_out",
    6: "snapshot",
    7: "snapshot_revert",
    8: "dump",
    9: "backup",
    10: "snapshot_delete",
}
# virDomainJobType of a finished job -> the `result` label.
_RESULTS = {3: "completed", 4: "failed", 5: "cancelled"}
MS_PER_S = 1000.0  # time_elapsed is in milliseconds
# The error message of a job that ended with `success` false because it was cancelled (QEMU's
# ECANCELED); `virsh domjobinfo --completed` calls such a job "Cancelled".
CANCELLED_MESSAGE = "Operation canceled"
# The counters, in the order of a JobTotals' figures.
JOB_METRICS = (
    "libvirt_domain_jobs_finished_total",
    "libvirt_domain_jobs_finished_seconds_total",
    "libvirt_domain_jobs_finished_bytes_total",
)

JobKey = tuple[str, str]  # (operation, result)


@dataclass(frozen=True)
class JobTotals:
    count: int = 0
    seconds: float = 0.0
    bytes: float = 0.0

    def add(self, seconds: float, moved: float) -> JobTotals:
        return JobTotals(self.count + 1, self.seconds + seconds, self.bytes + moved)


@dataclass(frozen=True)
class DomainJobs:
    """One domain's finished jobs: its libvirt name (as the last event gave it) and its
    totals by (operation, result)."""

    name: str
    totals: Mapping[JobKey, JobTotals]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _amount(value: object) -> float | None:
    """A finite, non-negative number; None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _result(params: Mapping[Any, Any]) -> str:
    """`type` when the event has it (virDomainJobType: completed, failed, cancelled), else
    `success`, which libvirt's QEMU driver (9.0) sends for backups only: false for a failed
    job, and for a cancelled one, which QEMU's error message then names. The driver's other
    events (saves, migrations) carry neither: it sends them when QEMU finished its part."""
    result = _RESULTS.get(_int(params.get("type")) or -1)
    if result is not None:
        return result
    success = params.get("success")
    if not isinstance(success, bool | int) or success:
        return "completed"
    return "cancelled" if params.get("errmsg") == CANCELLED_MESSAGE else "failed"


def parse_job(params: object) -> tuple[JobKey, float, float]:
    """A job-completed event's parameters -> ((operation, result), seconds, bytes moved).

    Bytes moved are `data_processed` (memory and disks together) or, without it, the sum of
    `memory_processed` and `disk_processed`: a dump reports memory only, a backup disks."""
    if not isinstance(params, Mapping):
        return ("unknown", "completed"), 0.0, 0.0
    operation = OPERATIONS.get(_int(params.get("operation")) or 0, "unknown")
    elapsed = _amount(params.get("time_elapsed"))
    moved = _amount(params.get("data_processed"))
    if moved is None:
        parts = (_amount(params.get(k)) for k in ("memory_processed", "disk_processed"))
        moved = sum(p for p in parts if p is not None)
    seconds = elapsed / MS_PER_S if elapsed is not None else 0.0
    return (operation, _result(params)), seconds, moved


@dataclass
class _Entry:
    name: str
    totals: dict[JobKey, JobTotals]
    absent: int = 0  # collections since the domain was last in libvirt or had an event


class JobTally:
    """Finished jobs per domain, from libvirt's job-completed event.

    Thread-safe: libvirt's event thread adds (`on_job_completed`) while the collecting
    thread copies (`totals`) and ages (`retain`)."""

    def __init__(self, linger: int = JOBS_LINGER) -> None:
        self.linger = linger
        self._domains: dict[str, _Entry] = {}  # uuid -> its jobs
        self._lock = threading.Lock()

    def on_job_completed(self, _conn: Any, dom: Any, params: Any, _opaque: Any) -> None:
        """libvirt's callback (virConnectDomainEventJobCompletedCallback)."""
        try:
            self.add(dom.UUIDString(), dom.name(), params)
        except Exception:  # an event is not worth an error on libvirt's event thread
            log.exception("cannot count a job-completed event")

    def add(self, uuid: str, name: str, params: object) -> None:
        key, seconds, moved = parse_job(params)
        log.debug("domain %s: %s job %s after %.3fs, %d bytes", uuid, *key, seconds, moved)
        with self._lock:
            entry = self._domains.setdefault(uuid, _Entry(name, {}))
            entry.name = name
            entry.absent = 0
            entry.totals[key] = entry.totals.get(key, JobTotals()).add(seconds, moved)

    def retain(self, present: Collection[str]) -> None:
        """After a collection: domains `present` in libvirt stay; the others are forgotten
        once absent for more than `linger` collections without an event."""
        with self._lock:
            for uuid, entry in list(self._domains.items()):
                entry.absent = 0 if uuid in present else entry.absent + 1
                if entry.absent > self.linger:
                    del self._domains[uuid]

    def totals(self) -> dict[str, DomainJobs]:
        """A copy of every domain's totals, by uuid."""
        with self._lock:
            return {u: DomainJobs(e.name, dict(e.totals)) for u, e in self._domains.items()}


# (uuid, domain name) -> the labels of a domain that has no series in this cycle, or None
# when it must not be exported.
LabelsOf = Callable[[str, str], LabelPairs | None]


class JobSeries:
    """The finished-job counters of a cycle, and the series of them that ended (pure).

    Each (operation, result) of a domain first shows as 0, and from the next cycle on with
    its totals. A domain's series carry its labels of this cycle, or, for a domain gone
    from libvirt, the last labels it had."""

    def __init__(self) -> None:
        self._shown: dict[str, set[JobKey]] = {}  # uuid -> the keys given their 0 already
        self._labels: dict[str, LabelPairs] = {}  # uuid -> labels of its last series
        self._keys: set[SeriesKey] = set()  # the series of the last cycle

    def cycle(
        self,
        jobs: Mapping[str, DomainJobs],
        present: Mapping[str, LabelPairs],
        excluded: Collection[str],
        labels_of: LabelsOf,
    ) -> tuple[list[Sample], set[SeriesKey]]:
        """This cycle's samples and the series that ended. `present`: the labels of the
        domains exported in this cycle; `excluded`: domains in libvirt that are not
        exported; `labels_of`: the labels of any other domain (gone from libvirt)."""
        out: list[Sample] = []
        for uuid, domain in jobs.items():
            labels = self._labels_for(uuid, domain.name, present, excluded, labels_of)
            if labels is None:
                self._forget(uuid)
                continue
            shown = self._shown.setdefault(uuid, set())
            for key, totals in sorted(domain.totals.items()):
                figures = (totals.count, totals.seconds, totals.bytes)
                if key not in shown:  # its first sample: 0
                    shown.add(key)
                    figures = (0, 0.0, 0.0)
                own = (("operation", key[0]), ("result", key[1]))
                out += [
                    ((n, own, labels), float(v)) for n, v in zip(JOB_METRICS, figures, strict=True)
                ]
        for uuid in set(self._shown) - jobs.keys():
            self._forget(uuid)
        keys = {key for key, _ in out}
        ended, self._keys = self._keys - keys, keys
        return out, ended

    def _labels_for(
        self,
        uuid: str,
        name: str,
        present: Mapping[str, LabelPairs],
        excluded: Collection[str],
        labels_of: LabelsOf,
    ) -> LabelPairs | None:
        if uuid in present:
            labels: LabelPairs | None = present[uuid]
        elif uuid in excluded:
            labels = None
        else:
            labels = self._labels.get(uuid) or labels_of(uuid, name)
        if labels is not None:
            self._labels[uuid] = labels
        return labels

    def _forget(self, uuid: str) -> None:
        self._shown.pop(uuid, None)
        self._labels.pop(uuid, None)
