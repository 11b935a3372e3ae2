"""Fixtures for tests against real services: libvirtd with QEMU guests, Prometheus as receiver.

Missing services fail the tests, never skip them: CI must not pass by testing nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent import AgentProcess
from guests import DOMAIN_BASE, Guest, create_booted_guest, create_guests, destroy_guests, domstats
from receiver import Receiver

LIBVIRT_URI = "qemu:///system"
GUEST_COUNT = 3
# What a guest must report before tests may rely on its stats.
READY_STATS = ("balloon.current", "block.0.rd.reqs", "net.0.rx.bytes", "vcpu.0.time")
STATS_WAIT_S = 30.0

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's hook sees every collected item, not just those below it: filter by path.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_leftover_agents() -> Iterator[None]:
    yield
    AgentProcess.kill_leftovers()


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    try:
        result = subprocess.run(
            ["virsh", "-c", LIBVIRT_URI, "version"], capture_output=True, text=True, timeout=30
        )
        problem = result.stderr.strip() if result.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        problem = str(e)
    if problem:
        pytest.fail(
            f"libvirtd does not answer on {LIBVIRT_URI} ({problem}): run scripts/setup-host.sh"
        )
    return LIBVIRT_URI


@pytest.fixture(scope="session")
def guests(libvirt_uri: str) -> Iterator[list[Guest]]:
    # Not under pytest's tmp dir: that is mode 0700 and the qemu user must reach the images.
    workdir = Path(tempfile.mkdtemp(prefix="pusher-guests-"))
    created = create_guests(libvirt_uri, workdir, GUEST_COUNT)
    names = [g["name"] for g in created]
    try:
        deadline = time.monotonic() + STATS_WAIT_S
        while True:
            stats = domstats(libvirt_uri, names)
            missing = {n: [k for k in READY_STATS if k not in stats.get(n, {})] for n in names}
            if not any(missing.values()):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"guests lack stats after {STATS_WAIT_S:.0f} s: {missing}")
            time.sleep(0.5)
        yield created
    finally:
        destroy_guests(libvirt_uri, names)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def booted_guest(libvirt_uri: str) -> Iterator[tuple[str, str]]:
    """(domain name, uuid) of a guest that boots a Linux kernel whose balloon driver reports
    the guest's memory (available, unused, usable), unlike the other guests, which have no OS."""
    workdir = Path(tempfile.mkdtemp(prefix="pusher-booted-"))
    name = f"instance-{DOMAIN_BASE + 0xFF:08x}"
    try:
        uuid = create_booted_guest(libvirt_uri, workdir, name)
    except FileNotFoundError as e:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.fail(str(e))
    try:
        deadline = time.monotonic() + 60
        while "balloon.available" not in domstats(libvirt_uri, [name]).get(name, {}):
            if time.monotonic() > deadline:
                pytest.fail(f"{name}'s balloon driver reported nothing within 60 s")
            time.sleep(0.5)
        yield name, uuid
    finally:
        destroy_guests(libvirt_uri, [name])
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    r = Receiver(tmp_path_factory.mktemp("receiver"))
    yield r
    r.stop()


@pytest.fixture
def fresh_receiver(tmp_path: Path) -> Iterator[Receiver]:
    """A receiver with its own process and empty TSDB, for tests that must see only their data."""
    r = Receiver(tmp_path)
    yield r
    r.stop()
