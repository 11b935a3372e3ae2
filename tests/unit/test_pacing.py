"""The backlog's pacing: the token bucket, the adaptive (AIMD) rate, the jitter, each on an
injected clock; then delivery over the scripted transport holding the backlog to them while
fresh cycles go at once."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
from test_delivery import OK, ScriptedTransport, config, delivery, put, spool

from pusher.delivery import (
    DECREASE,
    MIN_RATE,
    RAMP_SECONDS,
    AdaptiveRate,
    BacklogPacer,
    Delivery,
    Lane,
    RateMeter,
    TokenBucket,
)
from pusher.sender import Outcome
from pusher.spool import Spool

__all__ = ["spool"]  # the fixture, shared with test_delivery

THROTTLED = Outcome(
    "retry", "429", retry_after=6.0, message="(err-mimir-tenant-max-ingestion-rate)"
)
DOWN = Outcome("retry", "error", message="connection refused")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rw(**keys: Any) -> Any:
    return config(**keys).remote_write


# --- the token bucket ----------------------------------------------------------------------


def test_a_bucket_lets_its_burst_go_then_waits_for_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(100.0, 100.0, clock)
    assert bucket.take(100) == 0.0
    assert bucket.take(50) == pytest.approx(0.5)
    clock.now += 0.5  # the debt is paid
    assert bucket.take(100) == pytest.approx(1.0)


def test_a_request_larger_than_the_burst_waits_its_time_and_never_starves() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, 10.0, clock)
    assert bucket.take(10) == 0.0
    assert bucket.take(2000) == pytest.approx(200.0)


def test_an_idle_bucket_fills_up_to_its_burst_only() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, 20.0, clock)
    clock.now += 3600
    assert bucket.take(20) == 0.0
    assert bucket.take(10) == pytest.approx(1.0)


def test_a_rate_of_0_is_no_limit() -> None:
    bucket = TokenBucket(0.0, 0.0, Clock())
    assert bucket.take(10**9) == 0.0


def test_the_meter_counts_the_last_window_only() -> None:
    clock = Clock()
    meter = RateMeter(clock, window=10.0)
    meter.add(500)
    clock.now += 5
    meter.add(500)
    assert meter.rate() == pytest.approx(100.0)
    clock.now += 6  # the first 500 left the window
    assert meter.rate() == pytest.approx(50.0)


# --- the adaptive rate ---------------------------------------------------------------------


def test_a_429_lowers_the_cap_and_success_climbs_back_by_a_step_of_the_cap() -> None:
    clock = Clock()
    rate = AdaptiveRate(1000.0, True, clock)
    assert rate.throttled(sent_at=clock.now)
    assert rate.limit == pytest.approx(1000.0 * DECREASE)
    clock.now += 6.0
    rate.succeeded()
    assert rate.limit == pytest.approx(1000.0 * DECREASE + 6.0 * 1000.0 / RAMP_SECONDS)
    clock.now += RAMP_SECONDS
    rate.succeeded()
    assert rate.limit == 1000.0  # bounded by the cap


def test_the_step_does_not_depend_on_how_low_a_node_was_pushed() -> None:
    climbs = []
    for throttles in (1, 5):
        clock = Clock()
        rate = AdaptiveRate(1000.0, True, clock)
        for _ in range(throttles):
            clock.now += 1.0
            rate.throttled(clock.now)
        start = rate.limit
        clock.now += 5.0
        rate.succeeded()
        climbs.append(rate.limit - start)
    assert climbs == pytest.approx([5.0 * 1000.0 / RAMP_SECONDS] * 2)


def test_only_a_request_sent_after_the_last_decrease_lowers_the_rate_again() -> None:
    clock = Clock()
    rate = AdaptiveRate(1000.0, True, clock)
    before = clock.now
    assert rate.throttled(sent_at=before)
    clock.now += 0.5
    assert not rate.throttled(sent_at=before)  # in flight at the first 429
    assert rate.limit == pytest.approx(1000 * DECREASE)
    assert rate.throttled(sent_at=clock.now)  # sent at the lowered rate
    assert rate.limit == pytest.approx(1000 * DECREASE**2)


def test_without_a_cap_there_is_nothing_to_adapt() -> None:
    clock = Clock()
    rate = AdaptiveRate(0.0, True, clock)
    assert not rate.adaptive and not rate.throttled(sent_at=clock.now)
    assert rate.limit == 0.0


def test_the_rate_never_falls_below_its_floor() -> None:
    clock = Clock()
    rate = AdaptiveRate(4.0, True, clock)
    for _ in range(10):
        clock.now += 2
        rate.throttled(sent_at=clock.now)
    assert rate.limit == MIN_RATE


def test_with_adaptive_rate_off_a_429_changes_nothing() -> None:
    rate = AdaptiveRate(1000.0, False, Clock())
    assert not rate.throttled(sent_at=0.0)
    assert rate.limit == 1000.0


# --- the pacer -----------------------------------------------------------------------------


def test_the_backlog_is_held_a_random_share_of_the_jitter_at_start() -> None:
    clock = Clock()
    pacer = BacklogPacer(rw(reconnect_jitter="10s"), 15.0, clock, rand=lambda: 0.3)
    assert pacer.held() == pytest.approx(3.0)
    clock.now += 3.0
    assert pacer.held() == 0.0


def test_the_jitter_defaults_to_one_interval() -> None:
    pacer = BacklogPacer(rw(), 15.0, Clock(), rand=lambda: 1.0)
    assert pacer.jitter == 15.0 and pacer.held() == pytest.approx(15.0)


def test_the_end_of_an_outage_holds_the_backlog_again_and_a_429_is_no_outage() -> None:
    clock = Clock()
    pacer = BacklogPacer(rw(reconnect_jitter="10s"), 15.0, clock, rand=lambda: 0.5)
    clock.now += 10
    pacer.failed(THROTTLED, "backlog", clock.now)
    assert not pacer.ok(100, backlog=True) and pacer.held() == 0.0
    pacer.failed(DOWN, "fresh", clock.now)
    assert pacer.ok(100, backlog=False)  # the first answer after the outage
    assert pacer.held() == pytest.approx(5.0)


def test_a_429_lowers_the_samples_bucket_and_is_counted_by_lane() -> None:
    clock = Clock()
    pacer = BacklogPacer(rw(backlog_rate_limit=1000), 15.0, clock, rand=lambda: 0.0)
    pacer.failed(THROTTLED, "fresh", clock.now)
    assert pacer.rate.limit == pytest.approx(1000 * DECREASE)
    assert pacer.reserve(1000 * DECREASE, 0) == pytest.approx(1.0)  # the 429 spent the burst
    assert pacer.throttled == {"fresh": 1}


def test_the_bytes_cap_paces_by_wire_bytes() -> None:
    pacer = BacklogPacer(rw(backlog_bytes_rate_limit="1KiB"), 15.0, Clock(), rand=lambda: 0.0)
    assert pacer.reserve(10, 1024) == 0.0
    assert pacer.reserve(10, 2048) == pytest.approx(2.0)


def test_retry_after_of_a_429_gives_way_to_the_adaptive_rate() -> None:
    adaptive = BacklogPacer(rw(backlog_rate_limit=1000), 15.0, Clock())
    static = BacklogPacer(rw(backlog_rate_limit=1000, adaptive_rate=False), 15.0, Clock())
    uncapped = BacklogPacer(rw(), 15.0, Clock())  # nothing to adapt: as before
    assert adaptive.retry_after(THROTTLED, backlog=True) is None  # the lowered bucket
    assert adaptive.retry_after(THROTTLED, backlog=False) == 6.0  # no backlog going out
    adaptive.reserve(10, 100)  # now there is
    assert adaptive.retry_after(THROTTLED, backlog=False) is None  # fresh: the backoff
    assert static.retry_after(THROTTLED, backlog=True) == 6.0
    assert uncapped.retry_after(THROTTLED, backlog=True) == 6.0
    unavailable = Outcome("retry", "503", retry_after=30.0)
    assert adaptive.retry_after(unavailable, backlog=True) == 30.0  # not a rate signal


def test_the_eta_is_the_backlog_over_the_effective_rate() -> None:
    clock = Clock()
    pacer = BacklogPacer(rw(backlog_rate_limit=200), 15.0, clock, rand=lambda: 0.0)
    pacer.seen(1000)
    values = {(n, labels): v for n, labels, v in pacer.readings(10, backlog=True)}
    assert values[("pusher_backlog_rate_limit_samples_per_second", ())] == 200.0
    assert values[("pusher_backlog_eta_seconds", ())] == pytest.approx(50.0)
    assert values[("pusher_throttled_requests_total", (("lane", "backlog"),))] == 0
    none = {n: v for n, _, v in BacklogPacer(rw(), 15.0, clock).readings(10, backlog=True)}
    assert math.isinf(none["pusher_backlog_eta_seconds"])  # nothing delivered yet
    empty = {n: v for n, _, v in pacer.readings(1, backlog=False)}
    assert empty["pusher_backlog_eta_seconds"] == 0.0  # only fresh rows spooled


# --- delivery holding the backlog to them --------------------------------------------------


def drain_until_sent(
    d: Delivery, t: ScriptedTransport, n: int, lanes: tuple[Lane, ...] = ("all",)
) -> None:
    """Run `lanes` on their threads until `t` got `n` requests (5 s at most), then stop them."""
    threads = [threading.Thread(target=d.drain, args=(lane,)) for lane in lanes]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 5
        while len(t.sent) < n and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        d.stop(time.monotonic() + 1)
        for thread in threads:
            thread.join()


def gaps(t: ScriptedTransport) -> list[float]:
    return [b - a for a, b in zip(t.at, t.at[1:], strict=False)]


def test_the_backlog_is_sent_at_the_capped_rate(spool: Spool) -> None:
    t = ScriptedTransport(OK)
    d = delivery(spool, t, max_samples_per_send=10, backlog_rate_limit=20)
    for age in (400, 300, 200, 100):
        put(spool, 10, age=age)
    drain(d, 5)
    assert len(t.sent) == 4 and d.stats.sent == 40
    # A burst of one second's worth goes at once, then one request per half second.
    assert gaps(t)[1] >= 0.45 and gaps(t)[2] >= 0.45
    assert gaps(t)[0] < gaps(t)[1] - 0.2, gaps(t)


def drain(d: Delivery, seconds: float) -> None:
    d.stop(time.monotonic() + seconds)
    d.drain()


def test_fresh_cycles_are_not_paced_in_fifo_order(spool: Spool) -> None:
    t = ScriptedTransport(OK)
    d = delivery(spool, t, max_samples_per_send=10, backlog_rate_limit=1)
    put(spool, 10, age=0)
    put(spool, 10, age=1)
    start = time.monotonic()
    drain(d, 5)
    assert d.stats.sent == 20 and time.monotonic() - start < 0.5


def test_a_backlog_row_in_fifo_order_is_paced(spool: Spool) -> None:
    t = ScriptedTransport(OK)
    d = delivery(spool, t, max_samples_per_send=10, backlog_rate_limit=20)
    d.pacer.reserve(20, 0)  # the burst is spent
    put(spool, 10, age=600)
    start = time.monotonic()
    drain(d, 5)
    assert d.stats.sent == 10 and time.monotonic() - start >= 0.45


def test_a_429_on_the_backlog_lowers_its_rate_and_queues_it_again_not_for_retry_after(
    spool: Spool,
) -> None:
    t = ScriptedTransport(THROTTLED, OK)
    d = delivery(spool, t, order="backfill", backlog_rate_limit=100, max_samples_per_send=10)
    d.pacer.reserve(100, 0)  # the burst is spent
    put(spool, 10, age=600)
    drain_lane(d, "backlog", 5)
    assert d.stats.sent == 10
    # 10 samples at the lowered rate (70/s): 0.14 s, not Mimir's 6 s.
    assert 0.9 * 10 / (100 * DECREASE) <= gaps(t)[0] < 1.0, gaps(t)
    assert d.pacer.rate.limit < 100 and d.pacer.throttled == {"backlog": 1}
    readings = {(n, labels): v for n, labels, v in d.stats.readings()}
    assert readings[("pusher_throttled_requests_total", (("lane", "backlog"),))] == 1
    assert 100 * DECREASE <= readings[("pusher_backlog_rate_limit_samples_per_second", ())] < 100


def drain_lane(d: Delivery, lane: Any, seconds: float) -> None:
    d.stop(time.monotonic() + seconds)
    d.drain(lane)


def test_a_fresh_request_throttled_while_the_backlog_goes_retries_on_the_backoff(
    spool: Spool,
) -> None:
    t = ScriptedTransport(THROTTLED, OK)
    d = delivery(spool, t, order="backfill", backlog_rate_limit=1000)
    d.pacer.reserve(10, 100)  # the backlog lane is sending
    put(spool, 10, age=0)
    drain_lane(d, "fresh", 5)
    assert d.stats.sent == 10 and gaps(t)[0] < 0.5  # not Mimir's 6 s
    assert d.pacer.throttled == {"fresh": 1} and d.pacer.rate.limit == pytest.approx(
        1000 * DECREASE
    )


def test_a_429_without_adaptive_rate_honours_retry_after_in_full(spool: Spool) -> None:
    t = ScriptedTransport(Outcome("retry", "429", retry_after=0.6), OK)
    d = delivery(spool, t, adaptive_rate=False, max_backoff="100ms")
    put(spool, 10, age=600)
    drain(d, 5)
    assert gaps(t)[0] >= 0.6 and d.pacer.rate.limit == 0.0


def test_the_backlog_waits_its_jitter_and_fresh_cycles_do_not(spool: Spool) -> None:
    t = ScriptedTransport(OK)
    d = delivery(spool, t, order="backfill", reconnect_jitter="600ms", max_samples_per_send=10)
    d.pacer = BacklogPacer(d.rw, d.interval, rand=lambda: 1.0)
    put(spool, 10, age=600, name="old")
    put(spool, 10, age=0, name="new")
    start = time.monotonic()
    drain_until_sent(d, t, 2, ("fresh", "backlog"))
    assert t.at[0] - start < 0.3  # the fresh cycle at once
    assert t.at[1] - start >= 0.55  # the backlog after the jitter
    assert spool.stats()[0] == 0


def test_after_an_outage_the_backlog_waits_its_jitter_again(spool: Spool) -> None:
    t = ScriptedTransport(DOWN, OK)
    d = delivery(spool, t, max_samples_per_send=10, reconnect_jitter="500ms", min_backoff="10ms")
    d.pacer = BacklogPacer(d.rw, d.interval, rand=lambda: 1.0)
    d.pacer.hold_until = 0.0  # the start-up hold is over
    put(spool, 10, age=600)
    put(spool, 10, age=500)
    drain_until_sent(d, t, 3)
    assert len(t.sent) == 3 and gaps(t)[1] >= 0.45  # down, back, then the held backlog
