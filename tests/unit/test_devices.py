"""Per-device series read off the domain XML (`pusher.devices`), on literal XML as Nova and
libvirt write it, and their way through the planner: labels, limits, stale markers."""

from __future__ import annotations

import math

from pusher.catalog import LabelLimits
from pusher.collect import DomainStats, Snapshot
from pusher.devices import BLOCK_INFO, INTERFACE_INFO
from pusher.nova import parse_domain_xml
from pusher.series import Planner

PORT = "3f1a2b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"
VOLUME = "9e8d7c6b-5a49-4c3b-8d2e-1f0a9b8c7d6e"
EXT = (("cluster", "c1"), ("host", "h1"))

# A live Nova guest: an OVS port, a port on a libvirt network, a vhost-user port, a NIC with
# no target yet; a local qcow2 root disk, a Cinder volume on Ceph, the config drive.
DOMAIN = f"""<domain type='kvm' id='7'>
  <name>instance-0000002a</name>
  <uuid>5d3c8a2e-1f4b-4c2a-9d1e-7a6b5c4d3e2f</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap' io='native'/>
      <source file='/var/lib/nova/instances/5d3c8a2e/disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
      <source protocol='rbd' name='volumes/volume-{VOLUME}'/>
      <target dev='vdb' bus='virtio'/>
      <serial>{VOLUME}</serial>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='/var/lib/nova/instances/5d3c8a2e/disk.config'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <mac address='FA:16:3E:11:22:33'/>
      <source bridge='br-int'/>
      <virtualport type='openvswitch'>
        <parameters interfaceid='{PORT}'/>
      </virtualport>
      <target dev='tap3f1a2b4c-5d'/>
      <model type='virtio'/>
      <mtu size='1442'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='default' bridge='virbr0'/>
      <target dev='vnet3'/>
      <model type='e1000'/>
    </interface>
    <interface type='vhostuser'>
      <mac address='fa:16:3e:44:55:66'/>
      <source type='unix' path='/var/run/openvswitch/vhu0a1b2c3d-4e' mode='server'/>
      <target dev='vhu0a1b2c3d-4e'/>
      <model type='virtio'/>
    </interface>
    <interface type='ethernet'>
      <mac address='fa:16:3e:77:88:99'/>
    </interface>
  </devices>
</domain>"""


def info_by_target(xml: str = DOMAIN) -> dict[tuple[str, str], dict[str, str]]:
    out = {}
    for name, labels, value in parse_domain_xml(xml).devices:
        assert value == 1.0
        own = dict(labels)
        out[(name, own.pop("target_device"))] = own
    return out


def test_interfaces_are_described_as_the_xml_has_them() -> None:
    found = info_by_target()
    assert found[(INTERFACE_INFO, "tap3f1a2b4c-5d")] == {
        "interface_mac": "fa:16:3e:11:22:33",  # lower case, as the stats' tools print it
        "interface_model": "virtio",
        "interface_type": "bridge",
        "interface_source": "br-int",
        "interface_mtu": "1442",
        "port_id": PORT,  # the OVS interface id Nova set
    }
    # A libvirt network: the network's name, not its bridge.
    assert found[(INTERFACE_INFO, "vnet3")] == {
        "interface_mac": "52:54:00:aa:bb:cc", "interface_model": "e1000",
        "interface_type": "network", "interface_source": "default",
    }  # fmt: skip
    assert found[(INTERFACE_INFO, "vhu0a1b2c3d-4e")]["interface_source"] == (
        "/var/run/openvswitch/vhu0a1b2c3d-4e"
    )
    # The NIC with no target device could not be joined to its stats: left out.
    assert len([k for k in found if k[0] == INTERFACE_INFO]) == 3


def test_disks_are_described_as_the_xml_has_them() -> None:
    found = info_by_target()
    assert found[(BLOCK_INFO, "vda")] == {
        "disk_device": "disk", "disk_bus": "virtio", "disk_driver_type": "qcow2",
        "disk_cache": "none", "disk_discard": "unmap", "disk_io": "native",
        "disk_source_type": "file",
    }  # fmt: skip
    assert found[(BLOCK_INFO, "vdb")] == {
        "disk_device": "disk", "disk_bus": "virtio", "disk_driver_type": "raw",
        "disk_cache": "writeback", "disk_discard": "unmap", "disk_serial": VOLUME,
        "volume_id": VOLUME, "disk_source_type": "network",
    }  # fmt: skip
    assert found[(BLOCK_INFO, "sda")]["disk_device"] == "cdrom"
    assert found[(BLOCK_INFO, "sda")]["disk_bus"] == "sata"


def test_the_stats_series_of_an_ovs_port_carry_its_interface_id() -> None:
    info = parse_domain_xml(DOMAIN)
    assert info.labels_for("tap3f1a2b4c-5d") == (("port_id", PORT),)


def test_a_target_named_twice_gives_one_series() -> None:
    xml = (
        "<domain><devices><disk type='file'><target dev='vda' bus='virtio'/></disk>"
        "<disk type='block'><target dev='vda' bus='scsi'/></disk></devices></domain>"
    )
    assert info_by_target(xml) == {
        (BLOCK_INFO, "vda"): {"disk_bus": "virtio", "disk_source_type": "file"}
    }


def test_a_domain_without_devices_or_xml_has_no_device_series() -> None:
    assert parse_domain_xml("<domain><name>x</name></domain>").devices == ()
    assert parse_domain_xml("not xml").devices == ()


# --- through the planner ------------------------------------------------------------------


