"""Durable delivery: outages, kill -9, every receiver answer Mimir gives, a full or damaged spool.

The agent runs as a real process against libvirt's test driver (its `state` stats are enough
to see every cycle) and pushes over real HTTP to `FakeMimir`, which answers as Mimir does and
rejects out-of-order samples, so "arrived in order with no gap" is checked on what it stored.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent import AgentProcess, stop_cleanly, wait_for, write_config
from fakemimir import FakeMimir, Reply, Seen, gaps

INTERVAL_MS = 1000
TEST_DRIVER = {"uri": "test:///default"}
FAST_RETRY = {"min_backoff": "50ms", "max_backoff": "500ms", "timeout": "2s"}


@pytest.fixture
def mimir() -> Iterator[FakeMimir]:
    m = FakeMimir()
    yield m
    m.stop()


def _config(tmp_path: Path, mimir: FakeMimir, **sections: Any) -> Path:
    sections.setdefault("libvirt", TEST_DRIVER)
    sections["remote_write"] = {**FAST_RETRY, **sections.get("remote_write", {})}
    return write_config(tmp_path, mimir.url, **sections)


def _cycles(mimir: FakeMimir) -> list[tuple[int, float]]:
    return mimir.one("libvirt_up")


def _wait_cycles(mimir: FakeMimir, n: int, timeout: float = 30) -> None:
    wait_for(lambda: len(mimir.find("libvirt_up")) == 1 and len(_cycles(mimir)) >= n,
             timeout, f"{n} cycles at the receiver")  # fmt: skip


def _wait_caught_up(mimir: FakeMimir, timeout: float = 60) -> None:
    """Until the receiver holds a cycle from the last two seconds (the backlog is through)."""
    wait_for(lambda: mimir.find("libvirt_up") and _cycles(mimir)[-1][0] > (time.time() - 2) * 1000,
             timeout, "the backlog to drain")  # fmt: skip


def _dropped(mimir: FakeMimir) -> dict[str, float]:
    out = {}
    for labels, samples in mimir.find("pusher_samples_dropped_total").items():
        out[dict(labels)["reason"]] = samples[-1][1]
    return out


def test_receiver_down_for_a_while_loses_nothing_and_keeps_order(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    agent = AgentProcess(_config(tmp_path, mimir), tmp_path / "agent.log")
    _wait_cycles(mimir, 2)
    mimir.stop()
    time.sleep(6)
    mimir.start()
    _wait_caught_up(mimir)
    time.sleep(1.5)  # one more cycle carries the final self-metrics
    stop_cleanly(agent)

    cycles = _cycles(mimir)
    assert gaps(cycles, INTERVAL_MS) == []
    assert len(cycles) >= 9
    for series in mimir.find("libvirt_domain_state_code").values():
        assert gaps(series, INTERVAL_MS) == []
    assert not any(_dropped(mimir).values()), _dropped(mimir)
    assert [s.status for s in mimir.seen if s.status != 200] == []  # order was never broken


def test_kill_9_during_an_outage_and_restart_loses_only_the_dead_seconds(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    config = _config(tmp_path, mimir)
    first = AgentProcess(config, tmp_path / "agent1.log")
    _wait_cycles(mimir, 2)
    mimir.stop()
    time.sleep(3)
    killed_at = time.time()
    first.kill()
    time.sleep(2)
    restarted_at = time.time()
    second = AgentProcess(config, tmp_path / "agent2.log")
    time.sleep(3)
    mimir.start()
    _wait_caught_up(mimir)
    stop_cleanly(second)

    cycles = _cycles(mimir)
    holes = gaps(cycles, INTERVAL_MS)
    # The only hole is the time no agent ran (plus the restart's start-up and its first tick).
    assert len(holes) <= 1, holes
    for a, b in holes:
        assert a >= (killed_at - 1.5) * 1000 and b <= (restarted_at + 4) * 1000, (holes, killed_at)
    # The cycles spooled before the kill were delivered by the second process.
    assert any(ts < killed_at * 1000 - 2000 for ts, _ in cycles)
    assert not any(_dropped(mimir).values())


def test_5xx_is_retried_with_retry_attempt_header_until_delivered(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    mimir.script = [Reply(500, "internal error"), Reply(503, "ingesters unavailable")]
    agent = AgentProcess(_config(tmp_path, mimir), tmp_path / "agent.log")
    _wait_cycles(mimir, 3)
    stop_cleanly(agent)
    assert [s.status for s in mimir.seen[:3]] == [500, 503, 200]
    assert "Retry-Attempt" not in mimir.seen[0].headers
    assert [s.headers.get("Retry-Attempt") for s in mimir.seen[1:3]] == ["1", "2"]
    assert mimir.seen[0].size == mimir.seen[2].size  # the same request, sent again
    assert gaps(_cycles(mimir), INTERVAL_MS) == []
    assert mimir.latest("pusher_samples_retried_total") > 0


def test_5xx_retry_after_is_honoured_only_up_to_max_backoff(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    # As Mimir answers while it starts up, to a request retried through an outage: a 500 with
    # the Retry-After it scales from Retry-Attempt (96 s at most). Waited out, the node would
    # be silent for a minute and a half after the receiver is back; max_backoff bounds it.
    busy = Reply(500, "distributor is unavailable (current state: Starting)", {"Retry-After": "90"})
    mimir.script = [busy, busy]
    agent = AgentProcess(_config(tmp_path, mimir), tmp_path / "agent.log")
    _wait_cycles(mimir, 3, timeout=20)
    stop_cleanly(agent)
    assert [s.status for s in mimir.seen[:3]] == [500, 500, 200]
    waits = [b.at - a.at for a, b in zip(mimir.seen[:3], mimir.seen[1:3], strict=False)]
    assert all(0.45 <= w < 2.0 for w in waits), waits  # max_backoff 500 ms, not 90 s
    assert gaps(_cycles(mimir), INTERVAL_MS) == []
    assert not any(_dropped(mimir).values())


def test_429_honours_retry_after(tmp_path: Path, mimir: FakeMimir) -> None:
    mimir.script = [Reply(429, "err-mimir-tenant-max-ingestion-rate", {"Retry-After": "2"})]
    agent = AgentProcess(_config(tmp_path, mimir), tmp_path / "agent.log")
    _wait_cycles(mimir, 2)
    stop_cleanly(agent)
    first, second = mimir.seen[0], mimir.seen[1]
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 1.9
    assert second.headers.get("Retry-Attempt") == "1"
    assert not any(_dropped(mimir).values())


def test_401_holds_the_backlog_and_loses_nothing_when_credentials_work_again(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    refusing = {"on": True}
    mimir.hook = lambda _seen: Reply(401, "invalid token") if refusing["on"] else None
    agent = AgentProcess(_config(tmp_path, mimir), tmp_path / "agent.log")
    wait_for(lambda: len(mimir.seen) >= 1, 10, "a first attempt")
    time.sleep(4)
    refusing["on"] = False  # the token was rotated
    _wait_caught_up(mimir, timeout=40)  # the hold probes every 10 s at most
    log = stop_cleanly(agent)

    cycles = _cycles(mimir)
    assert gaps(cycles, INTERVAL_MS) == []
    assert cycles[0][0] <= mimir.seen[0].at * 1000  # the cycles refused first arrived too
    assert not any(_dropped(mimir).values())
    assert log.count("probing again") == 1  # logged once a minute, not per probe


def test_backfill_sends_fresh_data_while_the_backlog_is_throttled(tmp_path: Path) -> None:
    mimir = FakeMimir(ooo_window_ms=3_600_000)
    back_at = float("inf")

    def throttle_backlog(seen: Seen) -> Reply | None:
        # For 5 s after the outage, the tenant's rate limit refuses the backlog.
        if time.time() < back_at + 5 and seen.newest_ts < (back_at - 3) * 1000:
            return Reply(429, "err-mimir-tenant-max-ingestion-rate", {"Retry-After": "1"})
        return None

    mimir.hook = throttle_backlog
    try:
        config = _config(tmp_path, mimir, remote_write={"order": "backfill"})
        mimir.stop()
        agent = AgentProcess(config, tmp_path / "agent.log")
        time.sleep(8)
        back_at = time.time()
        mimir.start()
        wait_for(lambda: len(mimir.find("libvirt_up")) == 1, 10, "fresh data")
        fresh_after = time.time() - back_at
        wait_for(lambda: len(_cycles(mimir)) >= 13, 30, "the backlog behind the fresh data")
        stop_cleanly(agent)
    finally:
        mimir.stop()
    # In fifo order the fresh cycles would wait behind the throttled backlog for 5 s.
    assert fresh_after < 2.5, fresh_after
    assert any(s.status == 429 for s in mimir.seen)
    cycles = mimir.one("libvirt_up")
    assert gaps(cycles, INTERVAL_MS) == []
    assert cycles[0][0] < (back_at - 6) * 1000  # and the whole backlog arrived
    assert not any(_dropped(mimir).values())


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_413_splits_the_request_and_delivers_the_halves(
    tmp_path: Path, mimir: FakeMimir, protocol: str
) -> None:
    mimir.max_body = 1200  # the first cycle's request carrying the metric metadata is larger
    config = _config(tmp_path, mimir, remote_write={"protocol": protocol})
    agent = AgentProcess(config, tmp_path / "agent.log")
    _wait_cycles(mimir, 3)
    stop_cleanly(agent)
    first = next(i for i, s in enumerate(mimir.seen) if s.status == 413)
    assert any(s.status == 200 and s.size <= 1200 for s in mimir.seen[first + 1 :])
    assert gaps(_cycles(mimir), INTERVAL_MS) == []
    assert not any(_dropped(mimir).values())


def test_spool_at_its_cap_drops_the_oldest_counts_them_and_keeps_running(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    mimir.stop()
    # A cycle of the test driver's one domain is a record of about 40 bytes, and SQLite's own
    # pages take 4 of the 8 KiB: the cap is reached after some 60 cycles, so they come fast.
    config = _config(
        tmp_path,
        mimir,
        buffer={"max_bytes": "8KiB"},
        collect={"interval": "50ms", "timeout": "50ms"},
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    time.sleep(8)
    mimir.start()
    _wait_caught_up(mimir)
    time.sleep(1.5)
    stop_cleanly(agent)
    assert _dropped(mimir)["spool_full"] > 0
    cycles = _cycles(mimir)
    assert cycles[-1][0] > (time.time() - 4) * 1000  # it went on collecting and sending


def _fill_spool(tmp_path: Path, mimir: FakeMimir, seconds: float) -> Path:
    """Run the agent with the receiver down; return the spool file it leaves behind."""
    mimir.stop()
    config = _config(tmp_path, mimir, shutdown_grace="0s")
    agent = AgentProcess(config, tmp_path / "agent1.log")
    time.sleep(seconds)
    stop_cleanly(agent)
    db = tmp_path / "spool" / "spool.db"
    (count,) = sqlite3.connect(db).execute("SELECT COUNT(*) FROM requests").fetchone()
    assert count >= seconds - 2
    return db


def test_truncated_spool_starts_keeps_what_is_readable_and_counts_the_rest(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    db = _fill_spool(tmp_path, mimir, 6)
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.truncate(size // 2)
    mimir.start()
    agent = AgentProcess(_config(tmp_path, mimir), tmp_path / "agent2.log")
    _wait_cycles(mimir, 3)
    log = stop_cleanly(agent)
    assert "damaged" in log or "missing from the sequence" in log
    assert list((tmp_path / "spool").glob("spool.db.corrupt-*")) or _dropped(mimir)


def test_garbage_spool_file_is_moved_aside_and_the_agent_runs(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / "spool.db").write_bytes(os.urandom(64 * 1024))
    agent = AgentProcess(_config(tmp_path, mimir), tmp_path / "agent.log")
    _wait_cycles(mimir, 2)
    stop_cleanly(agent)
    assert list(spool.glob("spool.db.corrupt-*"))


def test_corrupted_rows_are_dropped_and_counted_the_rest_delivered(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    db = _fill_spool(tmp_path, mimir, 6)
    with sqlite3.connect(db) as conn:
        (first,) = conn.execute("SELECT MIN(id) FROM requests").fetchone()
        conn.execute("UPDATE requests SET body = X'00112233' WHERE id = ?", (first + 1,))
    mimir.start()
    agent = AgentProcess(_config(tmp_path, mimir), tmp_path / "agent2.log")
    _wait_caught_up(mimir)
    time.sleep(1.5)
    stop_cleanly(agent)
    assert _dropped(mimir)["spool_corrupt"] > 0
    assert len(_cycles(mimir)) >= 5  # the intact spooled cycles and the new ones


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k,mode=0700", "tmpfs", str(mount)],
                   check=True)  # fmt: skip
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_does_not_crash_and_is_counted(
    tmp_path: Path, mimir: FakeMimir, small_disk: Path
) -> None:
    mimir.stop()
    config = _config(tmp_path, mimir, buffer={"path": str(small_disk / "spool"),
                                               "max_bytes": "64KiB"})  # fmt: skip
    agent = AgentProcess(config, tmp_path / "agent.log")
    # Fill what the spool leaves free of the small filesystem.
    time.sleep(2)
    try:
        with (small_disk / "filler").open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass  # full
    time.sleep(8)
    mimir.start()
    _wait_caught_up(mimir)
    time.sleep(1.5)
    log = stop_cleanly(agent)
    assert "cannot write" in log
    # Everything was delivered from memory, or what did not fit there was counted.
    dropped = _dropped(mimir)
    assert gaps(_cycles(mimir), INTERVAL_MS) == [] or dropped["spool_unwritable"] > 0


def test_sigterm_sends_within_the_grace_then_leaves_the_rest_for_the_next_start(
    tmp_path: Path, mimir: FakeMimir
) -> None:
    mimir.stop()
    config = _config(tmp_path, mimir, shutdown_grace="2s")
    agent = AgentProcess(config, tmp_path / "agent1.log")
    time.sleep(4)
    stopped_at = time.time()
    assert agent.stop(timeout=10) == 0, agent.log()
    took = time.time() - stopped_at
    assert 1.5 <= took < 5, took  # it tried for the grace period, then left
    assert "left in the spool" in agent.log()
    spooled = (
        sqlite3.connect(tmp_path / "spool" / "spool.db")
        .execute("SELECT COUNT(*), MIN(ts_ms) FROM requests")
        .fetchone()
    )
    assert spooled[0] >= 3

    mimir.start()
    second = AgentProcess(config, tmp_path / "agent2.log")
    _wait_caught_up(mimir)
    stop_cleanly(second)
    assert _cycles(mimir)[0][0] == spooled[1]  # the first spooled cycle arrived


def test_auto_falls_back_to_v1_on_415_remembers_it_and_loses_nothing(tmp_path: Path) -> None:
    old = FakeMimir(accepts_v2=False)
    try:
        config = _config(tmp_path, old, remote_write={"protocol": "auto"})
        agent = AgentProcess(config, tmp_path / "agent1.log")
        _wait_cycles(old, 3)
        log = stop_cleanly(agent)
        assert old.seen[0].status == 415 and "v2" in old.seen[0].headers["Content-Type"]
        assert all(s.status == 200 and "v2" not in s.headers["Content-Type"]
                   for s in old.seen[1:])  # fmt: skip
        assert gaps(_cycles(old), INTERVAL_MS) == []
        assert "does not take Remote-Write 2.0" in log
        assert (tmp_path / "spool" / "protocol").read_text().strip() == "1"
        # A restart remembers: no 2.0 attempt any more.
        before = len(old.seen)
        agent = AgentProcess(config, tmp_path / "agent2.log")
        _wait_cycles(old, len(_cycles(old)) + 2)
        stop_cleanly(agent)
        assert all("v2" not in s.headers["Content-Type"] for s in old.seen[before:])
    finally:
        old.stop()
