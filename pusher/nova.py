"""Nova's instance metadata, read from a libvirt domain's XML.

Nova writes a `<nova:instance>` element into `<metadata>` of every guest it defines, in the
namespace `http://openstack.org/xmlns/libvirt/nova/<version>` (1.0 on old guests, 1.1 today;
a later version is read the same way). The parser is pure and never raises on odd input: a
guest whose metadata is missing or unreadable is still exported, just without Nova labels.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from pusher.devices import DeviceSeries, device_series

__all__ = ["NOVA_NS_PREFIX", "DomainInfo", "NovaInstance", "parse_domain_xml"]

NOVA_NS_PREFIX = "http://openstack.org/xmlns/libvirt/nova/"
_VERSION = re.compile(r"^(\d+)\.(\d+)$")
# Documents larger than this are not Nova-generated domain XML; refuse to parse them.
MAX_XML_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class NovaInstance:
    """The fields of `<nova:instance>`; empty strings where Nova wrote nothing."""

    ns_version: str = ""
    package_version: str = ""
    name: str = ""
    creation_time: str = ""
    flavor_name: str = ""
    flavor_id: str = ""
    memory_mib: str = ""
    disk_gib: str = ""
    swap_mib: str = ""
    ephemeral_gib: str = ""
    vcpus: str = ""
    extra_specs: tuple[tuple[str, str], ...] = ()
    image_uuid: str = ""
    user_name: str = ""
    user_uuid: str = ""
    project_name: str = ""
    project_uuid: str = ""
    root_type: str = ""
    root_uuid: str = ""
    # (port uuid, (ip address, ...))
    ports: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def labels(self) -> dict[str, str]:
        """Label name -> value for every non-empty field a label exists for."""
        pairs = {
            "instance_name": self.name,
            "flavor": self.flavor_name,
            "flavor_id": self.flavor_id,
            "user_name": self.user_name,
            "user_uuid": self.user_uuid,
            "project_name": self.project_name,
            "project_uuid": self.project_uuid,
            "root_type": self.root_type,
            "root_uuid": self.root_uuid,
            "image_uuid": self.image_uuid,
        }
        return {k: v for k, v in pairs.items() if v}


@dataclass(frozen=True)
class DomainInfo:
    """What the agent keeps of one domain's XML."""

    nova: NovaInstance | None = None
    # Why parts of the XML could not be read (logged once per domain by the caller).
    problems: tuple[str, ...] = ()
    # target device -> extra labels for its series: the Neutron port of a tap device
    # (`port_id`), the Cinder volume behind a disk (`volume_id`, from the disk's serial).
    device_labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    # The series read off the XML's devices (`pusher.devices`): NIC and disk info.
    devices: tuple[DeviceSeries, ...] = ()

    def labels_for(self, target: str) -> tuple[tuple[str, str], ...]:
        for dev, labels in self.device_labels:
            if dev == target:
                return labels
        return ()


def _local(tag: str) -> tuple[str, str]:
    """'{ns}name' -> (ns, name)."""
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _text(el: ET.Element | None) -> str:
    if el is None or el.text is None:
        return ""
    return el.text.strip()


def _attr(el: ET.Element | None, name: str) -> str:
    """An attribute's value without surrounding whitespace; "" when the element is missing."""
    return "" if el is None else el.get(name, "").strip()


