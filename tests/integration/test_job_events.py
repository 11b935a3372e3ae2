"""Finished jobs under a running agent: real jobs on a real guest end, libvirt's job-completed
event reaches the agent through the read-only socket, and the counters arrive at the receiver;
then the guest goes away and its counters stay for the linger, then end."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from agent import AgentProcess, stop_cleanly, wait_for, write_config
from guests import GUEST_OFFSET, destroy_guests, domain_xml, nova_metadata_xml, uuid_str
from receiver import Receiver

# A disk whose first GiB holds data: a push backup of it lasts long enough (a few seconds)
# to be cancelled, where a blank image is backed up in a fraction of a second.
DISK_SIZE = 2 << 30
FILLED = "1G"
MEMORY_MIB = 64
FINISHED = "libvirt_domain_jobs_finished_total"
SECONDS = "libvirt_domain_jobs_finished_seconds_total"
BYTES = "libvirt_domain_jobs_finished_bytes_total"
LINGER_CYCLES = 10  # pusher.jobs.JOBS_LINGER


def virsh(uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=120, check=check)  # fmt: skip


@pytest.fixture
def job_guest(libvirt_uri: str) -> Iterator[tuple[str, str, Path]]:
    """(name, uuid, workdir) of a guest of its own, with Nova metadata and one disk of
    DISK_SIZE bytes whose first FILLED bytes hold data."""
    workdir = Path(tempfile.mkdtemp(prefix="pusher-jobs-"))
    workdir.chmod(0o755)
    name = f"instance-{GUEST_OFFSET + 0xC001:08x}"
    destroy_guests(libvirt_uri, [name])
    disk = str(workdir / f"{name}-vda.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, str(DISK_SIZE)],
                   check=True, timeout=30)  # fmt: skip
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {FILLED}", disk],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    uuid = uuid_str()
    nova = nova_metadata_xml("pusher-jobs-1", uuid, "demo", "alice", "m1.tiny",
                             project_uuid=uuid_str(), user_uuid=uuid_str())  # fmt: skip
    conn = libvirt.open(libvirt_uri)
    try:
        xml = domain_xml(name, uuid, nova, [disk], f"tapjobs{GUEST_OFFSET:x}"[:15], MEMORY_MIB)
        conn.defineXML(xml).create()
    finally:
        conn.close()
    try:
        yield name, uuid, workdir
    finally:
        destroy_guests(libvirt_uri, [name])
        shutil.rmtree(workdir, ignore_errors=True)


def value(receiver: Receiver, metric: str, uuid: str, operation: str, result: str) -> float:
    selector = f'{metric}{{uuid="{uuid}", operation="{operation}", result="{result}"}}'
    found = receiver.query(selector)
    return float(found[0]["value"][1]) if found else float("nan")


def latest(receiver: Receiver, selector: str) -> float:
    """The newest sample's time of the series `selector` selects (0 without any)."""
    found = receiver.query(f"max(timestamp({selector}))")
    return float(found[0]["value"][1]) if found else 0.0


def backup_and_cancel(uri: str, name: str) -> None:
    """A push backup cancelled while it copies: libvirt reports it with success false."""
    virsh(uri, "backup-begin", name)
    time.sleep(0.3)
    aborted = virsh(uri, "domjobabort", name, check=False)
    assert aborted.returncode == 0, f"the backup ended before it could be cancelled: {aborted}"


def wait_no_job(uri: str, name: str) -> None:
    wait_for(lambda: "None" in virsh(uri, "domjobinfo", name).stdout, 60, "the job to end")


