"""Real QEMU test guests shaped like Nova's: domain XML with Nova metadata, create and destroy.

The guests have no OS: they sit in their BIOS, which is enough for libvirt to report real cpu,
vcpu, block, net and balloon stats (REFERENCE.md §8). TCG (`type='qemu'`), so KVM is optional.
"""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypedDict
from xml.sax.saxutils import escape, quoteattr

import libvirt

NOVA_NS_PREFIX = "http://openstack.org/xmlns/libvirt/nova/"
NOVA_NS = NOVA_NS_PREFIX + "1.1"
# Runs side by side on one libvirtd (several checkouts of the project) keep apart by this
# offset; a run creates and removes only the domains in its own range.
GUEST_OFFSET = int(os.environ.get("PUSHER_TEST_GUEST_OFFSET", "0"), 0)
DOMAIN_BASE = 0xA000 + GUEST_OFFSET  # instance-0000a001, … keep clear of real Nova ids
IMAGE_SIZE = "64M"
# Debian's cloud kernel and busybox, unpacked by scripts/setup-host.sh, for the one guest that
# boots (`create_booted_guest`).
KERNEL_DIR = Path(
    os.environ.get("PUSHER_TEST_KERNEL_DIR", "/var/cache/libvirt-pusher-tests/kernel")
)
# virtio_balloon and what it needs, in load order.
BALLOON_MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                   "virtio_pci", "virtio_balloon")  # fmt: skip

# libvirt-python prints every error to stderr besides raising it; the exception is enough.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class Guest(TypedDict):
    name: str  # libvirt domain name, instance-XXXXXXXX
    uuid: str  # domain UUID == Nova instance UUID
    instance_name: str  # nova:name
    project: str
    project_uuid: str
    user: str
    user_uuid: str
    flavor: str
    flavor_id: str
    image_uuid: str
    tap: str
    port_uuid: str
    volume_id: str  # the Cinder volume attached as vdb
    ip: str
    disks: list[str]  # image paths, vda first


def nova_metadata_xml(
    name: str,
    uuid: str,
    project: str,
    user: str,
    flavor: str,
    *,
    project_uuid: str,
    user_uuid: str,
    flavor_id: str | None = None,
    image_uuid: str | None = None,
    memory_mib: int = 64,
    vcpus: int = 2,
    disk_gib: int = 1,
    extra_specs: dict[str, str] | None = None,
    port_uuid: str | None = None,
    ip: str = "10.0.0.5",
    creation_time: str = "2026-11-20 10:00:00",
    ns_version: str = "1.1",
) -> str:
    """A `<nova:instance>` element as Nova writes it (REFERENCE.md §5).

    `uuid` is the instance UUID; it stands in for the root's uuid when there is no image.
    `flavor_id` and `image_uuid` (Nova 2025.2+) are left out when None, and the ports
    element exists only in namespace 1.1, as with real guests of older Nova releases.
    """
    specs = "".join(
        f"<nova:extraSpec name={quoteattr(k)}>{escape(v)}</nova:extraSpec>"
        for k, v in (extra_specs or {}).items()
    )
    flavor_id_attr = f" id={quoteattr(flavor_id)}" if flavor_id else ""
    # Only the image's uuid attribute is meant to be read; the children are Glance's fields.
    image = (
        f'<nova:image uuid="{image_uuid}"><nova:containerFormat>bare</nova:containerFormat>'
        "<nova:diskFormat>qcow2</nova:diskFormat><nova:minDisk>1</nova:minDisk>"
        "<nova:minRam>0</nova:minRam></nova:image>"
        if image_uuid
        else ""
    )
    ports = (
        f'<nova:ports><nova:port uuid="{port_uuid or uuid_str()}">'
        f'<nova:ip type="fixed" address="{ip}" ipVersion="4"/></nova:port></nova:ports>'
        if ns_version == "1.1"
        else ""
    )
    return (
        f'<nova:instance xmlns:nova="{NOVA_NS_PREFIX}{ns_version}">'
        '<nova:package version="32.0.0"/>'
        f"<nova:name>{escape(name)}</nova:name>"
        f"<nova:creationTime>{creation_time}</nova:creationTime>"
        f"<nova:flavor name={quoteattr(flavor)}{flavor_id_attr}>"
        f"<nova:memory>{memory_mib}</nova:memory><nova:disk>{disk_gib}</nova:disk>"
        f"<nova:swap>0</nova:swap><nova:ephemeral>0</nova:ephemeral>"
        f"<nova:vcpus>{vcpus}</nova:vcpus>"
        f"<nova:extraSpecs>{specs}</nova:extraSpecs>"
        "</nova:flavor>"
        f"{image}"
        "<nova:owner>"
        f'<nova:user uuid="{user_uuid}">{escape(user)}</nova:user>'
        f'<nova:project uuid="{project_uuid}">{escape(project)}</nova:project>'
        "</nova:owner>"
        f'<nova:root type="image" uuid="{image_uuid or uuid}"/>'
        f"{ports}"
        "</nova:instance>"
    )


