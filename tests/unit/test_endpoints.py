"""Several endpoints: every cycle spooled for each, each drained on its own, its numbers
labelled with its name; one endpoint down holds back none of the others."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import RecordingServer
from test_delivery import OK, ScriptedTransport
from test_series import WEB, FakeCollector, domain, stats

from pusher.agent import Agent
from pusher.config import Config, from_mapping
from pusher.encode import decompress
from pusher.endpoint import EndpointLogFilter, open_spools
from pusher.health import HEALTH_FILE
from pusher.pb.remote_write_pb2 import WriteRequest
from pusher.sender import Outcome
from pusher.spool import Spool, SpoolError

DOWN = Outcome("retry", "503", message="unavailable")


def two(tmp_path: Path, a: dict[str, Any] | None = None, b: dict[str, Any] | None = None,
        **top: Any) -> Config:  # fmt: skip
    # (max_sample_age 0: the fake collector's cycles are old)
    endpoints = [{"name": "a", "url": "http://127.0.0.1:9/a", "min_backoff": "10ms",
                  "max_backoff": "50ms", "max_sample_age": "0s", **(a or {})},
                 {"name": "b", "url": "http://127.0.0.1:9/b", "max_sample_age": "0s",
                  **(b or {})}]  # fmt: skip
    tree = {"remote_write": endpoints, "buffer": {"path": str(tmp_path / "buf"), "fsync": False},
            "collect": {"interval": "1s"}, **top}  # fmt: skip
    return from_mapping(tree, {}, "h1")


@pytest.fixture
def spools() -> Iterator[list[Spool]]:
    opened: list[Spool] = []
    yield opened
    for s in opened:
        s.close()


def agent_for(cfg: Config, spools: list[Spool], *transports: ScriptedTransport,
              cycles: int = 3) -> Agent:  # fmt: skip
    spools.extend(open_spools(cfg))
    snapshots = [[domain("u1", stats(), WEB)] for _ in range(cycles)]
    outputs = list(zip(transports, spools, strict=True))
    return Agent(cfg, outputs, FakeCollector(snapshots))  # type: ignore[arg-type]


def own(agent: Agent, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {own: v for (metric, own, _), v in agent.self_samples() if metric == name}


def test_each_endpoint_has_its_spool_under_buffer_path(tmp_path: Path, spools: list[Spool]) -> None:
    cfg = two(tmp_path)
    agent_for(cfg, spools, ScriptedTransport(OK), ScriptedTransport(OK))
    assert [s.directory for s in spools] == [
        str(tmp_path / "buf" / "endpoints" / "a"), str(tmp_path / "buf" / "endpoints" / "b"),
    ]  # fmt: skip
    for d in (tmp_path / "buf", tmp_path / "buf" / "endpoints"):
        assert d.stat().st_mode & 0o777 == 0o700


def test_a_buffer_path_others_may_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "buf").mkdir(mode=0o777)
    (tmp_path / "buf").chmod(0o777)
    with pytest.raises(SpoolError, match="writable by group or others"):
        open_spools(two(tmp_path))


def test_every_cycle_reaches_every_endpoint_and_one_down_keeps_its_own(
    tmp_path: Path, spools: list[Spool]
) -> None:
    up, down = ScriptedTransport(OK), ScriptedTransport(DOWN)
    agent = agent_for(two(tmp_path), spools, down, up)
    collected = sum(agent.run_cycle() for _ in range(3))
    assert spools[0].stats()[0] == spools[1].stats()[0] > 0  # one copy each
    assert not agent.drain_once(time.monotonic() + 0.5)
    a, b = agent.endpoints
    assert (a.name, a.pending() > 0, b.name, b.pending()) == ("a", True, "b", 0)
    assert b.delivery.stats.sent == collected
    assert a.delivery.stats.sent == 0 and not any(a.delivery.stats.dropped.values())
    assert down.sent and all(proto == 2 for _, _, proto in down.sent)


def test_delivery_and_spool_metrics_carry_the_endpoint_label(
    tmp_path: Path, spools: list[Spool]
) -> None:
    up, down = ScriptedTransport(OK), ScriptedTransport(DOWN)
    agent = agent_for(two(tmp_path), spools, down, up)
    agent.run_cycle()
    agent.drain_once(time.monotonic() + 0.3)
    sent = own(agent, "pusher_samples_sent_total")
    assert set(sent) == {(("endpoint", "a"),), (("endpoint", "b"),)}
    assert sent[(("endpoint", "a"),)] == 0 < sent[(("endpoint", "b"),)]
    waiting = own(agent, "pusher_spool_requests")
    assert waiting[(("endpoint", "a"),)] > 0 == waiting[(("endpoint", "b"),)]
    codes = own(agent, "pusher_requests_total")
    assert codes[(("code", "503"), ("endpoint", "a"))] >= 1
    assert (("code", "204"), ("endpoint", "b")) in codes
    dropped = own(agent, "pusher_samples_dropped_total")
    assert (("endpoint", "b"), ("reason", "spool_full")) in dropped  # sorted label pairs
    # Not per endpoint: the cycle's own numbers.
    assert set(own(agent, "pusher_cycles_total")) == {()}


def test_the_byte_cap_applies_to_each_endpoint_and_drops_are_counted_per_endpoint(
    tmp_path: Path, spools: list[Spool]
) -> None:
    # 8 KiB: SQLite's own pages take half; each cycle's record is a few dozen bytes, so a
    # spool that keeps up stays far below, one that keeps 60 cycles goes over.
    cfg = two(tmp_path, buffer={"path": str(tmp_path / "buf"), "max_bytes": "8KiB",
                                "fsync": False})  # fmt: skip
    agent = agent_for(cfg, spools, ScriptedTransport(DOWN), ScriptedTransport(OK), cycles=70)
    for _ in range(60):
        agent.run_cycle()
        agent.drain_once(time.monotonic() + 0.05)  # b keeps up; a is down
        agent.endpoints[0].delivery.stopping.clear()
        agent.endpoints[1].delivery.stopping.clear()
    dropped = own(agent, "pusher_samples_dropped_total")
    assert dropped[(("endpoint", "a"), ("reason", "spool_full"))] > 0
    assert dropped[(("endpoint", "b"), ("reason", "spool_full"))] == 0
    assert spools[0].stats()[1] <= 8192


def test_one_endpoint_down_does_not_hold_back_the_other_while_running(
    tmp_path: Path, spools: list[Spool]
) -> None:
    down, up = ScriptedTransport(DOWN), ScriptedTransport(OK)
    # No start-up jitter: the fake cycles are old, so all of a's rows are backlog, and a
    # would wait up to an interval before its first try.
    cfg = two(tmp_path, a={"reconnect_jitter": "0s"}, b={"reconnect_jitter": "0s"})
    agent = agent_for(cfg, spools, down, up, cycles=5)
    agent.start_sender()
    try:
        for _ in range(5):
            agent.run_cycle()
            deadline = time.monotonic() + 2
            while agent.endpoints[1].pending() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert agent.endpoints[1].pending() == 0  # b's copy went out at once
        assert agent.endpoints[0].pending() >= 5  # a's waits, all of it
        assert down.sent  # a was trying meanwhile
    finally:
        agent.shutdown(0)


def test_endpoints_that_differ_in_protocol_get_their_own_bodies(
    tmp_path: Path, spools: list[Spool]
) -> None:
    v1, v2 = ScriptedTransport(OK), ScriptedTransport(OK)
    cfg = two(tmp_path, a={"protocol": "v1"}, b={"protocol": "v2"})
    agent = agent_for(cfg, spools, v1, v2)
    n = agent.run_cycle()
    assert agent.drain_once(time.monotonic() + 2)
    assert {p for _, _, p in v1.sent} == {1} and {p for _, _, p in v2.sent} == {2}
    assert sum(v1.series(i) for i in range(len(v1.sent))) == n
    assert sum(v2.series(i) for i in range(len(v2.sent))) == n


def test_endpoints_that_agree_send_the_same_requests(tmp_path: Path, spools: list[Spool]) -> None:
    # Each spool keeps its own records, built from the same cycle: the requests read back
    # from them are the same bytes.
    a, b = ScriptedTransport(OK), ScriptedTransport(OK)
    agent = agent_for(two(tmp_path), spools, a, b)
    agent.run_cycle()
    agent.run_cycle()
    assert agent.drain_once(time.monotonic() + 2)
    assert [body for body, _, _ in a.sent] == [body for body, _, _ in b.sent]


def test_the_health_file_judges_each_endpoint(tmp_path: Path, spools: list[Spool]) -> None:
    agent = agent_for(two(tmp_path), spools, ScriptedTransport(DOWN), ScriptedTransport(OK))
    agent.run_cycle()
    agent.drain_once(time.monotonic() + 0.3)
    agent.run_cycle()
    state = json.loads((tmp_path / "buf" / HEALTH_FILE).read_text())
    assert set(state["endpoints"]) == {"a", "b"}
    assert state["endpoints"]["a"]["spool_requests"] > 0
    assert state["endpoints"]["a"]["last_send_success"] == 0
    assert state["endpoints"]["b"]["last_send_success"] > 0


def test_log_lines_name_the_endpoint_they_are_about(
    tmp_path: Path, spools: list[Spool], caplog: pytest.LogCaptureFixture
) -> None:
    agent = agent_for(two(tmp_path), spools, ScriptedTransport(DOWN), ScriptedTransport(OK))
    caplog.handler.addFilter(EndpointLogFilter())
    with caplog.at_level(logging.WARNING, logger="pusher"):
        agent.run_cycle()
        agent.drain_once(time.monotonic() + 0.3)
    failed = [r.getMessage() for r in caplog.records if "remote write failed" in r.getMessage()]
    assert failed and all(m.startswith("endpoint a: remote write failed (503") for m in failed)


# --- --once from the command line ---------------------------------------------------------


def run_once(tmp_path: Path, first: str, second: str) -> subprocess.CompletedProcess[str]:
    fast = {"protocol": "v1", "timeout": "1s", "min_backoff": "50ms", "max_backoff": "200ms"}
    cfg = {
        "libvirt": {"uri": "test:///default"},
        "collect": {"interval": "1s"},
        "remote_write": [{"name": "good", "url": first, **fast},
                         {"name": "other", "url": second, **fast}],
        "buffer": {"path": str(tmp_path / "buf"), "fsync": False},
        "shutdown_grace": "1s",
    }  # fmt: skip
    path = tmp_path / "pusher.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHER_TEST_")}
    return subprocess.run([sys.executable, "-m", "pusher", "--once", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip


def cycle_stamps(server: RecordingServer) -> set[int]:
    stamps = set()
    for r in server.received:
        for ts in WriteRequest.FromString(decompress(r.body)).timeseries:
            if any(lb.name == "__name__" and lb.value == "libvirt_up" for lb in ts.labels):
                stamps.update(s.timestamp for s in ts.samples)
    return stamps


def test_once_exits_0_only_when_every_endpoint_got_everything(
    tmp_path: Path,
    http_server: RecordingServer,
    other_http_server: RecordingServer,
    refused_url: str,
) -> None:
    down = run_once(tmp_path, http_server.url, refused_url)
    assert down.returncode == 1, down.stderr
    assert "endpoint other: delivery did not finish" in down.stderr
    assert "endpoint good: delivered" in down.stderr
    assert len(cycle_stamps(http_server)) == 1  # the endpoint that was up got its cycle
    back = run_once(tmp_path, http_server.url, other_http_server.url)
    assert back.returncode == 0, back.stderr
    # The other endpoint got the cycle it missed, from its spool, and the new one.
    assert len(cycle_stamps(other_http_server)) == 2
    assert len(cycle_stamps(http_server)) == 2
