"""The data beyond the stats groups, on real guests: guest memory in use from a guest whose
balloon driver reports it, per-device info and I/O limits from the domain XML, host capacity
and storage pools."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from agent import AgentProcess, run_once, wait_for, write_config
from guests import Guest, domstats
from receiver import Receiver

LIBVIRT_URI = "qemu:///system"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Series = tuple[str, frozenset[tuple[str, str]]]


def dry_run(tmp_path: Path, domains: list[str], **sections: Any) -> dict[Series, float]:
    """One cycle of the agent (`--dry-run`) on these domains: (name, labels) -> value."""
    sections.setdefault("filter", {"domains": {"include": domains}})
    result = run_once(write_config(tmp_path, "http://127.0.0.1:9/unused", **sections), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out: dict[Series, float] = {}
    for line in result.stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, line
        labels = frozenset((k, v.replace('\\"', '"').replace("\\\\", "\\"))
                           for k, v in _LABEL.findall(m.group(2) or ""))  # fmt: skip
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def of(
    samples: dict[Series, float], name: str, **labels: str
) -> dict[frozenset[tuple[str, str]], float]:
    """The series of one metric whose labels include `labels`."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= lab}


def one(samples: dict[Series, float], name: str, **labels: str) -> float:
    found = of(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


# --- 1. guest memory in use --------------------------------------------------------------


def test_guest_memory_in_use_from_a_real_balloon_driver(
    booted_guest: tuple[str, str], guests: list[Guest], tmp_path: Path
) -> None:
    name, uuid = booted_guest
    samples = dry_run(tmp_path, [name, guests[0]["name"]])
    mem = "libvirt_domain_memory_stats_"
    available = one(samples, f"{mem}available_bytes", uuid=uuid)
    unused = one(samples, f"{mem}unused_bytes", uuid=uuid)
    used = one(samples, f"{mem}used_bytes", uuid=uuid)
    usable = one(samples, f"{mem}usable_bytes", uuid=uuid)
    # One record, one balloon update: the difference is exact.
    assert used == available - unused
    assert 0 < used < available <= 128 * 2**20
    assert unused <= usable <= available
    # What libvirt itself reports now (the guest idles: its memory barely moves).
    raw = domstats(LIBVIRT_URI, [name])[name]
    libvirt_used = (int(raw["balloon.available"]) - int(raw["balloon.unused"])) * 1024
    assert abs(used - libvirt_used) < 8 * 2**20, (used, libvirt_used)
    print(f"booted guest: available {available / 2**20:.1f} MiB, used {used / 2**20:.1f} MiB, "
          f"usable {usable / 2**20:.1f} MiB")  # fmt: skip
    # A guest without a balloon driver in it reports neither figure: no used series either,
    # while what the host knows of its memory is there.
    other = guests[0]["uuid"]
    assert not of(samples, f"{mem}used_bytes", uuid=other)
    assert not of(samples, f"{mem}available_bytes", uuid=other)
    assert one(samples, "libvirt_domain_info_memory_usage_bytes", uuid=other) > 0


# --- 3. info series per device --------------------------------------------------------------


def test_device_info_series_describe_every_nic_and_disk_and_join_their_stats(
    guests: list[Guest], tmp_path: Path
) -> None:
    samples = dry_run(tmp_path, [g["name"] for g in guests])
    for g in guests:
        dumped = subprocess.run(["virsh", "-c", LIBVIRT_URI, "dumpxml", g["name"]],
                                capture_output=True, text=True, check=True)  # fmt: skip
        xml = ET.fromstring(dumped.stdout)
        mac = xml.find("devices/interface/mac").get("address")  # type: ignore[union-attr]
        (nic,) = of(samples, "libvirt_domain_interface_info", uuid=g["uuid"])
        assert {
            ("target_device", g["tap"]), ("interface_mac", mac), ("interface_model", "virtio"),
            ("interface_type", "ethernet"), ("port_id", g["port_uuid"]),
            ("instance_name", g["instance_name"]),
        } <= nic  # fmt: skip
        disks = {dict(d)["target_device"]: dict(d)
                 for d in of(samples, "libvirt_domain_block_info", uuid=g["uuid"])}  # fmt: skip
        assert set(disks) == {"vda", "vdb"}
        for disk in disks.values():
            assert disk["disk_bus"] == "virtio" and disk["disk_driver_type"] == "qcow2"
            assert disk["disk_source_type"] == "file" and disk["disk_device"] == "disk"
        assert disks["vdb"]["disk_serial"] == disks["vdb"]["volume_id"] == g["volume_id"]
        assert "disk_serial" not in disks["vda"]
        # Joinable: every device with stats has its info series under the same
        # (uuid, target_device), and the other way round.
        for family, info in (
            ("libvirt_domain_block_stats_read_bytes_total", "libvirt_domain_block_info"),
            ("libvirt_domain_interface_stats_receive_bytes_total", "libvirt_domain_interface_info"),
        ):
            stats = {dict(s)["target_device"] for s in of(samples, family, uuid=g["uuid"])}
            infos = {dict(s)["target_device"] for s in of(samples, info, uuid=g["uuid"])}
            assert stats == infos, (family, stats, infos)


# --- 4. I/O limits ----------------------------------------------------------------------------


# Limits as Nova sets them from a flavor's quota:disk_* (a burst needs its base limit; a
# total and a read or write limit of one kind exclude each other).
LIMITS = {"total_bytes_sec": 10_485_760, "read_iops_sec": 500, "write_iops_sec": 300,
          "read_iops_sec_max": 2000, "read_iops_sec_max_length": 30}  # fmt: skip


def _set_iotune(name: str, **limits: int) -> None:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in limits.items()]
    subprocess.run(["virsh", "-c", LIBVIRT_URI, "blkdeviotune", name, "vdb", "--live", *args],
                   check=True, capture_output=True, timeout=30)  # fmt: skip


