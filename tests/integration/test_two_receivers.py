"""Several endpoints against two real receivers: the real Grafana Mimir and Debian's Prometheus.

The agent runs as a real process on the real guests and pushes every cycle to both. Mimir is
stopped for minutes (PUSHER_TEST_ENDPOINT_OUTAGE_S, 120 s by default): Prometheus must get
every cycle on time meanwhile, and once Mimir is back it must catch up with nothing lost:
both receivers end up with the same samples of every series over the run. Every check is a
query of the receivers' own APIs.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path

from agent import AgentProcess, stop_cleanly, wait_for, write_config
from guests import Guest
from mimir import Mimir
from receiver import Receiver

INTERVAL = 1.0
CPU = "libvirt_domain_info_cpu_time_seconds_total"
FAST_RETRY = {"min_backoff": "50ms", "max_backoff": "1s", "timeout": "5s"}
OUTAGE_S = float(os.environ.get("PUSHER_TEST_ENDPOINT_OUTAGE_S", "120"))
# Prometheus must have a cycle this fresh all through Mimir's outage.
ON_TIME_S = 5 * INTERVAL


Samples = list[tuple[float, float]]


def prom_samples(rx: Receiver, selector: str, seconds: float, at: float) -> Samples:
    """One series' raw samples (timestamp, value) in Prometheus within `seconds` before `at`."""
    result = rx.query(f"{selector}[{int(seconds)}s]", at)
    assert len(result) <= 1, f"{selector} matches {len(result)} series"
    return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []


def mimir_samples(m: Mimir, tenant: str, selector: str, seconds: float, at: float) -> Samples:
    return m.range_values(selector, tenant, seconds, at)


def missing_cycles(cycles_total: Samples) -> list[tuple[float, float]]:
    """Cycles the agent collected that a receiver lacks: every cycle carries its own number
    (pusher_cycles_total counts it in), so consecutive samples differ by one unless a cycle
    in between did not arrive. (A tick the agent skipped on a loaded machine is no hole.)"""
    pairs = itertools.pairwise(cycles_total)
    return [(t0, t1) for (t0, n0), (t1, n1) in pairs if n1 - n0 != 1]


def prom_newest(rx: Receiver) -> float:
    result = rx.query("max(timestamp(libvirt_up))")
    return float(result[0]["value"][1]) if result else 0.0


def test_one_endpoint_down_for_minutes_holds_back_nothing_and_catches_up_losing_nothing(
    guests: list[Guest], tmp_path: Path
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    m = Mimir(tmp_path / "mimir")
    rx = Receiver(tmp_path / "prometheus")
    endpoints = [
        {"name": "mimir", "url": m.push_url, "tenant": tenant, **FAST_RETRY},
        {"name": "prom", "url": rx.write_url, **FAST_RETRY},  # protocol auto: falls back to 1.0
    ]
    cfg = write_config(tmp_path, m.push_url, remote_write=endpoints,
                       collect={"interval": f"{INTERVAL:g}s", "timeout": "1s"})  # fmt: skip
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        wait_for(lambda: m.query("libvirt_up", tenant) and rx.query("libvirt_up"), 60,
                 "the first cycles at both receivers")  # fmt: skip
        start = time.time()
        m.stop()
        stopped_at = time.time()
        worst_lag = 0.0
        waiting_for_mimir = 0.0
        while time.time() < stopped_at + OUTAGE_S:
            time.sleep(5)
            worst_lag = max(worst_lag, time.time() - prom_newest(rx))
            # Prometheus also hears how the other endpoint fares.
            backlog = rx.query('pusher_spool_requests{endpoint="mimir"}')
            if backlog:
                waiting_for_mimir = max(waiting_for_mimir, float(backlog[0]["value"][1]))
        m.start()  # the same data directory and ports
        restarted_at = time.time()
        wait_for(lambda: _caught_up(m, tenant), 120, "Mimir to catch up")
        caught_up_s = time.time() - restarted_at
        time.sleep(3 * INTERVAL)
        end = time.time() - 2 * INTERVAL  # every cycle up to here is delivered to both
        window = end - start
        # Every cycle of the run at both, and the same samples of every series.
        cycles = mimir_samples(m, tenant, "pusher_cycles_total", window, end)
        prom_cycles = prom_samples(rx, "pusher_cycles_total", window, end)
        per_guest = {}
        for g in guests:
            selector = f'{CPU}{{uuid="{g["uuid"]}"}}'
            per_guest[g["name"]] = (mimir_samples(m, tenant, selector, window, end),
                                    prom_samples(rx, selector, window, end))  # fmt: skip
        lost = m.query("pusher_samples_dropped_total > 0 or "
                       "pusher_rejected_request_samples_total > 0", tenant)  # fmt: skip
        log = stop_cleanly(agent)
    finally:
        agent.kill()
        m.stop()
        rx.stop()

    # Prometheus was never held back by Mimir's outage, and Mimir's copy was kept meanwhile.
    assert worst_lag < ON_TIME_S, f"Prometheus {worst_lag:.1f}s behind during the outage"
    assert waiting_for_mimir >= 0.8 * OUTAGE_S / INTERVAL, waiting_for_mimir
    assert missing_cycles(cycles) == [], missing_cycles(cycles)
    assert cycles == prom_cycles
    assert len(cycles) >= 0.5 * window / INTERVAL, (len(cycles), window)  # the agent ran
    for name, (at_mimir, at_prom) in per_guest.items():
        assert at_mimir == at_prom, name
        # (a guest slow to answer may miss a cycle: at both, and not a loss)
        assert len(at_mimir) >= 0.9 * len(cycles), (name, len(at_mimir), len(cycles))
    assert lost == [], lost
    # Each endpoint keeps its own protocol: Debian's Prometheus 2.42 takes only 1.0.
    spools = tmp_path / "spool" / "endpoints"
    assert (spools / "prom" / "protocol").read_text().strip() == "1"
    assert not (spools / "mimir" / "protocol").exists()
    assert "endpoint mimir: remote write failed" in log
    assert "endpoint prom: remote write failed" not in log
    counts = sorted({len(a) for a, _ in per_guest.values()})
    skipped = round((cycles[-1][0] - cycles[0][0]) / INTERVAL) + 1 - len(cycles)
    print(
        f"Mimir down {OUTAGE_S:.0f} s: Prometheus at most {worst_lag:.1f} s behind meanwhile, "
        f"up to {waiting_for_mimir:.0f} requests held for Mimir; Mimir caught up "
        f"{caught_up_s:.1f} s after its start; all {len(cycles)} cycles of {window:.0f} s at "
        f"both receivers ({skipped} ticks skipped by the loaded agent), samples per guest CPU "
        f"series {counts} at both, the same"
    )


def _caught_up(m: Mimir, tenant: str) -> bool:
    """Mimir's newest cycle is fresh and saw nothing older than a few cycles waiting for it."""
    newest = m.value("max(timestamp(libvirt_up))", tenant)
    age = m.value('max(pusher_spool_oldest_sample_age_seconds{endpoint="mimir"})', tenant,
                  default=1e9)  # fmt: skip
    return newest > time.time() - 5 * INTERVAL and age < 5 * INTERVAL
