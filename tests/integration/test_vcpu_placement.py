"""vCPU placement (issue 17, item 5) on a real guest whose vCPU 0 is pinned to host CPU 0 in its
XML (`<cputune><vcpupin>`) and whose vCPU 1 may run anywhere, checked against what the kernel
says of the guest's vCPU threads (/proc/<pid>/task/<tid>)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from guests import DOMAIN_BASE, destroy_guests, uuid_str
from test_data import dry_run, of, one

GUEST_XML = """<domain type='qemu'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>32</memory>
  <vcpu>2</vcpu>
  <cputune><vcpupin vcpu='0' cpuset='0'/></cputune>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><serial type='pty'/></devices>
</domain>"""


@pytest.fixture(scope="module")
def pinned_guest(libvirt_uri: str) -> Iterator[tuple[str, str]]:
    """(name, uuid) of a transient guest with vCPU 0 pinned to host CPU 0."""
    name = f"instance-{DOMAIN_BASE + 0xFE:08x}"
    destroy_guests(libvirt_uri, [name])
    uuid = uuid_str()
    conn = libvirt.open(libvirt_uri)
    try:
        conn.createXML(GUEST_XML.format(name=name, uuid=uuid), 0)
        yield name, uuid
    finally:
        conn.close()
        destroy_guests(libvirt_uri, [name])


def _vcpu_threads(name: str) -> dict[str, tuple[int, set[int]]]:
    """vCPU index -> (host CPU its thread last ran on, the CPUs it may run on), from /proc."""
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        m = re.fullmatch(r"CPU (\d+)/\w+", (task / "comm").read_text().strip())
        if not m:
            continue
        last_cpu = int((task / "stat").read_text().rsplit(")", 1)[1].split()[36])
        allowed = set()
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                for part in line.split(":", 1)[1].strip().split(","):
                    lo, _, hi = part.partition("-")
                    allowed.update(range(int(lo), int(hi or lo) + 1))
        out[m.group(1)] = (last_cpu, allowed)
    return out


def test_vcpu_placement_and_pinning_of_a_real_guest(
    pinned_guest: tuple[str, str], tmp_path: Path
) -> None:
    name, uuid = pinned_guest
    time.sleep(1)  # the vCPUs have run
    samples = dry_run(tmp_path, [name], collect={"vcpu_placement": True})
    threads = _vcpu_threads(name)
    assert set(threads) == {"0", "1"}
    host_cpus = os.cpu_count() or 0
    # vCPU 0: pinned to CPU 0 by the XML, so it runs there and nowhere else.
    assert threads["0"][1] == {0}
    assert one(samples, "libvirt_domain_vcpu_cpu", uuid=uuid, vcpu="0") == 0
    assert one(samples, "libvirt_domain_vcpu_affinity_cpus", uuid=uuid, vcpu="0") == 1
    assert one(samples, "libvirt_domain_vcpu_pinned_cpu", uuid=uuid, vcpu="0") == 0
    # vCPU 1: free to run on every host CPU; it ran on one of them.
    assert len(threads["1"][1]) == host_cpus
    assert one(samples, "libvirt_domain_vcpu_affinity_cpus", uuid=uuid, vcpu="1") == host_cpus
    assert one(samples, "libvirt_domain_vcpu_cpu", uuid=uuid, vcpu="1") in threads["1"][1]
    assert not of(samples, "libvirt_domain_vcpu_pinned_cpu", uuid=uuid, vcpu="1")
    # Off, as by default: none of them, and the vCPU series as before.
    off = dry_run(tmp_path, [name])
    assert not [n for n, _ in off if n in {"libvirt_domain_vcpu_cpu",
                                           "libvirt_domain_vcpu_affinity_cpus",
                                           "libvirt_domain_vcpu_pinned_cpu"}]  # fmt: skip
    assert len(off) == len(samples) - 5
