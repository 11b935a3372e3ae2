"""KVM statistics of a KVM guest (libvirt's `vm` stats group, asked for in `collect.groups`).

libvirt reports what QEMU's `query-stats` gives from KVM, named after KVM's own statistics with
the kind of each as a suffix: `vm.<name>.<kind>` for the VM as a whole (in the `vm` group) and
`vcpu.<n>.<name>.<kind>` per vCPU (in the `vcpu` group, whenever QEMU can). The kind says how
to read the value, so it decides the metric type: `sum` is cumulative (a counter), `cur` an
instant value and `max` a peak (gauges); a name ending in `_ns` is a time in nanoseconds
(seconds in the catalog). Booleans come as `cur`.

Per-vCPU, the guest has some 40 of them per vCPU; the agent exports them per guest instead, all
vCPUs together (`add_vcpu_totals`: sums, the highest for peaks; a boolean's sum counts the
vCPUs where it holds), and only when the `vm` group is asked for, so that the defaults' series
stay as they were. TCG guests have no KVM and report none of these keys.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KINDS", "TOTALS_PREFIX", "add_vcpu_totals"]

KINDS = ("sum", "cur", "max")  # libvirt's suffixes: cumulative, instant, peak
TOTALS_PREFIX = "vm.vcpus."  # vm.vcpus.<name>.<kind>: a per-vCPU statistic over all vCPUs


def add_vcpu_totals(stats: dict[str, Any]) -> None:
    """Add `vm.vcpus.<name>.<kind>` for each `vcpu.<n>.<name>.<kind>` of the record, in
    place: the sum over the vCPUs (the highest for a peak)."""
    totals: dict[str, int] = {}
    for key, value in stats.items():
        if not key.startswith("vcpu.") or key.count(".") != 3:
            continue
        _, _, name, kind = key.split(".")
        if kind not in KINDS or not isinstance(value, int):  # bool is an int: 0 or 1
            continue
        total = f"{TOTALS_PREFIX}{name}.{kind}"
        if kind == "max":
            totals[total] = max(totals.get(total, 0), int(value))
        else:
            totals[total] = totals.get(total, 0) + int(value)
    stats.update(totals)