def domain_xml(
    name: str,
    uuid: str,
    nova_xml: str,
    disk_paths: list[str],
    tap_name: str,
    memory_mib: int = 64,
    vcpus: int = 2,
    serials: dict[int, str] | None = None,
) -> str:
    """A TCG domain with Nova metadata, virtio disks vda, vdb, … and one unmanaged-network NIC.

    `serials` gives disks (by index) a serial, as Nova does for Cinder volumes (the volume id).
    """
    serials = serials or {}
    disks = "".join(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file={quoteattr(path)}/><target dev='vd{chr(ord('a') + i)}' bus='virtio'/>"
        + (f"<serial>{escape(serials[i])}</serial>" if i in serials else "")
        + "</disk>"
        for i, path in enumerate(disk_paths)
    )
    # type='ethernet' with a managed tap needs no bridge or dnsmasq; libvirt creates the tap.
    # The stats period is set as Nova does; with no OS there is no balloon driver in the guest,
    # so only the host-side balloon.{current,maximum,rss} (and last-update=0) are reported.
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>{nova_xml}</metadata>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_crash>destroy</on_crash>
  <devices>
    {disks}
    <interface type='ethernet'>
      <target dev='{tap_name}' managed='yes'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'/>
    <memballoon model='virtio'><stats period='5'/></memballoon>
  </devices>
</domain>"""


def uuid_str() -> str:
    return str(uuid.uuid4())


def create_guests(
    conn_uri: str, workdir: Path, count: int, prefix: str = "pusher-test", base: int = DOMAIN_BASE
) -> list[Guest]:
    """Defines and starts `count` guests named instance-{base+1:08x}, … (Nova names prefix-1, …).

    Guests alternate between two projects and share one user. Same-named leftovers of an earlier
    crashed run are removed first. `workdir` must be reachable by the qemu user (libvirt chowns
    the images, not their directories), so it is made world-traversable here.
    """
    names = [f"instance-{base + i:08x}" for i in range(1, count + 1)]
    destroy_guests(conn_uri, names)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    projects = [("demo", uuid_str()), ("ops", uuid_str())]
    user, user_uuid = "alice", uuid_str()
    guests: list[Guest] = []
    conn = libvirt.open(conn_uri)
    try:
        for i, name in enumerate(names, start=1):
            project, project_uuid = projects[(i - 1) % len(projects)]
            instance_uuid, port_uuid = uuid_str(), uuid_str()
            guest = Guest(
                name=name,
                uuid=instance_uuid,
                instance_name=f"{prefix}-{i}",
                project=project,
                project_uuid=project_uuid,
                user=user,
                user_uuid=user_uuid,
                flavor="m1.tiny",
                flavor_id=uuid_str(),
                image_uuid=uuid_str(),
                tap=f"tap{port_uuid[:11]}",  # Nova's tap naming; fits IFNAMSIZ (15)
                port_uuid=port_uuid,
                volume_id=uuid_str(),
                ip=f"10.0.0.{10 + i}",
                disks=[str(workdir / f"{name}-{dev}.qcow2") for dev in ("vda", "vdb")],
            )
            for path in guest["disks"]:
                subprocess.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", path, IMAGE_SIZE],
                    check=True,
                    timeout=30,
                )
            nova = nova_metadata_xml(
                guest["instance_name"],
                instance_uuid,
                project,
                user,
                guest["flavor"],
                project_uuid=project_uuid,
                user_uuid=user_uuid,
                flavor_id=guest["flavor_id"],
                image_uuid=guest["image_uuid"],
                extra_specs={"hw:mem_page_size": "small"},
                port_uuid=port_uuid,
                ip=guest["ip"],
            )
            xml = domain_xml(name, instance_uuid, nova, guest["disks"], guest["tap"],
                             serials={1: guest["volume_id"]})  # fmt: skip
            conn.defineXML(xml).create()
            guests.append(guest)
    except BaseException:
        destroy_guests(conn_uri, names)
        raise
    finally:
        conn.close()
    return guests


def destroy_guests(conn_uri: str, names: Iterable[str]) -> None:
    """Stops and undefines the named domains, if they exist, and deletes their disk images."""
    conn = libvirt.open(conn_uri)
    try:
        # A destroy returns only once QEMU is reaped, and QEMU's parent is PID 1, which in some
        # sandboxes reaps only every second or two: destroy all guests at once.
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda name: _remove_domain(conn, name), names))
    finally:
        conn.close()


def _remove_domain(conn: libvirt.virConnect, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return  # not there: nothing to do
    disks = [
        src.get("file", "") for src in ET.fromstring(dom.XMLDesc()).iterfind("devices/disk/source")
    ]
    persistent = dom.isPersistent()  # a transient guest is gone once destroyed
    if dom.isActive():
        dom.destroy()
    if persistent:
        dom.undefine()
    for path in disks:
        if path and os.path.exists(path):
            os.unlink(path)


def domstats(conn_uri: str, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """`virsh domstats --raw` for the named domains: {domain: {key: value}}."""
    out = subprocess.run(
        ["virsh", "-c", conn_uri, "domstats", "--raw", *names],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    stats: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Domain: "):
            current = stats.setdefault(line.removeprefix("Domain: ").strip("'"), {})
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key] = value
    return stats


# --- a guest that boots: a kernel whose balloon driver reports the guest's memory ----------------


def newc_archive(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as initramfs: path -> (mode, data);
    directories (mode with S_IFDIR) come before what they hold."""
    out = bytearray()
    entries = [*files.items(), ("TRAILER!!!", (0, b""))]
    for ino, (path, (mode, data)) in enumerate(entries, start=1):
        name = path.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0)
        out += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + name
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