def test_jobs_that_end_between_cycles_are_counted_then_end_with_their_guest(
    job_guest: tuple[str, str, Path], fresh_receiver: Receiver, tmp_path: Path, libvirt_uri: str
) -> None:
    name, uuid, _ = job_guest
    # collect.interval 1 s (write_config's): a job of a fraction of a second ends between two
    # cycles; collect.job_info is off, so only the event can see it.
    agent = AgentProcess(write_config(tmp_path, fresh_receiver.write_url), tmp_path / "a.log")
    try:
        wait_for(lambda: fresh_receiver.query(f'libvirt_domain_state_code{{uuid="{uuid}"}}'),
                 20, "the guest's series")  # fmt: skip
        # A Nova suspend (managed save) and resume: libvirt reports the save (not the start).
        virsh(libvirt_uri, "managedsave", name)
        virsh(libvirt_uri, "start", name)
        backup_and_cancel(libvirt_uri, name)
        wait_no_job(libvirt_uri, name)
        virsh(libvirt_uri, "backup-begin", name)  # copies the whole disk: completed
        wait_no_job(libvirt_uri, name)
        wait_for(lambda: value(fresh_receiver, FINISHED, uuid, "backup", "completed") == 1,
                 20, "the completed backup to be counted")  # fmt: skip
        counts = {
            (r["metric"]["operation"], r["metric"]["result"]): float(r["value"][1])
            for r in fresh_receiver.query(f'{FINISHED}{{uuid="{uuid}"}}')
        }
        assert counts == {
            ("save", "completed"): 1.0, ("backup", "cancelled"): 1.0, ("backup", "completed"): 1.0
        }  # fmt: skip
        # Bytes: the whole disk for the completed backup, part of it for the cancelled one;
        # the guest's memory that was not blank for the save.
        assert value(fresh_receiver, BYTES, uuid, "backup", "completed") == DISK_SIZE
        assert 0 < value(fresh_receiver, BYTES, uuid, "backup", "cancelled") < DISK_SIZE
        assert 0 < value(fresh_receiver, BYTES, uuid, "save", "completed") <= MEMORY_MIB << 20
        for op, result in (("save", "completed"), ("backup", "cancelled"), ("backup", "completed")):
            assert 0 < value(fresh_receiver, SECONDS, uuid, op, result) < 60, (op, result)
        # Each counter began at 0, so Prometheus' increase() sees the job.
        first = fresh_receiver.query(f'min_over_time({FINISHED}{{uuid="{uuid}"}}[5m])')
        assert {float(r["value"][1]) for r in first} == {0.0}
        seen = fresh_receiver.query(f'sum(increase({FINISHED}{{uuid="{uuid}"}}[5m]))')
        assert float(seen[0]["value"][1]) >= 2.5  # three jobs (extrapolation may add a bit)
        labels = fresh_receiver.query(f'{FINISHED}{{uuid="{uuid}", operation="save"}}')
        assert labels[0]["metric"]["instance_name"] == "pusher-jobs-1"
        assert labels[0]["metric"]["domain"] == name

        # The guest leaves (as after a live migration away): its counters stay with its
        # labels for the linger, then end with a stale marker.
        destroy_guests(libvirt_uri, [name])
        gone_at = time.time()
        selector = f'{FINISHED}{{uuid="{uuid}", instance_name="pusher-jobs-1"}}'
        # A slow destroy can hold the domain past collect.timeout, and the cycles that fall
        # back to per-domain calls take longer: the linger counts cycles, not seconds.
        try:
            wait_for(lambda: latest(fresh_receiver, selector) > gone_at + 3, LINGER_CYCLES * 3,
                     "the counters to be sent after the guest left")  # fmt: skip
        except AssertionError as e:
            raise AssertionError(f"{e}; the agent's log ends:\n{agent.log()[-6000:]}") from None
        assert not fresh_receiver.query(f'libvirt_domain_state_code{{uuid="{uuid}"}}')
        wait_for(lambda: not fresh_receiver.query(selector), LINGER_CYCLES + 10,
                 "the counters to end after the linger")  # fmt: skip
        ended_after = time.time() - gone_at
        assert ended_after > LINGER_CYCLES / 2, ended_after
    finally:
        log = stop_cleanly(agent)
    assert "cannot count a job-completed event" not in log
    print(f"finished jobs counted: {counts}; series ended {ended_after:.1f}s after the guest left")
