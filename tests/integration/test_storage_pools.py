"""Storage pools (issue 17, item 2) on real pools of the host's libvirtd: a `dir` pool, an `fs`
pool (an ext4 image file on a loop device, which libvirt mounts) and a defined but inactive
pool, each made here and removed afterwards. The agent reads them over its read-only
connection."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from guests import GUEST_OFFSET
from test_data import dry_run, of, one

LIBVIRT_URI = "qemu:///system"
# Pool names of this run only: other runs on the same libvirtd use other offsets.
PREFIX = f"pusher-test-{GUEST_OFFSET:x}-"
VOLUME_BYTES = 4 << 20

POOL_XML = """<pool type='{type}'><name>{name}</name>{source}
  <target><path>{path}</path></target></pool>"""
VOLUME_XML = """<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>
  <allocation unit='bytes'>{size}</allocation><target><format type='raw'/></target></volume>"""


def _remove_pool(conn: libvirt.virConnect, name: str) -> None:
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    if pool.isActive():
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()  # an fs pool is unmounted here
    pool.undefine()


@pytest.fixture(scope="module")
def pools(libvirt_uri: str) -> Iterator[dict[str, libvirt.virStoragePool]]:
    """{"dir": …, "fs": …, "inactive": …}: the first two running with one volume each."""
    names = {kind: f"{PREFIX}{kind}" for kind in ("dir", "fs", "inactive")}
    workdir = Path(tempfile.mkdtemp(prefix="pusher-pools-"))
    workdir.chmod(0o755)
    conn = libvirt.open(libvirt_uri)
    for name in names.values():
        _remove_pool(conn, name)  # left over by a crashed run
    loop = ""
    try:
        image = workdir / "fs.img"
        subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
        # A loop device, not the file: libvirt finds its mount by the device's name when it
        # stops the pool, and would leave a file's mount (shown as /dev/loopN) in place.
        loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        sources = {
            "dir": ("dir", ""),
            "fs": ("fs", f"<source><device path='{loop}'/><format type='ext4'/></source>"),
            "inactive": ("dir", ""),
        }
        made = {}
        for kind, name in names.items():
            path = workdir / kind
            path.mkdir(mode=0o755)
            type_, source = sources[kind]
            xml = POOL_XML.format(type=type_, name=name, source=source, path=path)
            made[kind] = conn.storagePoolDefineXML(xml, 0)
        for kind in ("dir", "fs"):
            made[kind].create(0)
            vol = VOLUME_XML.format(name=f"{kind}-vol.raw", size=VOLUME_BYTES)
            made[kind].createXML(vol, 0)
            made[kind].refresh(0)  # the figures as the file system has them now
        yield made
    finally:
        for name in names.values():
            _remove_pool(conn, name)
        conn.close()
        subprocess.run(["umount", str(workdir / "fs")], capture_output=True)  # if still there
        if loop:
            subprocess.run(["losetup", "-d", loop], check=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_storage_pools_from_the_read_only_connection(
    pools: dict[str, libvirt.virStoragePool], tmp_path: Path
) -> None:
    samples = dry_run(tmp_path, ["none-of-the-guests"], collect={"storage_pools": True})
    ours = {dict(lab)["pool"] for n, lab in samples if n.startswith("libvirt_storage_pool_")}
    assert {n for n in ours if n.startswith(PREFIX)} == {p.name() for p in pools.values()}
    for kind, pool in pools.items():
        labels = {"pool": pool.name(), "pool_uuid": pool.UUIDString(),
                  "pool_type": "fs" if kind == "fs" else "dir"}  # fmt: skip
        state = one(samples, "libvirt_storage_pool_state_code", **labels)
        if kind == "inactive":
            # Defined, not started: its state, and no figures (libvirt reports zeros).
            assert state == libvirt.VIR_STORAGE_POOL_INACTIVE
            assert len([1 for n, lab in samples if ("pool", pool.name()) in lab]) == 1
            continue
        assert state == libvirt.VIR_STORAGE_POOL_RUNNING
        # Every entry of the pool's directory is a volume to libvirt: the one made here, and
        # in the fs pool the lost+found that mkfs.ext4 leaves.
        entries = sorted(os.listdir(_target(pool)))
        assert entries == sorted({f"{kind}-vol.raw", *(["lost+found"] if kind == "fs" else [])})
        assert one(samples, "libvirt_storage_pool_volumes", **labels) == len(entries)
        capacity = one(samples, "libvirt_storage_pool_capacity_bytes", **labels)
        allocation = one(samples, "libvirt_storage_pool_allocation_bytes", **labels)
        available = one(samples, "libvirt_storage_pool_available_bytes", **labels)
        fs = os.statvfs(_target(pool))
        assert capacity == fs.f_blocks * fs.f_frsize
        assert allocation + available == capacity
        if kind == "fs":
            # A file system of its own that nothing else writes to: exactly what the kernel
            # says, the volume's 4 MiB included.
            assert available == fs.f_bfree * fs.f_frsize
            assert allocation >= VOLUME_BYTES
    # Off, as by default: no pool series at all.
    off = dry_run(tmp_path, ["none-of-the-guests"])
    assert not [n for n, _ in off if n.startswith("libvirt_storage_pool_")]


def test_pool_figures_are_libvirts_as_of_the_last_refresh(
    pools: dict[str, libvirt.virStoragePool], tmp_path: Path
) -> None:
    """The read-only connection cannot refresh a pool: a file put into a `dir` pool behind
    libvirt's back is no volume until something refreshes the pool."""
    pool = pools["dir"]
    extra = Path(_target(pool)) / "behind-libvirts-back.raw"
    extra.write_bytes(b"\0" * 4096)
    try:
        on = {"storage_pools": True}
        before = dry_run(tmp_path, ["none-of-the-guests"], collect=on)
        assert of(before, "libvirt_storage_pool_volumes", pool=pool.name())
        assert one(before, "libvirt_storage_pool_volumes", pool=pool.name()) == 1
        pool.refresh(0)  # what an operator's `virsh pool-refresh` does
        after = dry_run(tmp_path, ["none-of-the-guests"], collect=on)
        assert one(after, "libvirt_storage_pool_volumes", pool=pool.name()) == 2
    finally:
        extra.unlink()
        pool.refresh(0)


def _target(pool: libvirt.virStoragePool) -> str:
    return ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