def domain(xml: str) -> DomainStats:
    stats = {"state.state": 1, "cpu.time": 1, "block.count": 1, "block.0.name": "vda",
             "block.0.rd.bytes": 5}  # fmt: skip
    return DomainStats("instance-0000002a", "u1", stats, parse_domain_xml(xml))


def info_series(planner: Planner, xml: str, ts: int = 1) -> dict[tuple[str, str], object]:
    cycle = planner.cycle(Snapshot(ts, [domain(xml)], 0.0, 0), frozenset(), ts)
    return {
        (key[0], dict(key[1]).get("target_device", "")): (key, value)
        for key, value in cycle.samples
        if key[0] in (INTERFACE_INFO, BLOCK_INFO)
    }


def test_device_series_carry_the_domain_labels_and_value_one() -> None:
    found = info_series(Planner((), EXT), DOMAIN)
    assert len(found) == 6
    (_, own, shared), value = found[(BLOCK_INFO, "vdb")]  # type: ignore[misc]
    assert value == 1.0
    assert dict(shared) == {"cluster": "c1", "host": "h1", "domain": "instance-0000002a",
                            "uuid": "u1"}  # fmt: skip
    assert dict(own)["volume_id"] == VOLUME


def test_dropped_labels_are_left_off_the_device_series() -> None:
    found = info_series(
        Planner((), EXT, drop=("disk_serial", "interface_mac", "volume_id")), DOMAIN
    )
    for key, _value in found.values():  # type: ignore[misc]
        assert not {"disk_serial", "interface_mac", "volume_id"} & {k for k, _ in key[1]}


def test_device_series_are_fitted_to_the_label_limit_keeping_the_target() -> None:
    limits = LabelLimits(max_names=8)  # __name__, 4 shared: room for 3 own labels
    found = info_series(Planner((), EXT, limits=limits), DOMAIN)
    own = dict(found[(BLOCK_INFO, "vda")][0][1])  # type: ignore[index]
    assert list(own) == [
        "disk_bus",
        "disk_device",
        "target_device",
    ]  # the first in the catalog's order
    assert limits.dropped > 0


def test_a_detached_device_gets_a_stale_marker_once() -> None:
    planner = Planner((), EXT)
    info_series(planner, DOMAIN, 1)
    detached = DOMAIN.replace("<target dev='vdb' bus='virtio'/>", "")  # vdb has no target now
    cycle = planner.cycle(Snapshot(2, [domain(detached)], 0.0, 0), frozenset(), 2)
    stale = [key for key, value in cycle.samples if math.isnan(value)]
    assert [(k[0], dict(k[1])["target_device"]) for k in stale] == [(BLOCK_INFO, "vdb")]
    cycle = planner.cycle(Snapshot(3, [domain(detached)], 0.0, 0), frozenset(), 3)
    assert not [key for key, value in cycle.samples if math.isnan(value)]


# --- I/O limits ------------------------------------------------------------------------------

IOTUNE_DISK = """<domain><devices><disk type='network' device='disk'>
  <driver name='qemu' type='raw' cache='none'/>
  <target dev='vdb' bus='virtio'/>
  <iotune>
    <total_bytes_sec>10485760</total_bytes_sec>
    <read_iops_sec>500</read_iops_sec>
    <write_iops_sec>0</write_iops_sec>
    <total_iops_sec_max>2000</total_iops_sec_max>
    <total_iops_sec_max_length>60</total_iops_sec_max_length>
    <size_iops_sec>4096</size_iops_sec>
    <group_name>gold</group_name>
  </iotune>
</disk></devices></domain>"""


def iotune_values(xml: str) -> dict[str, float]:
    return {
        name.removeprefix("libvirt_domain_block_iotune_"): value
        for name, labels, value in parse_domain_xml(xml).devices
        if "iotune" in name and labels == (("target_device", "vdb"),)
    }


def test_io_limits_become_gauges_in_the_units_libvirt_has_them() -> None:
    assert iotune_values(IOTUNE_DISK) == {
        "total_bytes_per_second": 10485760.0,
        "read_iops": 500.0,  # write_iops_sec 0: no limit, no series
        "burst_total_iops": 2000.0,
        "burst_total_iops_length_seconds": 60.0,
        "iops_size_bytes": 4096.0,
    }
    (info,) = [labels for name, labels, _ in parse_domain_xml(IOTUNE_DISK).devices
               if name == BLOCK_INFO]  # fmt: skip
    assert dict(info)["disk_iotune_group"] == "gold"


def test_every_io_limit_has_a_gauge_in_the_catalog() -> None:
    from pusher import catalog
    from pusher.devices import IOTUNE

    assert len(IOTUNE) == 19  # 3 operations x (bytes, iops) x (limit, burst, burst length) + size
    for element, name in IOTUNE.items():
        m = catalog.by_name(name)
        assert (m.type, m.labels) == ("gauge", ("target_device",))
        assert element in m.help
        assert m.unit == ("seconds" if element.endswith("_length") else
                          "bytes_per_second" if "bytes_sec" in element else
                          "bytes" if element == "size_iops_sec" else "")  # fmt: skip


def test_odd_limits_are_left_out() -> None:
    for odd in ("abc", "-5", "1e6", "", " ", "99999999999999999999999", "٣"):
        xml = IOTUNE_DISK.replace(">10485760<", f">{odd}<")
        assert "total_bytes_per_second" not in iotune_values(xml), odd
    # Whitespace around a number is XML formatting, not another value.
    assert iotune_values(IOTUNE_DISK.replace(">500<", "> 500\n<"))["read_iops"] == 500.0
