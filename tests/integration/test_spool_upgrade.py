"""Upgrade: an agent of this version started on a spool the previous version wrote during an
outage delivers everything in it, then its own cycles, in order.

`tests/data/spool-6c6caf1-outage.db` was written by the agent at commit 6c6caf1 (the last
one storing request bodies) against libvirt's test driver with its receiver unreachable:
5 s with Remote-Write 1.0, then 5 s with 2.0, each run stopped with SIGTERM and no grace.
It holds 13 requests, 287 samples, in WAL mode with the old schema.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent import AgentProcess, wait_for, write_config
from fakemimir import FakeMimir

OLD_SPOOL = Path(__file__).parent.parent / "data" / "spool-6c6caf1-outage.db"


@pytest.fixture
def mimir() -> Iterator[FakeMimir]:
    m = FakeMimir()
    yield m
    m.stop()


def _old_cycles() -> list[int]:
    db = sqlite3.connect(f"file:{OLD_SPOOL}?mode=ro&immutable=1", uri=True)
    try:
        return sorted({ts for (ts,) in db.execute("SELECT ts_ms FROM requests")})
    finally:
        db.close()


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_spool_of_the_previous_version_is_delivered_first_and_whole(
    tmp_path: Path, mimir: FakeMimir, protocol: str
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    shutil.copyfile(OLD_SPOOL, spool / "spool.db")
    (spool / "spool.db").chmod(0o600)
    old = _old_cycles()
    config = write_config(
        tmp_path, mimir.url, libvirt={"uri": "test:///default"},
        remote_write={"max_sample_age": "0s", "protocol": protocol, "min_backoff": "50ms"},
    )  # fmt: skip
    agent = AgentProcess(config, tmp_path / "agent.log")
    started = time.time()
    wait_for(lambda: mimir.find("libvirt_up")
             and any(ts > started * 1000 for ts, _ in mimir.one("libvirt_up")),
             30, "the new agent's own cycles")  # fmt: skip
    time.sleep(1.5)
    assert agent.stop() == 0, agent.log()
    assert "Traceback" not in agent.log()

    arrived = [ts for ts, _ in mimir.one("libvirt_up")]
    assert set(old) <= set(arrived), sorted(set(old) - set(arrived))
    assert arrived[: len(old)] == old  # the old backlog first, oldest first
    assert [s.status for s in mimir.seen if s.status != 200] == []  # nothing out of order
    dropped = {
        dict(labels)["reason"]: samples[-1][1]
        for labels, samples in mimir.find("pusher_samples_dropped_total").items()
    }
    assert not any(dropped.values()), dropped
    # The old spool's series were labelled as before: its domain is there at every old cycle.
    state = mimir.find("libvirt_domain_state_code")
    assert state and all(set(old) <= {ts for ts, _ in s} for s in state.values())
