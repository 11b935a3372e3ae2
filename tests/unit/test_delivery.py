"""Delivery of spooled requests over a scripted transport: every outcome, each sample counted
once, and the agent's cycle feeding it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_series import WEB, FakeCollector, domain, stats

from pusher.agent import Agent
from pusher.config import Config, from_mapping
from pusher.delivery import Backoff, Delivery, OutageLog, ProtocolMemory, RejectionLog
from pusher.encode import Encoder, EncoderV2, decompress, is_stale, v2_to_v1
from pusher.nova import DomainInfo
from pusher.pb.remote_write_pb2 import WriteRequest
from pusher.sender import Outcome
from pusher.spool import Spool

NOW = 1_800_000_000.0  # the delivery's wall clock in these tests


class ScriptedTransport:
    """Answers each send with the next scripted outcome (the last one repeats)."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[tuple[bytes, int, int]] = []  # (body, attempt, proto)
        self.at: list[float] = []  # monotonic time of each send

    def send(self, body: bytes, attempt: int = 0, proto: int = 1) -> Outcome:
        self.sent.append((body, attempt, proto))
        self.at.append(time.monotonic())
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]

    def close(self) -> None:
        pass

    def series(self, i: int) -> int:
        body, _, proto = self.sent[i]
        raw = decompress(v2_to_v1(body) if proto == 2 else body)
        return len(WriteRequest.FromString(raw).timeseries)


OK = Outcome("ok", "204")


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(str(tmp_path / "spool"), 10**8, fsync=False)
    yield s
    s.close()


def config(**rw: Any) -> Config:
    return from_mapping({"remote_write": {"url": "http://127.0.0.1:9/push", **rw}}, {}, "h1")


def delivery(spool: Spool, transport: ScriptedTransport, **rw: Any) -> Delivery:
    cfg = config(**rw)
    protocol = ProtocolMemory(cfg.remote_write.protocol, spool.directory)
    return Delivery(cfg.remote_write, 15.0, spool, transport, protocol, clock=lambda: NOW)


def put(spool: Spool, n: int = 10, age: float = 0.0, proto: int = 1, name: str = "m") -> None:
    """One cycle of `n` series taken `age` seconds before NOW, spooled."""
    samples = [((f"{name}_{i}", (), (("host", "h1"),)), float(i)) for i in range(n)]
    encoder = EncoderV2(10**6) if proto == 2 else Encoder(10**6)
    spool.put(encoder.encode(samples, int((NOW - age) * 1000)))


def drain(d: Delivery, seconds: float = 5.0) -> None:
    d.stop(time.monotonic() + seconds)
    d.drain()


def test_ok_delivers_and_removes_the_rows(spool: Spool) -> None:
    t = ScriptedTransport(OK)
    d = delivery(spool, t)
    put(spool)
    put(spool)
    drain(d)
    assert spool.stats()[0] == 0
    assert (d.stats.sent, t.series(0), len(t.sent)) == (20, 20, 1)  # merged into one
    assert d.stats.responses["204"] == 1 and d.stats.last_success == NOW


def test_retry_uses_the_backoff_and_sends_the_attempt_number(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("retry", "503"), Outcome("retry", "error"), OK)
    d = delivery(spool, t)
    put(spool)
    drain(d)
    assert [attempt for _, attempt, _ in t.sent] == [0, 1, 2]
    assert d.stats.sent == 10 and d.stats.retried == 20
    waits = [b - a for a, b in zip(t.at, t.at[1:], strict=False)]
    assert waits[0] >= 0.015 and 0.03 <= waits[1] < 1.0  # 30 ms, then 60 ms, jittered


def test_retry_after_is_honoured(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("retry", "429", retry_after=0.4), OK)
    d = delivery(spool, t)
    put(spool)
    drain(d)
    assert t.at[1] - t.at[0] >= 0.4
    assert d.stats.sent == 10


