"""Guests that come, go and change under a running agent: stale markers and Nova renames."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from agent import AgentProcess, run_once, wait_for, write_config
from guests import (
    GUEST_OFFSET,
    NOVA_NS,
    Guest,
    create_guests,
    destroy_guests,
    nova_metadata_xml,
)
from receiver import Receiver


def test_destroyed_guest_gets_stale_markers_so_its_series_vanish_at_once(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path, libvirt_uri: str
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pusher-churn-"))
    (extra,) = create_guests(
        libvirt_uri, workdir, 1, prefix="pusher-churn", base=GUEST_OFFSET + 0xB000
    )
    agent = AgentProcess(write_config(tmp_path, fresh_receiver.write_url), tmp_path / "a.log")
    selector = f'{{__name__=~"libvirt_domain_.+", domain="{extra["name"]}"}}'
    try:
        wait_for(lambda: fresh_receiver.query(selector), 20, "the extra guest's series")
        before = len(fresh_receiver.query(selector))
        destroy_guests(libvirt_uri, [extra["name"]])
        gone_at = time.time()
        # Without stale markers Prometheus would go on returning the last values for 5 min.
        wait_for(lambda: not fresh_receiver.query(selector), 10, "the series to go stale")
        assert time.time() - gone_at < 5
        # The other guests are unaffected.
        still = fresh_receiver.query(f'libvirt_domain_state_code{{domain="{guests[0]["name"]}"}}')
        assert still
    finally:
        destroy_guests(libvirt_uri, [extra["name"]])
        assert agent.stop() == 0, agent.log()
    assert before > 30
    assert "Traceback" not in agent.log()


def test_5000_character_instance_name_never_reaches_the_wire_longer_than_the_limit(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path, libvirt_uri: str
) -> None:
    g = guests[0]
    huge = "ü" + "x" * 4999  # a multi-byte character first: the cut must keep UTF-8 whole
    _set_nova_metadata(libvirt_uri, g, huge)
    try:
        config = write_config(tmp_path, fresh_receiver.write_url)
        result = run_once(config, "--once")
        assert result.returncode == 0, result.stderr
    finally:
        _set_nova_metadata(libvirt_uri, g, g["instance_name"])
    series = fresh_receiver.query(f'{{__name__=~"libvirt_domain_.+", uuid="{g["uuid"]}"}}')
    assert len(series) > 30
    for s in series:
        name = s["metric"]["instance_name"]
        assert len(name.encode()) <= 2048 and name.startswith("ü" + "x" * 100)
    truncated = fresh_receiver.query("pusher_labels_truncated_total")
    assert float(truncated[0]["value"][1]) >= 1


def _set_nova_metadata(libvirt_uri: str, g: Guest, name: str) -> None:
    xml = nova_metadata_xml(
        name, g["uuid"], g["project"], g["user"], g["flavor"],
        project_uuid=g["project_uuid"], user_uuid=g["user_uuid"],
        flavor_id=g["flavor_id"], image_uuid=g["image_uuid"],
    )  # fmt: skip
    # virsh wants the element without its prefix and declaration; libvirt adds both (`--key`).
    xml = (
        xml.replace(f' xmlns:nova="{NOVA_NS}"', "").replace("<nova:", "<").replace("</nova:", "</")
    )
    subprocess.run(
        ["virsh", "-c", libvirt_uri, "metadata", g["name"], "--uri", NOVA_NS, "--key", "nova",
         "--set", xml, "--live", "--config"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def test_nova_rename_shows_in_the_labels_within_one_interval(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path, libvirt_uri: str
) -> None:
    g = guests[1]
    config = write_config(tmp_path, fresh_receiver.write_url, nova={"refresh_interval": "1h"})
    agent = AgentProcess(config, tmp_path / "agent.log")
    latest = f'libvirt_domain_info_cpu_time_seconds_total{{uuid="{g["uuid"]}"}}'
    try:
        wait_for(lambda: fresh_receiver.query(latest), 20, "the guest's series")
        _set_nova_metadata(libvirt_uri, g, "renamed-by-nova")
        renamed_at = time.time()
        wait_for(
            lambda: fresh_receiver.query(
                f'libvirt_domain_openstack_info{{uuid="{g["uuid"]}",instance_name="renamed-by-nova"}}'
            ),
            10,
            "the new instance name",
        )
        # Told by libvirt's metadata-change event, not by the (1h) periodic refresh.
        assert time.time() - renamed_at < 3.5
    finally:
        _set_nova_metadata(libvirt_uri, g, g["instance_name"])
        assert agent.stop() == 0, agent.log()
    assert "Nova metadata changed" in agent.log()


def test_churn_of_50_guests_leaves_no_series_and_no_leak(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path, libvirt_uri: str
) -> None:
    agent = AgentProcess(write_config(tmp_path, fresh_receiver.write_url), tmp_path / "a.log")
    workdir = Path(tempfile.mkdtemp(prefix="pusher-churn-"))
    cached = "pusher_cached_series"
    try:
        wait_for(lambda: fresh_receiver.query(cached), 20, "the agent's first cycles")
        time.sleep(2)
        baseline = float(fresh_receiver.query(cached)[0]["value"][1])
        names: list[str] = []
        for round_ in range(10):
            batch = create_guests(libvirt_uri, workdir, 5, prefix=f"churn{round_}",
                                  base=GUEST_OFFSET + 0xB100 + 16 * round_)  # fmt: skip
            names += [g["name"] for g in batch]
            time.sleep(3)  # cycles see them (a starting QEMU may be busy for one)
            destroy_guests(libvirt_uri, [g["name"] for g in batch])
        time.sleep(3)
        churned = f'libvirt_domain_state_code{{domain=~"{"|".join(names)}"}}'
        seen = fresh_receiver.query(f"count(count by (domain) (count_over_time({churned}[5m])))")
        assert float(seen[0]["value"][1]) == 50  # every guest was collected
        # Every destroyed guest's series ended at once (stale markers), none lingers.
        left = fresh_receiver.query(f'{{__name__=~"libvirt_.+", domain=~"{"|".join(names)}"}}')
        assert left == []
        # The caches are back to what the three remaining guests need.
        after = float(fresh_receiver.query(cached)[0]["value"][1])
        assert after <= baseline + 5, (baseline, after)
    finally:
        destroy_guests(libvirt_uri, names if "names" in locals() else [])
        assert agent.stop() == 0, agent.log()
    log = agent.log()
    assert "Traceback" not in log and " ERROR " not in log
