"""Against the real Grafana Mimir with a throttled tenant: the paced, adaptive backlog drain.

In-process: the agent's real `Delivery` with its two `backfill` lanes on threads, a real
`Spool` holding a backlog (as an outage leaves it) and a real `Sender`, pushing to a real
Mimir (tests/mimir.py) whose tenant takes far less than the node could send. Fresh cycles keep
coming while the backlog drains. What arrived is counted by Mimir's own query API.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from mimir import Mimir

from pusher.config import from_mapping
from pusher.delivery import Delivery, ProtocolMemory
from pusher.encode import EncoderV2
from pusher.sender import Sender
from pusher.spool import Row, Spool

RATE = 2000  # the tenant's ingestion_rate and burst, samples/s
SERIES = 500  # per cycle
BACKLOG_CYCLES = 60  # 30,000 samples: 15 s at the tenant's rate
INTERVAL = 1.0
# The node's static cap as docs/operations.md sizes it: twice the node's share of what the
# fresh cycles leave of the tenant's rate (here the node is alone: 2 x 1,500), so the
# tenant cannot take it and the adaptive rate must find what it can.
CAP = 2 * (RATE - SERIES / INTERVAL)


class AckTimes(Spool):
    """The real spool, noting how long after its timestamp each fresh row was acknowledged."""

    def __init__(self, directory: str, fresh_from_ms: int) -> None:
        super().__init__(directory, 10**9, fsync=False)
        self.fresh_from_ms = fresh_from_ms
        self.fresh_lateness: list[float] = []

    def remove(self, rows: Iterable[Row]) -> None:
        rows = list(rows)
        super().remove(rows)
        now = time.time()
        self.fresh_lateness += [now - r.ts_ms / 1000 for r in rows if r.ts_ms >= self.fresh_from_ms]


def cycle(step: int) -> list[tuple[tuple[str, tuple[()], tuple[tuple[str, str], ...]], float]]:
    # One name, told apart by a label: count_over_time drops the name.
    return [
        (("paced", (), (("cluster", "pace"), ("i", str(i)))), float(step)) for i in range(SERIES)
    ]


def test_a_throttled_tenant_gets_the_backlog_paced_to_its_rate_with_few_429s(
    tmp_path: Path,
) -> None:
    name = f"t-{uuid.uuid4().hex[:12]}"
    limits = {"ingestion_rate": RATE, "ingestion_burst_size": RATE,
              "out_of_order_time_window": "1h"}  # fmt: skip
    m = Mimir(tmp_path / "mimir", overrides={name: limits})
    start = time.time()
    spool = AckTimes(str(tmp_path / "spool"), int(start * 1000))
    encoder = EncoderV2(500)
    for c in range(BACKLOG_CYCLES):  # ten minutes of backlog, 10 s apart
        ts_ms = int((start - 600 + c * 10) * 1000)
        spool.put(encoder.encode(cycle(c), ts_ms))
    cfg = from_mapping({"remote_write": {
        "url": m.push_url, "tenant": name, "order": "backfill", "max_samples_per_send": 500,
        "backlog_rate_limit": CAP, "reconnect_jitter": "1s", "timeout": "5s",
    }}, {}, "node-1")  # fmt: skip
    rw = cfg.remote_write
    d = Delivery(rw, INTERVAL, spool, Sender(rw), ProtocolMemory(rw.protocol, spool.directory))
    lanes = [threading.Thread(target=d.drain, args=(lane,)) for lane in ("fresh", "backlog")]
    fresh = 0
    try:
        t0 = time.monotonic()
        for lane in lanes:
            lane.start()
        while spool.stats()[0] and time.monotonic() - t0 < 90:
            fresh += 1
            spool.put(encoder.encode(cycle(10**6 + fresh), int(time.time() * 1000)))
            d.wake()
            time.sleep(INTERVAL)
        drained = time.monotonic() - t0
        d.stop(time.monotonic() + 10)
        for lane in lanes:
            lane.join()
        readings = {(n, labels): v for n, labels, v in d.stats.readings()}
        stored = m.value('sum(count_over_time({cluster="pace"}[20m]))', name)
    finally:
        d.transport.close()
        spool.close()
        m.stop()
    expected = (BACKLOG_CYCLES + fresh) * SERIES
    print(f"drained in {drained:.1f}s, {d.stats.responses['429']} 429s, limit at the end "
          f"{readings[('pusher_backlog_rate_limit_samples_per_second', ())]:.0f}/s, fresh "
          f"acknowledged within {max(spool.fresh_lateness):.2f}s")  # fmt: skip
    assert stored == expected, (stored, expected)  # nothing lost, nothing rejected
    assert d.stats.sent == expected
    # The physical limit is 30,000 / (2,000 - 500 fresh) = 20 s; a drain at the tenant's
    # rate, found by halving and probing, takes a little more.
    assert drained < 60, drained
    throttled = d.stats.responses["429"]
    assert throttled <= 12, throttled  # one per halving, a few more while probing
    limit = readings[("pusher_backlog_rate_limit_samples_per_second", ())]
    assert 0 < limit < CAP  # the adaptive rate came down from the cap
    assert readings[("pusher_throttled_requests_total", (("lane", "backlog"),))] > 0
    # Fresh cycles were never late behind the backlog: each in within an interval or two.
    assert max(spool.fresh_lateness) < 3 * INTERVAL, sorted(spool.fresh_lateness)[-5:]