def test_a_5xx_retry_after_is_honoured_up_to_max_backoff(spool: Spool) -> None:
    # Mimir answers a 5xx with a Retry-After scaled from the request's Retry-Attempt (6 s
    # doubling to 96 s): after an outage, one 500 while it starts up must not keep the node
    # silent for a minute and a half. A 5xx's is honoured up to max_backoff.
    t = ScriptedTransport(
        Outcome("retry", "503", retry_after=0.2), Outcome("retry", "500", retry_after=90.0), OK
    )
    d = delivery(spool, t, max_backoff="300ms")
    put(spool)
    drain(d)
    waits = [b - a for a, b in zip(t.at, t.at[1:], strict=False)]
    assert waits[0] >= 0.2  # honoured: the backoff's own would be 15-30 ms
    assert 0.29 <= waits[1] < 1.0, waits  # max_backoff, not 90 s
    assert d.stats.sent == 10


class Outage:
    """A receiver that answers 503 until `back` is set, then 204."""

    def __init__(self) -> None:
        self.back = threading.Event()
        self.sent: list[float] = []  # monotonic time of each send

    def send(self, body: bytes, attempt: int = 0, proto: int = 1) -> Outcome:
        self.sent.append(time.monotonic())
        return OK if self.back.is_set() else Outcome("retry", "503")

    def close(self) -> None:
        pass


def test_a_lane_waiting_to_retry_goes_again_when_the_other_lane_gets_through(
    spool: Spool,
) -> None:
    """The backlog lane, waiting out a long backoff of the outage, sends once a fresh request
    went through (after its reconnect jitter), not when its own wait ends."""
    t = Outage()
    backoff = {"min_backoff": "30s", "max_backoff": "30s", "reconnect_jitter": "0s"}
    d = delivery(spool, t, order="backfill", **backoff)  # type: ignore[arg-type]
    put(spool, 10, age=600, name="old")
    lanes = [threading.Thread(target=d.drain, args=(lane,)) for lane in ("backlog", "fresh")]
    lanes[0].start()
    try:
        deadline = time.monotonic() + 5
        while not t.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(t.sent) == 1  # failed: the backlog lane now waits 15-30 s
        t.back.set()
        put(spool, 10, age=0, name="new")
        lanes[1].start()
        while spool.stats()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert spool.stats()[0] == 0 and d.stats.sent == 20
        assert t.sent[-1] - t.sent[0] < 2.0
    finally:
        d.stop(time.monotonic() + 1)
        for lane in lanes:
            if lane.ident is not None:  # started
                lane.join()


def test_retry_after_0_waits_the_backoff_not_a_busy_loop(spool: Spool) -> None:
    # A receiver (or a proxy before it) answering 503 with `Retry-After: 0`.
    t = ScriptedTransport(Outcome("retry", "503", retry_after=0.0))
    d = delivery(spool, t)
    put(spool)
    drain(d, 0.5)
    # Backoff from 30 ms doubling (jittered to half or more): at most 5 sends in 0.5 s.
    assert 2 <= len(t.sent) <= 6, len(t.sent)
    assert spool.stats()[0] == 1  # kept for later


def test_backoff_doubles_to_its_maximum_and_holds_probe_slowly() -> None:
    b = Backoff(0.03, 0.2)
    delays = [b.retry_delay(None) for _ in range(6)]
    assert all(0.015 <= x <= 0.2 for x in delays) and b.current == 0.2
    assert b.retry_delay(7.0) == 7.0
    b.start_over()
    assert b.hold_delay(None) == 10.0  # credentials refused: 10 s at the least
    assert b.hold_delay(1000.0) == 300.0  # and 5 min at the most


def test_hold_keeps_everything_until_the_deadline(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("hold", "401", message="no org id"))
    d = delivery(spool, t)
    put(spool)
    drain(d, 1.0)  # the next probe would be 10 s later: past the deadline
    assert len(t.sent) == 1
    assert spool.stats()[0] == 1 and not d.stats.dropped["http_401"]
    assert d.stats.sent == 0


