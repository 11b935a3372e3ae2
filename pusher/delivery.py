"""Delivery: spooled requests to the receiver, oldest first, each to its end.

A lane drains spool rows one batch at a time (`Delivery.drain`) and delivers each batch
(`Delivery.deliver`), acting on the sender's `Outcome`:

    ok           the rows leave the spool; a 2.0 receiver's shortfall is counted as dropped
    retry        the same request again after a backoff (30 ms doubling to 5 s, jittered),
                 or after the receiver's Retry-After when it asks for a positive delay (a
                 5xx's only up to `remote_write.max_backoff`); a request that goes through
                 on another lane ends the wait (the receiver is back)
    hold         credentials or URL refused: keep everything, probe every 10 s to 5 min
    too_large    413, or Mimir's 400 for a body over its max_recv_msg_size: the request is
                 cut in halves, recursively
    reject       the receiver kept what was valid: never resent; the request and the samples
                 in it counted as rejected (not dropped: Mimir stored its valid series), and
                 a tenant limit Mimir names is handed to `on_limit`
    unsupported  the receiver takes only 1.0: with `protocol: auto`, fall back for good
                 (remembered in the spool directory) and send the same request as 1.0

Rows older than `remote_write.max_sample_age` are dropped before sending (`too_old`): the
receiver would refuse them. In `backfill` order two lanes run: `fresh` sends the last two
cycles at once, `backlog` the older rows behind them. Every sample ends counted once: sent,
dropped with its reason, or in a rejected request with the receiver's reason.

The backlog (rows older than the last two cycles, in either order) is paced by one
`BacklogPacer` per endpoint: a token bucket at `remote_write.backlog_rate_limit` samples/s
and `backlog_bytes_rate_limit` bytes/s, an adaptive limit under them (`AdaptiveRate`: times 0.7
on a 429, climbing back additively on success), and a random hold of up to
`remote_write.reconnect_jitter` after start-up and after an outage. Fresh rows are never
paced: in `backfill` order they never wait for the backlog; in `fifo` order they still queue
behind it (the receiver would refuse them out of order), so there the cap delays them too.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pusher.catalog import Reading, reading
from pusher.config import RemoteWriteConfig
from pusher.encode import Request, merge_bodies, split_body, v2_to_v1
from pusher.sender import Outcome
from pusher.spool import Row, Spool

__all__ = [
    "KNOWN_DROP_REASONS",
    "Backoff",
    "Delivery",
    "DeliveryStats",
    "OutageLog",
    "ProtocolMemory",
    "RejectionLog",
    "Result",
    "Transport",
]

log = logging.getLogger(__name__)

# Drop reasons reported from the first cycle on (at 0), so alerts see the series exist.
KNOWN_DROP_REASONS = ("too_old", "spool_full", "spool_corrupt", "spool_unwritable", "too_large")
# While credentials are refused, probe this often at the least, and log at most once a minute.
HOLD_MIN_PROBE = 10.0
HOLD_MAX_PROBE = 300.0
LOG_EVERY = 60.0
PROTOCOL_FILE = "protocol"  # "1" once an `auto` agent found its receiver takes only 1.0
# The backlog's adaptive rate (AdaptiveRate): a 429 multiplies it by DECREASE; success adds
# the ceiling / RAMP_SECONDS per second; it never goes below MIN_RATE samples/s.
DECREASE = 0.7
RAMP_SECONDS = 60.0
MIN_RATE = 1.0
RATE_WINDOW = 10.0  # seconds over which the delivered rate is measured

Result = Literal["done", "deadline", "handover"]
Lane = Literal["all", "fresh", "backlog"]


class Transport(Protocol):
    """What delivery needs of the sender: one POST of one body."""

    def send(self, body: bytes, attempt: int = 0, proto: int = 1) -> Outcome: ...

    def close(self) -> None: ...


@dataclass
class DeliveryStats:
    """What delivery did, written by the sending lanes, read by the collecting thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    retried: int = 0
    sent_bytes: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    # Requests the receiver rejected, and the samples in them: Mimir keeps the valid series of
    # a request it answers 400, so these samples are not all lost, and not counted as dropped.
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected_samples: collections.Counter[str] = field(default_factory=collections.Counter)
    responses: collections.Counter[str] = field(default_factory=collections.Counter)
    send_seconds: float = 0.0
    last_success: float = 0.0
    # The backlog's pacing (limit, ETA, 429s), read from the pacer with the rest.
    pacing: Callable[[], list[Reading]] | None = None

    def drop(self, reason: str, samples: int) -> None:
        with self.lock:
            self.dropped[reason] += samples

    def reject(self, reason: str, samples: int) -> None:
        with self.lock:
            self.rejected[reason] += 1
            self.rejected_samples[reason] += samples

    def readings(self) -> list[Reading]:
        with self.lock:
            out = [
                reading("pusher_samples_sent_total", self.sent),
                reading("pusher_samples_retried_total", self.retried),
                reading("pusher_request_bytes_total", self.sent_bytes),
                reading("pusher_send_duration_seconds_total", self.send_seconds),
                reading("pusher_last_send_success_timestamp_seconds", self.last_success),
            ]
            for why in sorted(set(KNOWN_DROP_REASONS) | set(self.dropped)):
                out.append(reading("pusher_samples_dropped_total", self.dropped[why],
                                   (("reason", why),)))  # fmt: skip
            for code, n in sorted(self.responses.items()):
                out.append(reading("pusher_requests_total", n, (("code", code),)))
            for why, n in sorted(self.rejected.items()):
                by = (("reason", why),)
                out.append(reading("pusher_requests_rejected_total", n, by))
                out.append(reading("pusher_rejected_request_samples_total",
                                   self.rejected_samples[why], by))  # fmt: skip
        if self.pacing is not None:
            out.extend(self.pacing())
        return out


