"""Delivery of spooled requests, driven by a scripted sender: every outcome, counted once."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_loop import WEB, FakeCollector, domain, stats

from pusher.config import from_mapping
from pusher.encode import decompress
from pusher.loop import Agent, RejectionLog
from pusher.pb.remote_write_pb2 import WriteRequest
from pusher.sender import Outcome
from pusher.spool import Spool


class ScriptedSender:
    """Answers each send with the next scripted outcome (the last one repeats)."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[tuple[bytes, int, int]] = []  # (body, attempt, proto)

    def send(self, body: bytes, attempt: int = 0, proto: int = 1) -> Outcome:
        self.sent.append((body, attempt, proto))
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]

    def close(self) -> None:
        pass


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(str(tmp_path / "spool"), 10**8)
    yield s
    s.close()


def agent_with(spool: Spool, sender: ScriptedSender, cycles: int = 1, **rw: object) -> Agent:
    tree = {"remote_write": {"url": "http://127.0.0.1:9/push", **rw}}
    cfg = from_mapping(tree, hostname="h1")
    snapshots = [[domain("u1", stats(), WEB)] for _ in range(cycles)]
    agent = Agent(cfg, collector=FakeCollector(snapshots), sender=sender, spool=spool)  # type: ignore[arg-type]
    agent.clock = lambda: FakeCollector(()).ts / 1000 + 15 * cycles  # type: ignore[arg-type]
    return agent


def test_retry_after_0_waits_the_backoff_not_a_busy_loop(spool: Spool) -> None:
    # A receiver (or a proxy before it) answering 503 with `Retry-After: 0`.
    sender = ScriptedSender(Outcome("retry", "503", retry_after=0.0))
    agent = agent_with(spool, sender)
    agent.run_cycle()
    agent.drain_once(time.monotonic() + 0.5)
    # Backoff from 30 ms doubling (jittered to half or more): at most 5 sends in 0.5 s.
    assert 2 <= len(sender.sent) <= 6, len(sender.sent)
    assert spool.stats()[0] > 0  # kept for later


def test_a_partial_2_0_write_counts_each_sample_once(spool: Spool) -> None:
    sender = ScriptedSender(Outcome("ok", "204", written=3))
    agent = agent_with(spool, sender, protocol="v2", max_samples_per_send=100000)
    n = agent.run_cycle()
    assert agent.drain_once(time.monotonic() + 5)
    c = agent.counters
    in_requests = len(sender.sent)
    assert c.sent == 3 * in_requests
    assert c.dropped["not_written"] == n - c.sent
    assert c.sent + sum(c.dropped.values()) == n


def test_a_400_with_written_headers_drops_the_request_once(spool: Spool) -> None:
    # Mimir 3.0.3 sets the -Written headers on a 400 too: they count nothing stored.
    sender = ScriptedSender(
        Outcome("reject", "400", reason="sample-out-of-order", message="x", written=7)
    )
    agent = agent_with(spool, sender)
    n = agent.run_cycle()
    assert agent.drain_once(time.monotonic() + 5)
    assert agent.counters.sent == 0
    assert agent.counters.dropped["sample-out-of-order"] == n
    assert sum(agent.counters.dropped.values()) == n


def _self_value(agent: Agent, name: str) -> float:
    (value,) = [v for (metric, _, _), v in agent.self_samples() if metric == name]
    return value


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_cached_series_counts_the_encoder_in_use(spool: Spool, protocol: str) -> None:
    agent = agent_with(spool, ScriptedSender(Outcome("ok", "204", written=10**6)),
                       protocol=protocol)  # fmt: skip
    agent.run_cycle()
    assert _self_value(agent, "pusher_cached_series") >= 4  # u1's series at the least


def test_metadata_is_sent_for_the_families_sent_only(spool: Spool) -> None:
    sender = ScriptedSender(Outcome("ok", "204"))
    agent = agent_with(spool, sender, max_samples_per_send=100000)
    agent.run_cycle()
    assert agent.drain_once(time.monotonic() + 5)
    (body, _, _), *_ = sender.sent
    request = WriteRequest.FromString(decompress(body))
    sent = {lab.value for ts in request.timeseries for lab in ts.labels if lab.name == "__name__"}
    described = {m.metric_family_name for m in request.metadata}
    assert described == sent
    assert "libvirt_domain_perf_cpu_cycles_total" not in described
    units = {m.metric_family_name: m.unit for m in request.metadata}
    assert units["pusher_collect_duration_seconds"] == "seconds"


def test_a_persistent_rejection_is_logged_once_then_summed_up_each_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    rejections = RejectionLog(every=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="pusher"):
        for second in range(0, 150):  # two rejected requests a second for 150 s
            now[0] = float(second)
            rejections.rejected("sample-out-of-order", 10, "400", "err-mimir-sample-out-of-order")
            rejections.rejected("sample-out-of-order", 10, "400", "err-mimir-sample-out-of-order")
        now[0] = 150.0
        rejections.rejected("label-value-too-long", 1, "400", "err-mimir-label-value-too-long")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert "rejected 10 sample(s)" in lines[0]
    # The summaries at 60 s and 120 s add up all that came since the last line.
    assert "120 more request(s), 1200 sample(s)" in lines[1]
    assert "120 more request(s), 1200 sample(s)" in lines[2]
    assert "label-value-too-long" in lines[3]  # another reason: logged at once