def _version_key(ns: str) -> tuple[int, int]:
    m = _VERSION.match(ns[len(NOVA_NS_PREFIX) :])
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def _parse_instance(inst: ET.Element, ns: str) -> NovaInstance:
    def child(parent: ET.Element | None, name: str) -> ET.Element | None:
        return None if parent is None else parent.find(f"{{{ns}}}{name}")

    flavor = child(inst, "flavor")
    owner = child(inst, "owner")
    user = child(owner, "user")
    project = child(owner, "project")
    root = child(inst, "root")
    image = child(inst, "image")
    package = child(inst, "package")
    specs: list[tuple[str, str]] = []
    extra = child(flavor, "extraSpecs")
    if extra is not None:
        for spec in extra.findall(f"{{{ns}}}extraSpec"):
            specs.append((spec.get("name", ""), _text(spec)))
    ports: list[tuple[str, tuple[str, ...]]] = []
    ports_el = child(inst, "ports")
    if ports_el is not None:
        for port in ports_el.findall(f"{{{ns}}}port"):
            ips = (_attr(ip, "address") for ip in port.findall(f"{{{ns}}}ip"))
            ports.append((_attr(port, "uuid"), tuple(i for i in ips if i)))
    return NovaInstance(
        ns_version=ns[len(NOVA_NS_PREFIX) :],
        package_version=(package.get("version", "") if package is not None else ""),
        name=_text(child(inst, "name")),
        creation_time=_text(child(inst, "creationTime")),
        flavor_name=_attr(flavor, "name"),
        flavor_id=_attr(flavor, "id"),
        memory_mib=_text(child(flavor, "memory")),
        disk_gib=_text(child(flavor, "disk")),
        swap_mib=_text(child(flavor, "swap")),
        ephemeral_gib=_text(child(flavor, "ephemeral")),
        vcpus=_text(child(flavor, "vcpus")),
        extra_specs=tuple(specs),
        image_uuid=_attr(image, "uuid"),
        user_name=_text(user),
        user_uuid=_attr(user, "uuid"),
        project_name=_text(project),
        project_uuid=_attr(project, "uuid"),
        root_type=_attr(root, "type"),
        root_uuid=_attr(root, "uuid"),
        ports=tuple(ports),
    )


def find_instance(root: ET.Element) -> tuple[ET.Element, str] | None:
    """The newest-version `<nova:instance>` under `root` (a domain or the element itself)."""
    candidates: list[tuple[ET.Element, str]] = []
    for el in root.iter():
        ns, name = _local(el.tag)
        if name == "instance" and ns.startswith(NOVA_NS_PREFIX):
            candidates.append((el, ns))
    if not candidates:
        return None
    return max(candidates, key=lambda c: _version_key(c[1]))


def parse_domain_xml(xml: str) -> DomainInfo:
    """Parse a domain's XML (from XMLDesc) or a bare `<nova:instance>` element.

    Never raises: what cannot be read is reported in `problems` and left out.
    """
    if len(xml) > MAX_XML_BYTES:
        return DomainInfo(problems=("domain XML larger than 4 MiB",))
    # libvirt never emits a DTD; one here can only be an entity-expansion attempt.
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        return DomainInfo(problems=("domain XML carries a DTD",))
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError) as e:
        return DomainInfo(problems=(f"domain XML does not parse: {e}",))
    except RecursionError:
        return DomainInfo(problems=("domain XML nested too deeply",))
    found = find_instance(root)
    nova = _parse_instance(*found) if found is not None else None
    labels = _device_labels(root, nova)
    devices = device_series(root, {dev: dict(pairs) for dev, pairs in labels})
    return DomainInfo(nova=nova, device_labels=labels, devices=devices)


def _device_labels(
    root: ET.Element, nova: NovaInstance | None
) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    out: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        serial = _text(disk.find("serial"))
        if target is not None and target.get("dev") and serial:
            out.append((target.get("dev", ""), (("volume_id", serial[:256]),)))
    ports = [uuid for uuid, _ in nova.ports if uuid] if nova is not None else []
    for iface in root.iterfind("devices/interface"):
        target = iface.find("target")
        dev = target.get("dev", "") if target is not None else ""
        # Nova plugs an Open vSwitch port with the Neutron port's id as its interface id.
        params = iface.find("virtualport/parameters")
        interface_id = _attr(params, "interfaceid")
        if dev and interface_id:
            out.append((dev, (("port_id", interface_id[:256]),)))
        # Otherwise: Nova names a port's tap device "tap" + the first 11 characters of its id.
        elif dev.startswith("tap") and len(dev) > 3:
            match = [p for p in ports if p.startswith(dev[3:])]
            if len(match) == 1:
                out.append((dev, (("port_id", match[0]),)))
    return tuple(out)
