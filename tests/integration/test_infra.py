"""Checks of the integration fixtures themselves, so a broken host fails here, plainly."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import requests
from guests import NOVA_NS, Guest, domstats

if TYPE_CHECKING:  # only for annotations: importing conftest at run time is fragile
    from conftest import Receiver

EXPECTED_STATS = ("block.0.rd.reqs", "net.0.rx.bytes", "balloon.current", "vcpu.0.time")


def virsh(uri: str, *args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", uri, *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def test_guests_run_with_stats_and_nova_metadata(libvirt_uri: str, guests: list[Guest]) -> None:
    assert len(guests) == 3
    assert len({g["project"] for g in guests}) == 2
    running = virsh(libvirt_uri, "list", "--name", "--state-running").split()
    stats = domstats(libvirt_uri, [g["name"] for g in guests])
    for guest in guests:
        name = guest["name"]
        assert name in running
        assert [k for k in EXPECTED_STATS if k not in stats[name]] == [], stats[name]
        # libvirt hands the metadata element back without its namespace prefix.
        meta = ET.fromstring(virsh(libvirt_uri, "metadata", name, NOVA_NS))
        assert meta.tag == "instance"
        assert meta.findtext("name") == guest["instance_name"]
        assert meta.find("flavor").get("name") == guest["flavor"]  # type: ignore[union-attr]
        assert meta.findtext("owner/project") == guest["project"]
        assert meta.find("owner/user").get("uuid") == guest["user_uuid"]  # type: ignore[union-attr]
        assert meta.find("ports/port/ip").get("address") == guest["ip"]  # type: ignore[union-attr]
        assert virsh(libvirt_uri, "domuuid", name).strip() == guest["uuid"]


def test_receiver_is_ready_and_empty(receiver: Receiver) -> None:
    assert requests.get(f"{receiver.base_url}/-/ready", timeout=5).status_code == 200
    # An empty body is not a valid WriteRequest: 400 shows the receiver endpoint is on (404 if not).
    assert requests.post(receiver.write_url, data=b"", timeout=5).status_code == 400
    assert receiver.query("up") == []
    assert receiver.series('{__name__=~".+"}') == []
