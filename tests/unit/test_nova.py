"""pusher.nova: Nova's <nova:instance> metadata parsed from libvirt domain XML."""

from __future__ import annotations

import time

import pytest

from pusher.nova import DomainInfo, NovaInstance, parse_domain_xml

UUID = "5d3c8a2e-1f4b-4c2a-9d1e-7a6b5c4d3e2f"
USER = "0f5e1c8d2b7a4e3f9c6d5b4a3e2f1d0c"
PROJECT = "9a8b7c6d5e4f43a2b1c0d9e8f7a6b5c4"
IMAGE = "c1a2b3c4-d5e6-4f70-8192-a3b4c5d6e7f8"
PORT = "e3f4a5b6-c7d8-4e9f-a0b1-c2d3e4f5a6b7"
FLAVOR_ID = "6b8e0d3c-2f4a-4b1e-9c7d-5a3e1f0b2d4c"


def nova_instance(version: str = "1.1", name: str = "web-1", *, owner: bool = True) -> str:
    """<nova:instance> as Nova (LibvirtConfigGuestMetaNovaInstance) writes it."""
    owner_xml = (
        f"""
      <nova:owner>
        <nova:user uuid="{USER}">alice</nova:user>
        <nova:project uuid="{PROJECT}">demo</nova:project>
      </nova:owner>"""
        if owner
        else ""
    )
    return f"""<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/{version}">
      <nova:package version="30.1.0"/>
      <nova:name>{name}</nova:name>
      <nova:creationTime>2026-11-20 10:00:00</nova:creationTime>
      <nova:flavor name="m1.small">
        <nova:memory>2048</nova:memory>
        <nova:disk>20</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
      </nova:flavor>{owner_xml}
      <nova:root type="image" uuid="{IMAGE}"/>
      <nova:ports>
        <nova:port uuid="{PORT}">
          <nova:ip type="fixed" address="10.0.0.5" ipVersion="4"/>
          <nova:ip type="fixed" address="fd00::5" ipVersion="6"/>
        </nova:port>
      </nova:ports>
    </nova:instance>"""


# Nova 2025.2: flavor id and extraSpecs, and the image element; same namespace version.
NOVA_2025_2 = f"""<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
  <nova:package version="32.0.0"/>
  <nova:name>db-primary</nova:name>
  <nova:creationTime>2026-11-20 10:00:00</nova:creationTime>
  <nova:flavor name="c4.large" id="{FLAVOR_ID}">
    <nova:memory>8192</nova:memory>
    <nova:disk>80</nova:disk>
    <nova:swap>1024</nova:swap>
    <nova:ephemeral>10</nova:ephemeral>
    <nova:vcpus>4</nova:vcpus>
    <nova:extraSpecs>
      <nova:extraSpec name="hw:cpu_policy">dedicated</nova:extraSpec>
      <nova:extraSpec name="hw:mem_page_size">large</nova:extraSpec>
    </nova:extraSpecs>
  </nova:flavor>
  <nova:image uuid="{IMAGE}">
    <nova:containerFormat>bare</nova:containerFormat>
    <nova:diskFormat>qcow2</nova:diskFormat>
    <nova:minDisk>0</nova:minDisk>
    <nova:minRam>0</nova:minRam>
  </nova:image>
  <nova:owner>
    <nova:user uuid="{USER}">alice</nova:user>
    <nova:project uuid="{PROJECT}">demo</nova:project>
  </nova:owner>
  <nova:root type="volume" uuid="{UUID}"/>
</nova:instance>"""


def domain_xml(metadata: str) -> str:
    """A full domain XML as `virsh dumpxml` / XMLDesc returns it for a running Nova guest."""
    return f"""<domain type='kvm' id='7'>
  <name>instance-0000002a</name>
  <uuid>{UUID}</uuid>
  <metadata>
    {metadata}
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <cputune>
    <shares>2048</shares>
  </cputune>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>OpenStack Foundation</entry>
      <entry name='product'>OpenStack Nova</entry>
      <entry name='serial'>{UUID}</entry>
      <entry name='uuid'>{UUID}</entry>
      <entry name='family'>Virtual Machine</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
    <smbios mode='sysinfo'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-model' check='partial'>
    <topology sockets='2' dies='1' cores='1' threads='1'/>
  </cpu>
  <clock offset='utc'>
    <timer name='pit' tickpolicy='delay'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/nova/instances/{UUID}/disk' index='2'/>
      <backingStore type='file' index='3'>
        <format type='raw'/>
        <source file='/var/lib/nova/instances/_base/a1b2c3'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <interface type='ethernet'>
      <mac address='fa:16:3e:11:22:33'/>
      <target dev='tap5d3c8a2e-1f' managed='no'/>
      <model type='virtio'/>
      <mtu size='1450'/>
      <alias name='net0'/>
    </interface>
    <memballoon model='virtio'>
      <stats period='10'/>
      <alias name='balloon0'/>
    </memballoon>
  </devices>
  <seclabel type='dynamic' model='apparmor' relabel='yes'>
    <label>libvirt-{UUID}</label>
  </seclabel>
</domain>
"""


