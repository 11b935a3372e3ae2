"""Where each vCPU runs (`collect.vcpu_placement`): one `virDomainGetVcpus` call per running or
paused domain per cycle, outside the bulk call (which has no such key).

libvirtd answers it from the host's scheduler (the vCPU thread's last CPU and its affinity),
without the domain's QEMU monitor, so a stuck guest does not hold it. The answer becomes
stats keys of the domain's record, `placement.<n>.*` (a vCPU index <n>), turned into series by
the catalog like any other key:

- `placement.<n>.cpu`: the host CPU the vCPU last ran on;
- `placement.<n>.affinity_cpus`: how many host CPUs it may run on (all of them unless pinned);
- `placement.<n>.pinned_cpu`: the one host CPU it may run on, when pinned to exactly one.

A vCPU pinned to a set of several CPUs shows as a count below the host's CPUs; the set itself
is in the domain XML (`<cputune>`): one series per allowed CPU would cost a guest floating over
a shared CPU set dozens of series per vCPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import libvirt

__all__ = ["PREFIX", "placement_keys", "read_placement"]

log = logging.getLogger(__name__)

PREFIX = "placement"


def placement_keys(
    vcpus: Sequence[Sequence[int]], cpumaps: Sequence[Sequence[bool]]
) -> dict[str, int]:
    """`virDomainGetVcpus`' answer (per vCPU: number, state, CPU time, host CPU; and per vCPU
    the map of host CPUs it may run on) as `placement.<n>.*` keys. A vCPU without a host CPU
    (-1: offline) has no `cpu` key."""
    out: dict[str, int] = {}
    for info, cpumap in zip(vcpus, cpumaps, strict=False):
        number, cpu = int(info[0]), int(info[3])
        if cpu >= 0:
            out[f"{PREFIX}.{number}.cpu"] = cpu
        allowed = [i for i, on in enumerate(cpumap) if on]
        out[f"{PREFIX}.{number}.affinity_cpus"] = len(allowed)
        if len(allowed) == 1:
            out[f"{PREFIX}.{number}.pinned_cpu"] = allowed[0]
    return out


def read_placement(dom: Any) -> dict[str, int]:
    """The domain's `placement.<n>.*` keys; empty when libvirt will not say (the domain
    stopped or went away since the bulk call)."""
    try:
        vcpus, cpumaps = dom.vcpus()
    except libvirt.libvirtError as e:
        log.debug("vcpus() failed: %s", e)
        return {}
    return placement_keys(vcpus, cpumaps)
