"""The data beyond the stats groups, on real guests: guest memory in use from a guest whose
balloon driver reports it, per-device info and I/O limits from the domain XML, host capacity
and storage pools."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from agent import run_once, write_config
from guests import Guest, domstats

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
            ("target_device", g["tap"]), ("mac", mac), ("model", "virtio"), ("type", "ethernet"),
            ("port_id", g["port_uuid"]), ("instance_name", g["instance_name"]),
        } <= nic  # fmt: skip
        disks = {dict(d)["target_device"]: dict(d)
                 for d in of(samples, "libvirt_domain_block_info", uuid=g["uuid"])}  # fmt: skip
        assert set(disks) == {"vda", "vdb"}
        for disk in disks.values():
            assert disk["bus"] == "virtio" and disk["driver_type"] == "qcow2"
            assert disk["source_type"] == "file" and disk["device"] == "disk"
        assert disks["vdb"]["serial"] == disks["vdb"]["volume_id"] == g["volume_id"]
        assert "serial" not in disks["vda"]
        # Joinable: every device with stats has its info series under the same
        # (uuid, target_device), and the other way round.
        for family, info in (
            ("libvirt_domain_block_stats_read_bytes_total", "libvirt_domain_block_info"),
            ("libvirt_domain_interface_stats_receive_bytes_total", "libvirt_domain_interface_info"),
        ):
            stats = {dict(s)["target_device"] for s in of(samples, family, uuid=g["uuid"])}
            infos = {dict(s)["target_device"] for s in of(samples, info, uuid=g["uuid"])}
            assert stats == infos, (family, stats, infos)