OTHER_APP = """<app:instance xmlns:app="http://example.org/xmlns/other-app/1.0">
      <app:name>not-nova</app:name>
      <app:owner><app:user uuid="nobody">mallory</app:user></app:owner>
    </app:instance>"""


def parse_nova(xml: str) -> NovaInstance:
    info = parse_domain_xml(xml)
    assert info.problems == ()
    assert info.nova is not None
    return info.nova


# --- namespace versions ------------------------------------------------------------------


def test_namespace_1_1_is_read_completely() -> None:
    nova = parse_nova(domain_xml(nova_instance("1.1")))
    assert nova == NovaInstance(
        ns_version="1.1",
        package_version="30.1.0",
        name="web-1",
        creation_time="2026-11-20 10:00:00",
        flavor_name="m1.small",
        flavor_id="",
        memory_mib="2048",
        disk_gib="20",
        swap_mib="0",
        ephemeral_gib="0",
        vcpus="1",
        extra_specs=(),
        image_uuid="",
        user_name="alice",
        user_uuid=USER,
        project_name="demo",
        project_uuid=PROJECT,
        root_type="image",
        root_uuid=IMAGE,
        ports=((PORT, ("10.0.0.5", "fd00::5")),),
    )


def test_namespace_1_1_labels_follow_the_exporter_lineage() -> None:
    nova = parse_nova(domain_xml(nova_instance("1.1")))
    assert nova.labels() == {
        "instance_name": "web-1",
        "flavor": "m1.small",
        "user_name": "alice",
        "user_uuid": USER,
        "project_name": "demo",
        "project_uuid": PROJECT,
        "root_type": "image",
        "root_uuid": IMAGE,
    }


def test_namespace_1_0_of_older_guests_is_read() -> None:
    old = f"""<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.0">
      <nova:package version="14.0.0"/>
      <nova:name>legacy-vm</nova:name>
      <nova:creationTime>2017-03-01 08:15:42</nova:creationTime>
      <nova:flavor name="m1.tiny">
        <nova:memory>512</nova:memory>
        <nova:disk>1</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="{USER}">admin</nova:user>
        <nova:project uuid="{PROJECT}">admin</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="{IMAGE}"/>
    </nova:instance>"""
    nova = parse_nova(domain_xml(old))
    assert nova.ns_version == "1.0"
    assert (nova.name, nova.flavor_name, nova.memory_mib) == ("legacy-vm", "m1.tiny", "512")
    assert (nova.user_name, nova.project_uuid, nova.root_uuid) == ("admin", PROJECT, IMAGE)
    assert nova.ports == ()


def test_a_later_namespace_version_is_read_the_same_way() -> None:
    nova = parse_nova(domain_xml(nova_instance("1.2", name="future")))
    assert (nova.ns_version, nova.name, nova.project_name) == ("1.2", "future", "demo")


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        ("1.1", "1.2", "1.2"),
        ("1.2", "1.1", "1.2"),
        ("1.0", "1.1", "1.1"),
        ("1.1", "1.0", "1.1"),
        ("1.9", "1.10", "1.10"),  # versions compare as numbers, not as strings
        ("2.0", "1.10", "2.0"),
    ],
)
def test_newest_namespace_wins_when_two_are_present(first: str, second: str, winner: str) -> None:
    xml = domain_xml(
        nova_instance(first, name=f"from-{first}") + nova_instance(second, name=f"from-{second}")
    )
    nova = parse_nova(xml)
    assert (nova.ns_version, nova.name) == (winner, f"from-{winner}")


def test_a_non_numeric_namespace_version_loses_to_a_numbered_one() -> None:
    xml = domain_xml(nova_instance("1.1", name="numbered") + nova_instance("beta", name="beta"))
    assert parse_nova(xml).name == "numbered"


# --- Nova 2025.2 additions ---------------------------------------------------------------


def test_2025_2_flavor_id_extra_specs_and_image_are_read() -> None:
    nova = parse_nova(domain_xml(NOVA_2025_2))
    assert nova.flavor_id == FLAVOR_ID
    assert nova.extra_specs == (("hw:cpu_policy", "dedicated"), ("hw:mem_page_size", "large"))
    assert nova.image_uuid == IMAGE
    assert (nova.root_type, nova.root_uuid) == ("volume", UUID)
    assert (nova.memory_mib, nova.disk_gib, nova.swap_mib, nova.ephemeral_gib, nova.vcpus) == (
        "8192", "80", "1024", "10", "4",
    )  # fmt: skip
    labels = nova.labels()
    assert labels["flavor_id"] == FLAVOR_ID
    assert labels["image_uuid"] == IMAGE
    assert labels["flavor"] == "c4.large"


# --- missing and foreign metadata --------------------------------------------------------