def test_hold_then_accepted_delivers(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pusher.delivery.HOLD_MIN_PROBE", 0.05)
    t = ScriptedTransport(Outcome("hold", "403"), OK)
    d = delivery(spool, t)
    put(spool)
    drain(d)
    assert [a for _, a, _ in t.sent] == [0, 1] and d.stats.sent == 10


def test_too_large_splits_in_halves_until_it_fits(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("too_large", "413"), Outcome("too_large", "413"), OK)
    d = delivery(spool, t)
    put(spool, 8)
    drain(d)
    # 8 -> 4 + 4; the first 4 -> 2 + 2; then everything goes.
    assert [t.series(i) for i in range(len(t.sent))] == [8, 4, 2, 2, 4]
    assert d.stats.sent == 8 and spool.stats()[0] == 0


def test_a_single_series_too_large_is_dropped_and_counted(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("too_large", "413"))
    d = delivery(spool, t)
    put(spool, 1)
    drain(d)
    assert d.stats.dropped["too_large"] == 1 and spool.stats()[0] == 0


def test_a_2_0_request_splits_with_its_symbols(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("too_large", "413"), Outcome("ok", "204", written=3))
    d = delivery(spool, t, protocol="v2")
    put(spool, 6, proto=2)
    drain(d)
    assert [t.series(i) for i in range(3)] == [6, 3, 3]  # each half decodes whole
    assert d.stats.sent == 6


def test_reject_is_counted_once_as_a_rejected_request_never_resent(spool: Spool) -> None:
    # Mimir 3.0.3 sets the -Written headers on a 400 too: they count nothing stored. Mimir
    # kept the request's valid series: its samples are "in a rejected request", not dropped.
    t = ScriptedTransport(Outcome("reject", "400", reason="sample-out-of-order", written=7))
    d = delivery(spool, t)
    put(spool)
    drain(d)
    assert len(t.sent) == 1 and spool.stats()[0] == 0
    assert d.stats.sent == 0 and not d.stats.dropped
    assert dict(d.stats.rejected) == {"sample-out-of-order": 1}
    assert dict(d.stats.rejected_samples) == {"sample-out-of-order": 10}
    counts = {(n, lab): v for n, lab, v in d.stats.readings()}
    assert counts[("pusher_requests_rejected_total", (("reason", "sample-out-of-order"),))] == 1
    assert counts[("pusher_rejected_request_samples_total",
                   (("reason", "sample-out-of-order"),))] == 10  # fmt: skip


def test_a_rejection_naming_a_tenant_limit_hands_it_on(spool: Spool) -> None:
    learned: list[tuple[str, int]] = []
    t = ScriptedTransport(Outcome("reject", "400", reason="label-value-too-long", limit=200))
    d = delivery(spool, t)
    d.on_limit = lambda mimir_id, value: learned.append((mimir_id, value))
    put(spool)
    drain(d)
    assert learned == [("label-value-too-long", 200)]


def test_accepted_bytes_are_counted(spool: Spool) -> None:
    t = ScriptedTransport(OK)
    d = delivery(spool, t)
    put(spool)
    drain(d)
    assert d.stats.sent_bytes == len(t.sent[0][0]) > 0


def test_a_partial_2_0_write_counts_each_sample_once(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("ok", "204", written=3))
    d = delivery(spool, t, protocol="v2")
    put(spool, 10, proto=2)
    drain(d)
    assert d.stats.sent == 3 and dict(d.stats.dropped) == {"not_written": 7}


def test_auto_falls_back_to_1_0_for_good_and_remembers(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("unsupported", "415"), OK)
    d = delivery(spool, t, protocol="auto")
    assert d.protocol.current == 2
    put(spool, 5, proto=2)
    drain(d)
    assert [proto for _, _, proto in t.sent] == [2, 1]  # the same request again, as 1.0
    assert d.stats.sent == 5 and d.protocol.current == 1
    assert ProtocolMemory("auto", spool.directory).current == 1  # after a restart too
    assert ProtocolMemory("v2", spool.directory).current == 2  # an explicit choice wins


def test_v2_against_a_1_x_receiver_holds(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("unsupported", "204"))
    d = delivery(spool, t, protocol="v2")
    put(spool, 5, proto=2)
    drain(d, 0.5)
    assert len(t.sent) == 1 and spool.stats()[0] == 1 and d.protocol.current == 2


def test_rows_older_than_max_sample_age_are_dropped_before_sending(spool: Spool) -> None:
    t = ScriptedTransport(OK)
    d = delivery(spool, t, max_sample_age="1h")
    put(spool, 4, age=3700)
    put(spool, 6, age=10)
    drain(d)
    assert dict(d.stats.dropped) == {"too_old": 4}
    assert d.stats.sent == 6 and t.series(0) == 6


def test_backfill_lanes_send_fresh_cycles_first(spool: Spool) -> None:
    t = ScriptedTransport(OK)
    d = delivery(spool, t, order="backfill", max_samples_per_send=10)
    put(spool, 10, age=600, name="old")
    put(spool, 10, age=300, name="older_too")
    put(spool, 10, age=1, name="new")
    d.stop(time.monotonic() + 5)
    d.drain("fresh")
    assert t.series(0) == 10 and len(t.sent) == 1  # only the fresh row
    first = WriteRequest.FromString(decompress(t.sent[0][0])).timeseries[0]
    assert first.labels[0].value.startswith("new")
    d.drain("backlog")
    assert len(t.sent) == 3 and spool.stats()[0] == 0


def test_the_shutdown_deadline_ends_a_retry_and_keeps_the_rows(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("retry", "503", retry_after=30.0))
    d = delivery(spool, t)
    put(spool)
    start = time.monotonic()
    drain(d, 0.3)
    assert time.monotonic() - start < 0.3 + 0.5
    assert len(t.sent) == 1 and spool.stats()[0] == 1
    assert spool.peek(100, claim=True) != []  # released for the next start


def test_an_outage_is_logged_at_its_start_then_once_a_minute_and_at_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    reads = []

    def spooled() -> int:
        reads.append(now[0])
        return 7

    outage = OutageLog(spooled, every=60.0, clock=lambda: now[0])
    down = Outcome("retry", "error", message="connection refused")
    refused = Outcome("hold", "401", message="no org id")
    with caplog.at_level(logging.INFO, logger="pusher"):
        for second in range(0, 150):  # two failed attempts a second for 150 s
            now[0] = float(second)
            outage.retrying(down, 0.5)
            outage.retrying(down, 0.5)
            outage.holding(refused)
        outage.succeeded()
        outage.succeeded()  # nothing more to say
    lines = [r.getMessage() for r in caplog.records]
    retries = [line for line in lines if line.startswith("remote write failed")]
    assert len(retries) == 3  # at 0, 60 and 120 s
    assert "1 attempt(s) so far, 7 request(s) spooled; retrying in 0.50s" in retries[0]
    assert "121 attempt(s) so far" in retries[1]
    assert len([line for line in lines if "probing again" in line]) == 3
    assert lines[-1] == "remote write recovered after 300 failed attempt(s)"
    assert reads == [0.0, 0.0, 60.0, 60.0, 120.0, 120.0]  # read only for a line written


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


# --- the agent's cycle into delivery ------------------------------------------------------


def agent_with(spool: Spool, t: ScriptedTransport, cycles: int = 1, **rw: Any) -> Agent:
    snapshots = [[domain("u1", stats(), WEB)] for _ in range(cycles)]
    return Agent(config(**rw), [(t, spool)], FakeCollector(snapshots))  # type: ignore[list-item]


def _own(agent: Agent, name: str) -> float:
    (value,) = [v for (metric, _, _), v in agent.self_samples() if metric == name]
    return value


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_cached_series_counts_the_encoder_in_use(spool: Spool, protocol: str) -> None:
    agent = agent_with(spool, ScriptedTransport(OK), protocol=protocol)
    agent.run_cycle()
    assert _own(agent, "pusher_cached_series") >= 4  # u1's series at the least


def test_metadata_is_sent_for_the_families_sent_only(spool: Spool) -> None:
    t = ScriptedTransport(OK)
    agent = agent_with(spool, t, max_samples_per_send=100000, max_sample_age="0s", protocol="v1")
    agent.run_cycle()
    assert agent.drain_once(time.monotonic() + 5)
    request = WriteRequest.FromString(decompress(t.sent[0][0]))
    sent = {lab.value for ts in request.timeseries for lab in ts.labels if lab.name == "__name__"}
    described = {m.metric_family_name for m in request.metadata}
    assert described == sent
    assert "libvirt_domain_perf_cpu_cycles_total" not in described
    units = {m.metric_family_name: m.unit for m in request.metadata}
    assert units["pusher_collect_duration_seconds"] == "seconds"


def test_every_collected_sample_ends_sent_or_dropped(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("ok", "204", written=5))
    agent = agent_with(spool, t, protocol="v2", max_sample_age="0s")
    n = agent.run_cycle()
    assert agent.drain_once(time.monotonic() + 5)
    stats = agent.endpoints[0].delivery.stats
    assert stats.sent + sum(stats.dropped.values()) == n


def test_ended_series_leave_the_encoders_cache(spool: Spool) -> None:
    collector = FakeCollector([
        [domain("u1", stats(), WEB), domain("u2", stats(disks=2), DomainInfo())],
        [domain("u1", stats(), WEB)],
        [domain("u1", stats(), WEB)],
    ])  # fmt: skip
    agent = Agent(config(), [(ScriptedTransport(OK), spool)], collector)  # type: ignore[list-item]
    agent.run_cycle()
    with_both = agent.cached_series()
    agent.run_cycle()  # u2 gone: stale markers written, then forgotten
    agent.run_cycle()
    assert agent.cached_series() <= with_both - 5  # u2 had 5 series


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_relabeled_cycles_are_sent_whole_with_their_stale_markers(
    spool: Spool, protocol: str
) -> None:
    # relabel_configs: no `host` anywhere, the Nova instance name as `vm`, no vCPU series.
    rules = [
        {"action": "labeldrop", "regex": "host"},
        {"source_labels": ["instance_name"], "target_label": "vm"},
        {"action": "drop", "source_labels": ["__name__"], "regex": "libvirt_domain_vcpu_.*"},
    ]
    cfg = from_mapping({"remote_write": {"url": "http://127.0.0.1:9/push", "protocol": protocol,
                                         "max_sample_age": "0s"},
                        "relabel_configs": rules}, {}, "h1")  # fmt: skip
    collector = FakeCollector([
        [domain("u1", stats(), WEB), domain("u2", stats(disks=2), WEB)],
        [domain("u1", stats(), WEB)],
        [domain("u1", stats(), WEB)],
    ])  # fmt: skip
    t = ScriptedTransport(OK)
    agent = Agent(cfg, [(t, spool)], collector)  # type: ignore[list-item]
    collected = [agent.run_cycle() for _ in range(3)]
    assert agent.drain_once(time.monotonic() + 5)
    assert agent.endpoints[0].delivery.stats.sent == sum(collected)  # every sample the cycles had
    series: list[dict[str, str]] = []
    stale: list[dict[str, str]] = []
    for body, _, proto in t.sent:
        raw = decompress(body)
        request = WriteRequest.FromString(raw if proto == 1 else decompress(v2_to_v1(body)))
        for ts in request.timeseries:
            labels = {lab.name: lab.value for lab in ts.labels}
            series.append(labels)
            if any(is_stale(s.value) for s in ts.samples):
                stale.append(labels)
    assert series and not [s for s in series if "host" in s]
    assert not [s for s in series if s["__name__"].startswith("libvirt_domain_vcpu_")]
    domain_series = [s for s in series if s["__name__"].startswith("libvirt_domain_")]
    assert all(s["vm"] == "web-1" for s in domain_series)
    # u2 ended: its series' stale markers carry the relabeled labels (its vCPU series, never
    # sent, get none).
    assert {s["uuid"] for s in stale} == {"u2"}
    assert all(s["vm"] == "web-1" and "host" not in s for s in stale)
    assert not [s for s in stale if s["__name__"].startswith("libvirt_domain_vcpu_")]
    dropped = [s for s in series if s["__name__"] == "pusher_relabel_dropped_samples_total"]
    assert {s["reason"] for s in dropped} == {"rule", "invalid_name", "duplicate"}
    if protocol == "v1":  # it forgot the ended series by the keys it had cached them under
        assert agent.cached_series() == collected[-1]