BALLOON_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
for m in {modules}; do /bin/busybox insmod /mod/$m.ko; done
while true; do /bin/busybox sleep 3600; done
"""


def balloon_boot_files(workdir: Path) -> tuple[Path, Path]:
    """The kernel and an initramfs (written to `workdir`) that loads the balloon driver and
    idles: the guest's memory figures come from a real Linux."""
    kernels = sorted(KERNEL_DIR.glob("boot/vmlinuz-*"))
    modules = sorted(KERNEL_DIR.glob("lib/modules/*/kernel/drivers/virtio"))
    if not (kernels and modules and (KERNEL_DIR / "bin" / "busybox").exists()):
        raise FileNotFoundError(f"no kernel and busybox in {KERNEL_DIR}: run scripts/setup-host.sh")
    directory = stat.S_IFDIR | 0o755
    files: dict[str, tuple[int, bytes]] = {d: (directory, b"") for d in ("bin", "mod", "proc")}
    files["bin/busybox"] = (stat.S_IFREG | 0o755, (KERNEL_DIR / "bin" / "busybox").read_bytes())
    for name in BALLOON_MODULES:
        files[f"mod/{name}.ko"] = (stat.S_IFREG | 0o644, (modules[-1] / f"{name}.ko").read_bytes())
    init = BALLOON_INIT.format(modules=" ".join(BALLOON_MODULES))
    files["init"] = (stat.S_IFREG | 0o755, init.encode())
    kernel, initrd = workdir / "vmlinuz", workdir / "initrd.img"
    kernel.write_bytes(kernels[-1].read_bytes())
    initrd.write_bytes(gzip.compress(newc_archive(files), 1))
    for path in (kernel, initrd):
        path.chmod(0o644)
    return kernel, initrd


def create_booted_guest(conn_uri: str, workdir: Path, name: str) -> str:
    """Starts a transient guest (no disk, no NIC) that boots `balloon_boot_files` with a
    balloon stats period of 1 s; returns its UUID. A same-named leftover is removed first."""
    destroy_guests(conn_uri, [name])
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    kernel, initrd = balloon_boot_files(workdir)
    instance_uuid = uuid_str()
    nova = nova_metadata_xml(
        f"{name}-booted", instance_uuid, "demo", "alice", "m1.tiny",
        project_uuid=uuid_str(), user_uuid=uuid_str(), memory_mib=128,
    )  # fmt: skip
    xml = f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{instance_uuid}</uuid>
  <metadata>{nova}</metadata>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd><cmdline>console=ttyS0 quiet</cmdline></os>
  <devices>
    <serial type='pty'/>
    <memballoon model='virtio'><stats period='1'/></memballoon>
  </devices>
</domain>"""
    conn = libvirt.open(conn_uri)
    try:
        conn.createXML(xml, 0)
    finally:
        conn.close()
    return instance_uuid
