"""Filters and cardinality on real guests: a project filter, a dropped label, optional groups."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from agent import AgentProcess, wait_for, write_config
from guests import Guest
from receiver import Receiver

from pusher.config import STATS_GROUPS

LIBVIRT_URI = "qemu:///system"


def test_project_filter_dropped_source_file_and_optional_groups(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    demo = [g for g in guests if g["project"] == "demo"]
    ops = [g for g in guests if g["project"] == "ops"]
    assert demo and ops
    # By uuid: other guests on this host (other tests', other sessions') never match it.
    config = write_config(
        tmp_path, fresh_receiver.write_url,
        collect={"groups": list(STATS_GROUPS)},
        filter={"projects": {"include": [demo[0]["project_uuid"]]}},
        labels={"drop": ["source_file"]},
    )  # fmt: skip
    # A dirty-rate measurement, for the dirtyrate group to report a rate.
    calc = subprocess.run(
        ["virsh", "-c", LIBVIRT_URI, "domdirtyrate-calc", demo[0]["name"], "--seconds", "1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert calc.returncode == 0, calc.stderr
    agent = AgentProcess(config, tmp_path / "agent.log")
    cpu = "libvirt_domain_info_cpu_time_seconds_total"
    try:
        wait_for(lambda: len(fresh_receiver.query(cpu)) >= len(demo), 20, "the demo guests")
        started = time.time()
        wait_for(
            lambda: fresh_receiver.query(f"timestamp(libvirt_up) > {started + 1}"),
            20, "two more cycles",
        )  # fmt: skip
        domain_series = fresh_receiver.series('{__name__=~"libvirt_domain_.+"}')
        # Only the demo project's guests, no series at all of the others.
        assert {s["uuid"] for s in domain_series} == {g["uuid"] for g in demo}
        assert {s.get("project_uuid") for s in domain_series} == {demo[0]["project_uuid"]}
        # The host series still count every domain libvirt has.
        domains = fresh_receiver.query("libvirt_domains")
        assert float(domains[0]["value"][1]) >= len(guests)
        # No disk paths on any series; the disks are still told apart, the volume still named.
        blocks = fresh_receiver.series("libvirt_domain_block_stats_read_bytes_total")
        assert blocks
        assert not [s for s in blocks if "source_file" in s]
        assert {(s["uuid"], s["target_device"]) for s in blocks} == {
            (g["uuid"], dev) for g in demo for dev in ("vda", "vdb")
        }
        assert {s["volume_id"] for s in blocks if s["target_device"] == "vdb"} == {
            g["volume_id"] for g in demo
        }
        # The dirtyrate group: the measurement made above, in bytes per second.
        uuid = demo[0]["uuid"]
        status = wait_for(
            lambda: fresh_receiver.query(f'libvirt_domain_dirtyrate_calc_status{{uuid="{uuid}"}}'),
            10, "the dirtyrate series",
        )  # fmt: skip
        assert float(status[0]["value"][1]) == 2.0  # measured
        rate = fresh_receiver.query(f'libvirt_domain_dirtyrate_bytes_per_second{{uuid="{uuid}"}}')
        assert rate and float(rate[0]["value"][1]) >= 0
        period = fresh_receiver.query(
            f'libvirt_domain_dirtyrate_calc_period_seconds{{uuid="{uuid}"}}'
        )
        assert float(period[0]["value"][1]) == 1.0
    finally:
        assert agent.stop() == 0, agent.log()
    log = agent.log()
    assert "Traceback" not in log
    # Every key the optional groups gave is in the catalog.
    unknown = [line for line in log.splitlines() if "not in the catalog" in line]
    assert not unknown, unknown
