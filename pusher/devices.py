"""A domain's devices as its XML describes them: one info series per NIC and disk, and the
I/O limits of each disk.

Read from the domain XML the agent already caches (`DomainInfoCache`), so these series cost no
libvirt call: they change when the XML does. Each is a `DeviceSeries` (metric name, own
labels, value); `series.py` puts the domain's labels on them. The functions are pure and never
raise on odd XML: a device without a target name is left out (its series could not be joined
to its stats), an attribute that is missing gives no label.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

__all__ = [
    "BLOCK_INFO",
    "INTERFACE_INFO",
    "IOTUNE",
    "DeviceSeries",
    "device_series",
]

# (metric name, own labels as (name, value) in any order, value)
DeviceSeries = tuple[str, tuple[tuple[str, str], ...], float]

INTERFACE_INFO = "libvirt_domain_interface_info"
BLOCK_INFO = "libvirt_domain_block_info"
_IOTUNE = "libvirt_domain_block_iotune_"
# <iotune> element -> its gauge: the limits a disk is throttled to (Nova sets them from the
# flavor's quota:disk_* extra specs, Cinder from a front-end QoS spec). Zero or absent: none.
IOTUNE: dict[str, str] = {"size_iops_sec": f"{_IOTUNE}iops_size_bytes"}
for _op in ("total", "read", "write"):
    IOTUNE |= {
        f"{_op}_bytes_sec": f"{_IOTUNE}{_op}_bytes_per_second",
        f"{_op}_iops_sec": f"{_IOTUNE}{_op}_iops",
        f"{_op}_bytes_sec_max": f"{_IOTUNE}burst_{_op}_bytes_per_second",
        f"{_op}_iops_sec_max": f"{_IOTUNE}burst_{_op}_iops",
        f"{_op}_bytes_sec_max_length": f"{_IOTUNE}burst_{_op}_bytes_length_seconds",
        f"{_op}_iops_sec_max_length": f"{_IOTUNE}burst_{_op}_iops_length_seconds",
    }
# A limit is a whole number (libvirt takes unsigned long long); larger is no limit of ours.
MAX_LIMIT = 2**63
# Longest label value read from the XML; the label limits cut longer ones again later.
MAX_VALUE = 256


def _get(el: ET.Element | None, attr: str) -> str:
    if el is None:
        return ""
    return (el.get(attr) or "").strip()[:MAX_VALUE]


def _text(el: ET.Element | None) -> str:
    if el is None or el.text is None:
        return ""
    return el.text.strip()[:MAX_VALUE]


def _labels(pairs: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in pairs.items() if v)


def _interface_source(iface: ET.Element) -> str:
    """What the NIC is plugged into: the libvirt network (whose bridge a live XML names
    too), bridge or host device it names, or the socket of a vhost-user port."""
    source = iface.find("source")
    for attr in ("network", "bridge", "dev", "path"):
        value = _get(source, attr)
        if value:
            return value
    return ""


def interface_info(iface: ET.Element, port_id: str) -> DeviceSeries | None:
    target = _get(iface.find("target"), "dev")
    if not target:
        return None
    labels = {
        "target_device": target,
        "interface_mac": _get(iface.find("mac"), "address").lower(),
        "interface_model": _get(iface.find("model"), "type"),
        "interface_type": _get(iface, "type"),
        "interface_source": _interface_source(iface),
        "interface_mtu": _get(iface.find("mtu"), "size"),
        "port_id": port_id,
    }
    return (INTERFACE_INFO, _labels(labels), 1.0)


def disk_info(disk: ET.Element, volume_id: str) -> DeviceSeries | None:
    target_el = disk.find("target")
    target = _get(target_el, "dev")
    if not target:
        return None
    driver = disk.find("driver")
    labels = {
        "target_device": target,
        "disk_device": _get(disk, "device"),
        "disk_bus": _get(target_el, "bus"),
        "disk_driver_type": _get(driver, "type"),
        "disk_cache": _get(driver, "cache"),
        "disk_discard": _get(driver, "discard"),
        "disk_io": _get(driver, "io"),
        "disk_serial": _text(disk.find("serial")),
        "volume_id": volume_id,
        "disk_source_type": _get(disk, "type"),
        "disk_iotune_group": _text(disk.find("iotune/group_name")),
    }
    return (BLOCK_INFO, _labels(labels), 1.0)


def iotune(disk: ET.Element) -> list[DeviceSeries]:
    """The disk's I/O limits (`<iotune>`), one gauge each, in bytes, operations and
    seconds as libvirt has them; values that are no whole number above zero are left out."""
    target = _get(disk.find("target"), "dev")
    tune = disk.find("iotune")
    if not target or tune is None:
        return []
    out: list[DeviceSeries] = []
    for element, metric in IOTUNE.items():
        text = _text(tune.find(element))
        if text.isascii() and text.isdigit() and 0 < int(text) < MAX_LIMIT:
            out.append((metric, (("target_device", target),), float(int(text))))
    return out


def device_series(root: ET.Element, extra: dict[str, dict[str, str]]) -> tuple[DeviceSeries, ...]:
    """The info series of a domain's NICs and disks. `extra` gives, by target device, the
    labels worked out elsewhere (the Neutron port behind a tap, the Cinder volume behind a
    disk). A target named twice keeps its first device: series must not repeat."""
    out: list[DeviceSeries] = []
    seen: set[tuple[str, str]] = set()
    found: list[DeviceSeries | None] = []
    for iface in root.iterfind("devices/interface"):
        target = _get(iface.find("target"), "dev")
        found.append(interface_info(iface, extra.get(target, {}).get("port_id", "")))
    for disk in root.iterfind("devices/disk"):
        target = _get(disk.find("target"), "dev")
        found.append(disk_info(disk, extra.get(target, {}).get("volume_id", "")))
        found.extend(iotune(disk))
    for series in found:
        if series is None:
            continue
        key = (series[0], dict(series[1])["target_device"])
        if key not in seen:
            seen.add(key)
            out.append(series)
    return tuple(out)