def test_missing_owner_leaves_user_and_project_empty() -> None:
    nova = parse_nova(domain_xml(nova_instance(owner=False)))
    assert (nova.user_name, nova.user_uuid, nova.project_name, nova.project_uuid) == ("",) * 4
    assert nova.name == "web-1"
    labels = nova.labels()
    assert not {"user_name", "user_uuid", "project_name", "project_uuid"} & set(labels)
    assert labels["instance_name"] == "web-1"


def test_a_plain_guest_without_metadata_has_no_nova_and_no_problems() -> None:
    xml = """<domain type='qemu'>
  <name>plain</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <memory unit='KiB'>131072</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""
    assert parse_domain_xml(xml) == DomainInfo(nova=None, problems=())


def test_a_guest_with_only_another_apps_metadata_has_no_nova() -> None:
    info = parse_domain_xml(domain_xml(OTHER_APP))
    assert (info.nova, info.problems) == (None, ())


def test_nova_metadata_next_to_another_apps_metadata_is_found() -> None:
    for metadata in (OTHER_APP + nova_instance(), nova_instance() + OTHER_APP):
        nova = parse_nova(domain_xml(metadata))
        assert (nova.name, nova.user_name) == ("web-1", "alice")


def test_a_bare_nova_instance_element_is_parsed() -> None:
    nova = parse_nova(NOVA_2025_2)
    assert (nova.name, nova.flavor_id, nova.project_name) == ("db-primary", FLAVOR_ID, "demo")


def test_an_unprefixed_default_namespace_is_the_same_namespace() -> None:
    xml = """<instance xmlns="http://openstack.org/xmlns/libvirt/nova/1.1">
      <name>default-ns</name><flavor name="m1.nano"/></instance>"""
    nova = parse_nova(xml)
    assert (nova.name, nova.flavor_name) == ("default-ns", "m1.nano")


def test_an_empty_nova_instance_gives_empty_fields_and_no_labels() -> None:
    nova = parse_nova('<n:instance xmlns:n="http://openstack.org/xmlns/libvirt/nova/1.1"/>')
    assert nova == NovaInstance(ns_version="1.1")
    assert nova.labels() == {}


# --- text the XML escapes, and text that is not ASCII ------------------------------------


def test_escaped_and_non_ascii_names_are_decoded() -> None:
    name = "Ünïcødé-实例 &amp; &lt;prod&gt; &quot;ω&quot;"
    xml = domain_xml(nova_instance(name=name)).replace(
        'name="m1.small"', 'name="m1.small &amp; &lt;gpu&gt; &quot;ä&quot;"'
    )
    nova = parse_nova(xml)
    assert nova.name == 'Ünïcødé-实例 & <prod> "ω"'
    assert nova.flavor_name == 'm1.small & <gpu> "ä"'
    assert nova.labels()["instance_name"] == 'Ünïcødé-实例 & <prod> "ω"'


def test_character_references_are_decoded() -> None:
    nova = parse_nova(domain_xml(nova_instance(name="caf&#233; &#x1F600;")))
    assert nova.name == "café \U0001f600"


def test_an_xml_declaration_with_utf8_encoding_is_accepted() -> None:
    xml = '<?xml version="1.0" encoding="UTF-8"?>\n' + domain_xml(nova_instance(name="实例"))
    assert parse_nova(xml).name == "实例"


# --- broken and hostile input ------------------------------------------------------------


@pytest.mark.parametrize(
    "xml",
    [
        "",
        "not xml at all",
        "<domain><name>x</name>",
        "<domain><metadata></domain>",
        domain_xml(nova_instance())[:400],
        "<domain>\x00</domain>",
        "<domain><a></b></domain>",
        '<domain><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">'
        "<nova:name>x &bogus; y</nova:name></nova:instance></domain>",
    ],
)
def test_malformed_xml_reports_a_problem_and_does_not_raise(xml: str) -> None:
    info = parse_domain_xml(xml)
    assert info.nova is None
    assert len(info.problems) == 1
    assert info.problems[0]


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE domain [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<domain><metadata>
<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
  <nova:name>&lol9;</nova:name>
</nova:instance>
</metadata></domain>"""


def test_entity_expansion_attempt_is_refused_quickly() -> None:
    start = time.monotonic()
    info = parse_domain_xml(BILLION_LAUGHS)
    assert time.monotonic() - start < 0.5
    assert info.nova is None
    assert info.problems


def test_external_entity_is_not_resolved() -> None:
    xml = """<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>
<domain><metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
<nova:name>&xxe;</nova:name></nova:instance></metadata></domain>"""
    info = parse_domain_xml(xml)
    assert info.nova is None
    assert info.problems


def test_an_oversized_document_is_refused_without_parsing() -> None:
    padding = "<!-- " + "x" * (5 * 1024 * 1024) + " -->"
    info = parse_domain_xml(domain_xml(nova_instance() + padding))
    assert info.nova is None
    assert info.problems


def test_deeply_nested_xml_does_not_raise() -> None:
    depth = 100_000
    info = parse_domain_xml("<a>" * depth + "</a>" * depth)
    assert info.nova is None  # either parsed (no Nova) or refused with a problem