class Backoff:
    """Exponential backoff with jitter, from `minimum` doubling to `maximum`."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.current = minimum

    def start_over(self) -> None:
        """After a success: the next failure waits the least again."""
        self.current = self.minimum

    def retry_delay(self, retry_after: float | None) -> float:
        """The wait before a retry: the receiver's Retry-After when it asks for a positive
        delay (0 would be a busy loop), else the backoff jittered to half of it or more."""
        jittered = self.current / 2 + random.uniform(0, self.current / 2)
        self.current = min(self.current * 2, self.maximum)
        return retry_after if retry_after else jittered

    def hold_delay(self, retry_after: float | None) -> float:
        """The wait before probing refused credentials again: 10 s to 5 min."""
        delay = min(max(HOLD_MIN_PROBE, self.current, retry_after or 0), HOLD_MAX_PROBE)
        self.current = min(max(self.current * 2, HOLD_MIN_PROBE), HOLD_MAX_PROBE)
        return delay


class TokenBucket:
    """A rate in units per second (samples, or bytes) with a burst of `burst` units.

    `take(n)` says how long to wait before sending `n` units and counts them as sent from
    then on: the bucket may go into debt, so a request larger than the burst waits its time
    instead of starving. A rate of 0 is no limit. Pure: the clock is injected.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        if self.rate > 0:
            self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def set_rate(self, rate: float, burst: float) -> None:
        self._refill()
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)

    def take(self, n: float) -> float:
        if self.rate <= 0:
            return 0.0
        self._refill()
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)


class RateMeter:
    """Samples delivered per second over the last `window` seconds."""

    def __init__(self, clock: Callable[[], float], window: float = RATE_WINDOW) -> None:
        self.clock = clock
        self.window = window
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def add(self, n: int) -> None:
        self._events.append((self.clock(), n))
        self._total += n
        self._expire()

    def _expire(self) -> None:
        horizon = self.clock() - self.window
        while self._events and self._events[0][0] < horizon:
            self._total -= self._events.popleft()[1]

    def rate(self) -> float:
        self._expire()
        return self._total / self.window