def test_io_limits_set_live_reach_the_receiver_without_a_restart(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    g = guests[0]
    config = write_config(tmp_path, fresh_receiver.write_url,
                          filter={"domains": {"include": [g["name"]]}})  # fmt: skip
    agent = AgentProcess(config, tmp_path / "agent.log")
    limit = "libvirt_domain_block_iotune_"
    try:
        wait_for(lambda: fresh_receiver.query(f'libvirt_domain_block_info{{uuid="{g["uuid"]}"}}'),
                 20, "the first cycles")  # fmt: skip
        assert not fresh_receiver.query(f'{{__name__=~"{limit}.+", uuid="{g["uuid"]}"}}')
        # As Nova does for a flavor's quota:disk_* or Cinder for a QoS spec, but live: libvirt
        # reports it as a tunable event, and the agent reads the XML again.
        _set_iotune(g["name"], **LIMITS)
        selector = f'{{__name__=~"{limit}.+", uuid="{g["uuid"]}"}}'
        wait_for(lambda: len(fresh_receiver.query(selector)) >= 5, 15, "the limits set live")
        got = fresh_receiver.query(selector)
        values = {s["metric"]["__name__"].removeprefix(limit): float(s["value"][1]) for s in got}
        assert values == {
            "total_bytes_per_second": 10_485_760.0,
            "read_iops": 500.0,
            "write_iops": 300.0,
            "burst_read_iops": 2000.0,
            "burst_read_iops_length_seconds": 30.0,
        }
        assert {s["metric"]["target_device"] for s in got} == {"vdb"}
        # Joinable with the measured rate, as the dashboard does it.
        joined = fresh_receiver.query(
            f'libvirt_domain_block_stats_read_requests_total{{uuid="{g["uuid"]}"}} '
            f"* on (uuid, target_device) group_left {limit}read_iops"
        )
        assert [s["metric"]["target_device"] for s in joined] == ["vdb"]
        # Lifted: the series end (a stale marker each), again without a restart.
        _set_iotune(g["name"], **dict.fromkeys(LIMITS, 0))
        wait_for(
            lambda: not fresh_receiver.query(selector),
            15, "the lifted limits to end",
        )  # fmt: skip
    finally:
        _set_iotune(g["name"], **dict.fromkeys(LIMITS, 0))
        assert agent.stop() == 0, agent.log()
    assert "Traceback" not in agent.log()


# --- 6. host capacity -----------------------------------------------------------------------


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0]) * 1024
    return out


def test_host_capacity_matches_what_the_kernel_reports(guests: list[Guest], tmp_path: Path) -> None:
    on = {"host_stats": True}  # off by default: three more libvirt calls per cycle
    first = dry_run(tmp_path, [guests[0]["name"]], collect=on)
    mem = _meminfo()
    assert one(first, "libvirt_node_memory_total_bytes") == mem["MemTotal"]
    for kind, key in (("free", "MemFree"), ("cached", "Cached"), ("buffers", "Buffers")):
        got = one(first, f"libvirt_node_memory_{kind}_bytes")
        assert abs(got - mem[key]) < max(0.05 * mem[key], 64 * 2**20), (kind, got, mem[key])
    # CPU time by mode, all CPUs together: what /proc/stat's "cpu" line says, in seconds.
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, _system, idle = (f / hz for f in fields[:4])
    modes = {dict(lab)["mode"]: v for lab, v in of(first, "libvirt_node_cpu_seconds_total").items()}
    assert set(modes) == {"kernel", "user", "idle", "iowait"}
    assert abs(modes["user"] - (user + nice)) < 5 * os.cpu_count()  # type: ignore[operator]
    assert abs(modes["idle"] - idle) < 5 * os.cpu_count()  # type: ignore[operator]
    # Free huge pages: one series per NUMA node and huge page size, as sysfs counts them.
    pages = of(first, "libvirt_node_hugepages_free")
    assert pages
    for lab, value in pages.items():
        labels = dict(lab)
        size_kib = int(labels["page_size_bytes"]) // 1024
        sysfs = Path(f"/sys/devices/system/node/node{labels['numa_node']}/hugepages/"
                     f"hugepages-{size_kib}kB/free_hugepages")  # fmt: skip
        assert value == int(sysfs.read_text()), labels
    # A counter: later, more.
    second = dry_run(tmp_path, [guests[0]["name"]], collect=on)
    total = lambda s: sum(of(s, "libvirt_node_cpu_seconds_total").values())  # noqa: E731
    assert total(second) > total(first)
    # Off, as by default: none of them.
    off = dry_run(tmp_path, [guests[0]["name"]])
    assert not [n for n, _ in off if n.startswith(("libvirt_node_cpu_seconds", "libvirt_node_h"))]
    assert not [n for n, _ in off if n.startswith("libvirt_node_memory_") and n.endswith("_bytes")
                and n != "libvirt_node_memory_bytes"]  # fmt: skip