class AdaptiveRate:
    """The backlog's rate limit in samples per second (0: none), adapted to 429s (AIMD)
    under the static cap; without a cap there is nothing to adapt (the measured rate of a
    node just back from an outage is no base to halve: it collapsed a backlog to a crawl).

    A 429 multiplies the limit by `DECREASE`. Each second of success then adds the cap /
    `RAMP_SECONDS`, up to the cap. The step is the same for every node of a fleet with the same cap,
    whatever its current rate: that is what makes AIMD fair (a node pushed down by others'
    load climbs back as fast as they do; a step in proportion to its own rate would leave it
    low). A 429 for a request sent before the last decrease is no new signal (the other
    lane's request in flight, say): only one sent at the lowered rate can lower it again.
    """

    def __init__(self, cap: float, adaptive: bool, clock: Callable[[], float]) -> None:
        self.cap = cap
        self.adaptive = adaptive and cap > 0
        self.clock = clock
        self.limit = cap
        self._step = 0.0
        self._at = clock()
        self._decreased = float("-inf")

    def throttled(self, sent_at: float) -> bool:
        """A 429 for a request sent at `sent_at`: lower the limit; False when it was not
        lowered (off, or the request went out before the last decrease)."""
        now = self.clock()
        if not self.adaptive or sent_at <= self._decreased:
            return False
        self.limit = max(MIN_RATE, self.limit * DECREASE)
        self._step = self.cap / RAMP_SECONDS
        self._decreased = self._at = now
        return True

    def succeeded(self) -> None:
        """A request went through: climb by the step for the time since the last change."""
        now = self.clock()
        elapsed, self._at = now - self._at, now
        if self.limit < self.cap:
            self.limit = min(self.cap, self.limit + self._step * elapsed)


class BacklogPacer:
    """How fast the backlog may go, shared by the lanes: the static caps
    (`remote_write.backlog_rate_limit`, `backlog_bytes_rate_limit`), the adaptive limit under
    them, and a random hold of up to `remote_write.reconnect_jitter` before the backlog
    starts after start-up and after an outage, so that a fleet does not come back in
    lockstep. Fresh rows are never paced or held."""

    def __init__(
        self,
        rw: RemoteWriteConfig,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.clock = clock
        self.rand = rand
        self.lock = threading.Lock()
        self.jitter = rw.reconnect_jitter if rw.reconnect_jitter >= 0 else interval
        self.rate = AdaptiveRate(rw.backlog_rate_limit, rw.adaptive_rate, clock)
        self.samples = TokenBucket(rw.backlog_rate_limit, rw.backlog_rate_limit, clock)
        byte_rate = rw.backlog_bytes_rate_limit
        self.bytes = TokenBucket(byte_rate, byte_rate, clock)
        self.meter = RateMeter(clock)
        self.throttled: collections.Counter[str] = collections.Counter()  # 429s by lane
        self.hold_until = clock() + rand() * self.jitter
        self.down = False  # the receiver is unreachable or failing (not throttling)
        self._backlog_at = float("-inf")  # when the backlog last went out
        self._per_row = 0.0  # samples per spooled row, averaged, for the ETA

    def held(self) -> float:
        """Seconds the backlog must still wait (start-up or reconnect jitter)."""
        with self.lock:
            return max(0.0, self.hold_until - self.clock())

    def reserve(self, samples: int, nbytes: int) -> float:
        """Seconds to wait before a backlog request's first attempt; counted as sent."""
        with self.lock:
            self._backlog_at = self.clock()
            return max(self.samples.take(samples), self.bytes.take(nbytes))

    def seen(self, samples: int) -> None:
        """A row read from the spool (for the ETA's estimate of what is spooled)."""
        with self.lock:
            self._per_row = samples if not self._per_row else 0.9 * self._per_row + 0.1 * samples

    def ok(self, samples: int, backlog: bool) -> bool:
        """A 2xx; True when it ends an outage (the backlog then waits its jitter)."""
        with self.lock:
            self.meter.add(samples)
            if backlog:
                self.rate.succeeded()
                self.samples.set_rate(self.rate.limit, self.rate.limit)
            if not self.down:
                return False
            self.down = False
            self.hold_until = self.clock() + self.rand() * self.jitter
            return True

    def failed(self, outcome: Outcome, lane: str, sent_at: float) -> None:
        """A failed attempt: a 429 lowers the backlog's rate and spends its burst (the next
        request waits its time at the new rate); anything else is an outage."""
        with self.lock:
            if outcome.code != "429":
                self.down = True
                return
            self.throttled[lane] += 1
            if self.rate.throttled(sent_at):
                self.samples.set_rate(self.rate.limit, self.rate.limit)
            self.samples.tokens = min(self.samples.tokens, 0.0)

    def retry_after(self, outcome: Outcome, backlog: bool) -> float | None:
        """The Retry-After a retry honours (None: the backoff's own delay).

        With the adaptive rate, a 429's is not honoured for the backlog: Mimir's does not know
        the tenant's budget, it grows with every retry of a request (6 s doubling to 96 s,
        ±50 %), and honoured it makes a throttled backlog crawl far below the tenant's limit.
        The lowered rate is the backoff instead: the request waits the ordinary backoff, then
        its place in the token bucket at the new rate. A fresh request throttled while the
        node's backlog goes out retries on the backoff too (30 ms doubling), as the backlog is
        what gives way; a fresh request of a node without a backlog honours it as before."""
        ra = outcome.retry_after
        if outcome.code != "429" or not self.rate.adaptive:
            return ra
        with self.lock:
            draining = self.clock() - self._backlog_at < RATE_WINDOW
        return None if backlog or draining else ra

    def readings(self, requests: int, backlog: bool) -> list[Reading]:
        """The limit, the 429s, and the backlog's ETA (`requests` spooled, whether any of
        them is older than the fresh cycles)."""
        with self.lock:
            limit = self.rate.limit
            rate = limit or self.meter.rate()
            samples = requests * self._per_row
            throttled = dict(self.throttled)
        eta = 0.0
        if backlog:
            eta = samples / rate if rate > 0 else math.inf
        out = [
            reading("pusher_backlog_rate_limit_samples_per_second", limit),
            reading("pusher_backlog_eta_seconds", eta),
        ]
        for lane in sorted(set(throttled) | {"backlog", "fresh"}):
            out.append(reading("pusher_throttled_requests_total", throttled.get(lane, 0),
                               (("lane", lane),)))  # fmt: skip
        return out


class ProtocolMemory:
    """The remote-write version new cycles are encoded in: 2 for `v2`, 1 for `v1`, and for
    `auto` 2 until the receiver shows it takes only 1.0, then 1 for good (a file in the spool
    directory keeps that across restarts)."""

    def __init__(self, choice: str, directory: str | None) -> None:
        self.choice = choice
        self._path = os.path.join(directory, PROTOCOL_FILE) if directory else None
        self.current = 1 if choice == "v1" else 2
        if choice == "auto" and self._path is not None:
            with contextlib.suppress(OSError), open(self._path, encoding="utf-8") as f:
                self.current = 1 if f.read().strip() == "1" else 2

    def fall_back(self, outcome: Outcome) -> None:
        """The receiver is 1.x: send 1.0 from now on, and remember it across restarts."""
        if self.current == 2:
            log.warning("the receiver does not take Remote-Write 2.0 (%s: %s); using 1.0 from "
                        "now on", outcome.code, outcome.message[:200])  # fmt: skip
        self.current = 1
        if self._path is not None:
            with contextlib.suppress(OSError), open(self._path, "w", encoding="utf-8") as f:
                f.write("1\n")


class RejectionLog:
    """Rejections logged without flooding: the first of each reason at once, then one
    summary line per reason per `every` seconds with what was rejected since. A receiver
    that refuses one guest's series every cycle gives one line a minute, not two a second."""

    def __init__(self, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self._logged_at: dict[str, float] = {}
        self._since: dict[str, tuple[int, int, str]] = {}  # reason -> (requests, samples, last)

    def rejected(self, reason: str, samples: int, code: str, message: str) -> None:
        if reason not in self._logged_at:
            self._logged_at[reason] = self.clock()
            log.error("receiver rejected %d sample(s) (%s %s): %s; further rejections for this "
                      "reason are summed up once a minute", samples, code, reason,
                      message[:300])  # fmt: skip
            return
        requests, total, _ = self._since.get(reason, (0, 0, ""))
        self._since[reason] = (requests + 1, total + samples, f"{code}: {message[:300]}")
        self.flush()

    def flush(self) -> None:
        """The summary lines that are due."""
        now = self.clock()
        for reason, (requests, samples, last) in list(self._since.items()):
            if now - self._logged_at[reason] >= self.every:
                log.error("receiver rejected %d more request(s), %d sample(s), as %s in the last "
                          "%.0fs; the latest (%s)", requests, samples, reason,
                          now - self._logged_at[reason], last)  # fmt: skip
                self._logged_at[reason] = now
                del self._since[reason]


class OutageLog:
    """What the log says of an outage: its first failed attempt, then at most one line a
    minute (an outage of hours must not fill the disk with log lines), and its end.
    `requests()`: the spooled requests, read only for a line that is written."""

    def __init__(
        self,
        requests: Callable[[], int],
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = requests
        self.every = every
        self.clock = clock
        self.failing = 0  # failed attempts since the last success
        self._retry_logged = float("-inf")
        self._hold_logged = float("-inf")

    def retrying(self, outcome: Outcome, delay: float) -> None:
        self.failing += 1
        now = self.clock()
        if self.failing == 1 or now - self._retry_logged >= self.every:
            self._retry_logged = now
            log.warning("remote write failed (%s: %s); %d attempt(s) so far, %d request(s) "
                        "spooled; retrying in %.2fs", outcome.code, outcome.message[:200],
                        self.failing, self.requests(), delay)  # fmt: skip

    def holding(self, outcome: Outcome) -> None:
        now = self.clock()
        if now - self._hold_logged >= self.every:
            self._hold_logged = now
            log.error("receiver refused the request (%s: %s); holding %d request(s) in the "
                      "spool and probing again", outcome.code, outcome.message[:200],
                      self.requests())  # fmt: skip

    def succeeded(self) -> None:
        if self.failing:
            log.info("remote write recovered after %d failed attempt(s)", self.failing)
            self.failing = 0


class Delivery:
    """Drains the spool into the transport. One instance serves every lane."""

    def __init__(
        self,
        rw: RemoteWriteConfig,
        interval: float,
        spool: Spool,
        transport: Transport,
        protocol: ProtocolMemory,
        clock: Callable[[], float] = time.time,
        on_limit: Callable[[str, int], None] | None = None,
    ) -> None:
        """`on_limit(mimir_id, value)`: a rejection named one of the tenant's label limits."""
        self.rw = rw
        self.interval = interval  # collect.interval: the last two cycles are fresh
        self.spool = spool
        self.transport = transport
        self.protocol = protocol
        self.clock = clock
        self.on_limit = on_limit
        self.pacer = BacklogPacer(rw, interval)
        self.stats = DeliveryStats(pacing=self._pacing_readings)
        self.stopping = threading.Event()  # no new rows will come: return once empty
        self.deadline = float("inf")  # monotonic: give up sending then (the shutdown grace)
        self._wake: dict[str, threading.Event] = {}  # per lane: the spool has new data
        # Notified when a request goes through after failed ones, or on stop: a lane waiting
        # to retry tries again at once (the receiver is back).
        self._back = threading.Condition()
        self._recoveries = 0
        self._rejections = RejectionLog()
        self._outage = OutageLog(lambda: self.spool.stats()[0])

    def wake(self) -> None:
        for event in list(self._wake.values()):
            event.set()

    def stop(self, deadline: float) -> None:
        """Send what is left until `deadline` (monotonic), then stop."""
        self.deadline = deadline
        self.stopping.set()
        self.wake()
        with self._back:
            self._back.notify_all()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # --- a lane

    def drain(self, lane: Lane = "all") -> None:
        """Send until the deadline passes, or until the spool is empty once stopping."""
        wake = self._wake.setdefault(lane, threading.Event())
        while self.remaining() > 0:
            rows = self._next_rows(lane)
            if not rows:
                if self.stopping.is_set():
                    return
                wake.wait(1.0)
                wake.clear()
                continue
            rows = self._drop_too_old(rows)
            if not rows:
                continue
            result = self.deliver(rows, lane)
            if result != "done":
                self.spool.release(rows)  # for the backlog lane, or the next start
            if result == "deadline":
                return

    def _next_rows(self, lane: Lane) -> list[Row]:
        since = before = None
        if lane == "fresh":
            since = self._fresh_since_ms()
        elif lane == "backlog":
            before = self._fresh_since_ms()
        rows = self.spool.peek(self.rw.max_samples_per_send, since, before, claim=True)
        for r in rows:
            self.pacer.seen(r.samples)
        return rows

    def _fresh_since_ms(self) -> int:
        """Rows from the last two cycles count as fresh."""
        return int((self.clock() - 2 * self.interval) * 1000)

    def _drop_too_old(self, rows: list[Row]) -> list[Row]:
        max_age = self.rw.max_sample_age
        if max_age <= 0:
            return rows
        horizon = (self.clock() - max_age) * 1000
        old = [r for r in rows if r.ts_ms < horizon]
        if not old:
            return rows
        self.spool.remove(old)
        n = sum(r.samples for r in old)
        self.stats.drop("too_old", n)
        log.warning("dropped %d sample(s) older than remote_write.max_sample_age", n)
        return [r for r in rows if r.ts_ms >= horizon]

    # --- one batch

    def deliver(self, rows: list[Row], lane: Lane = "all") -> Result:
        """Send one batch of spooled rows to the end: "done" when they are delivered or
        dropped, "deadline" when the shutdown deadline came first, "handover" when the
        fresh lane's rows aged into the backlog lane's while it was retrying them."""
        parts = _parts(rows)
        attempt = 0
        pace = True  # the next backlog request takes its place under the rate limits
        backlog = lane == "backlog" or (
            lane == "all" and max(r.ts_ms for r in rows) < self._fresh_since_ms()
        )
        backoff = Backoff(self.rw.min_backoff, self.rw.max_backoff)
        self._rejections.flush()
        while parts:
            part = parts[0]
            if part.proto == 2 and self.protocol.current == 1:
                part = parts[0] = Request(v2_to_v1(part.body), part.samples, part.ts_ms, 1)
            if attempt:
                with self.stats.lock:
                    self.stats.retried += part.samples
            if backlog and not self._pace(part, pace):
                return "deadline"
            sent_at = self.pacer.clock()
            outcome = self._post(part, attempt)
            if outcome.kind == "unsupported" and self.protocol.choice == "auto":
                self.protocol.fall_back(outcome)
                continue  # the same part again, as 1.0
            if outcome.kind in ("retry", "hold", "unsupported"):
                self.pacer.failed(outcome, "backlog" if backlog else "fresh", sent_at)
                pace = outcome.code == "429"  # a throttled request queues again, at the new rate
                attempt += 1
                wait = self._wait_after(outcome, backoff, backlog)
                if wait != "done":
                    return wait
                if lane == "fresh" and max(r.ts_ms for r in rows) < self._fresh_since_ms():
                    return "handover"
                continue
            parts[0:1] = self._settle(part, outcome)
            if outcome.kind == "ok":
                attempt, pace = 0, True
                backoff.start_over()
                if self.pacer.ok(part.samples, backlog):
                    self._receiver_back()
        self.spool.remove(rows)
        return "done"

    def _pace(self, part: Request, pace: bool) -> bool:
        """Before a backlog request: its jitter hold (not while stopping: the grace is for
        sending), then, on a first attempt or after a 429, its place under the rate limits.
        False when the shutdown deadline comes first."""
        hold = 0.0 if self.stopping.is_set() else self.pacer.held()
        if hold and not self._sleep(hold):
            return False
        wait = self.pacer.reserve(part.samples, len(part.body)) if pace else 0.0
        return not wait or self._sleep(wait)

    def _pacing_readings(self) -> list[Reading]:
        requests, _, oldest = self.spool.stats()
        backlog = oldest is not None and oldest < self._fresh_since_ms()
        return self.pacer.readings(requests, backlog)

    def _post(self, part: Request, attempt: int) -> Outcome:
        start = time.monotonic()
        outcome = self.transport.send(part.body, attempt, part.proto)
        with self.stats.lock:
            self.stats.send_seconds += time.monotonic() - start
            self.stats.responses[outcome.code] += 1
        return outcome

    def _settle(self, part: Request, outcome: Outcome) -> list[Request]:
        """What replaces a part the receiver answered for good: nothing, or its halves."""
        if outcome.kind == "too_large":
            return self._split(part, outcome.code)
        if outcome.kind == "reject":
            self.stats.reject(outcome.reason, part.samples)
            self._rejections.rejected(outcome.reason, part.samples, outcome.code, outcome.message)
            if outcome.limit is not None and self.on_limit is not None:
                self.on_limit(outcome.reason, outcome.limit)
            return []
        # ok. A 2.0 receiver says how many it wrote: the rest were dropped, not sent.
        sent = part.samples
        if outcome.written is not None and outcome.written < part.samples:
            sent = max(0, outcome.written)
            self.stats.drop("not_written", part.samples - sent)
        self._outage.succeeded()
        with self.stats.lock:
            self.stats.sent += sent
            self.stats.sent_bytes += len(part.body)
            self.stats.last_success = self.clock()
        return []

    def _receiver_back(self) -> None:
        """A request went through after failed ones: the other lane stops waiting."""
        with self._back:
            self._recoveries += 1
            self._back.notify_all()

    def _retry_after(self, outcome: Outcome, backlog: bool) -> float | None:
        """The receiver's Retry-After as honoured (`BacklogPacer.retry_after` for a 429).

        A 5xx's only up to `max_backoff`: a receiver that fails is an outage, not a throttle,
        and Mimir scales its Retry-After from the request's Retry-Attempt (6 s doubling to
        96 s), so after an outage of a minute the first 5xx of a Mimir starting up would keep
        the node silent for up to a minute and a half after it is back."""
        retry_after = self.pacer.retry_after(outcome, backlog)
        if retry_after and outcome.code != "429":
            return min(retry_after, self.rw.max_backoff)
        return retry_after

    def _wait_after(self, outcome: Outcome, backoff: Backoff, backlog: bool) -> Result:
        """Wait before sending the same part again; "deadline" when there is no time. The
        wait ends early when a request goes through on another lane."""
        if outcome.kind == "retry":
            delay = backoff.retry_delay(self._retry_after(outcome, backlog))
            self._outage.retrying(outcome, delay)
        else:
            if outcome.kind == "unsupported":  # protocol: v2 and a 1.x receiver
                why = "the receiver does not take Remote-Write 2.0 (remote_write.protocol: v2)"
                outcome = Outcome("hold", outcome.code, message=why)
            self._outage.holding(outcome)
            delay = backoff.hold_delay(outcome.retry_after)
        return "done" if self._sleep(delay, until_back=True) else "deadline"

    def _sleep(self, seconds: float, until_back: bool = False) -> bool:
        """Wait for a backoff; False when the shutdown deadline leaves no time for it.
        `until_back`: or until a request goes through on another lane."""
        if seconds >= self.remaining():
            return False
        if self.stopping.is_set():
            time.sleep(max(0.0, seconds))
        elif not until_back:
            self.stopping.wait(seconds)
        else:
            with self._back:
                seen = self._recoveries
                self._back.wait_for(
                    lambda: self._recoveries != seen or self.stopping.is_set(), seconds
                )
        return True

    def _split(self, part: Request, code: str) -> list[Request]:
        halves = split_body(part.body, part.proto)
        if halves is None:
            self.stats.drop("too_large", part.samples)
            log.error("a single series is larger than the receiver accepts; dropped")
            return []
        log.warning("receiver answered %s; splitting a request of %d sample(s)", code,
                    part.samples)  # fmt: skip
        return list(halves)


def _parts(rows: Iterable[Row]) -> list[Request]:
    """A batch's requests: 1.0 rows merged into one (fewer, larger requests drain faster);
    2.0 rows one by one, each carrying its own symbol table."""
    rows = list(rows)
    if len(rows) == 1 or any(r.proto != 1 for r in rows):
        return [Request(r.body, r.samples, r.ts_ms, r.proto) for r in rows]
    body = merge_bodies(r.body for r in rows)
    return [Request(body, sum(r.samples for r in rows), rows[-1].ts_ms)]
