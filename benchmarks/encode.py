"""Micro benchmark: libvirt stats -> compressed remote-write request bytes, on one core.

    python benchmarks/encode.py [--guests 300] [--cycles 30] [--protocol v1|v2]

The recorded `getAllDomainStats` snapshot (benchmarks/data/snapshot.json), scaled to
`--guests` guests, goes through the agent's own code for a cycle: per-domain plans
(`loop.plan_snapshot`), values, and the encoder with snappy compression. Counters move every
cycle, as real ones do. Reports the steady state (plans and series heads cached, the normal
case) and a cold first cycle (every domain new), per sample and per series, and the
process's peak resident memory (the agent's whole state for that many guests: plans, caches,
encoded heads, plus Python and its libraries).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import cycle_plans, snapshot

from pusher.collect import Snapshot
from pusher.encode import Encoder, EncoderV2
from pusher.series import DomainSeries


def one_cycle(
    snap: Snapshot, cache: dict[str, DomainSeries], encoder: Encoder | EncoderV2, ts_ms: int
) -> tuple[int, int]:
    requests = encoder.encode([], ts_ms, b"", cycle_plans(snap, cache))
    return sum(r.samples for r in requests), sum(len(r.body) for r in requests)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guests", type=int, default=300)
    ap.add_argument("--cycles", type=int, default=30)
    ap.add_argument("--protocol", choices=["v1", "v2"], default="v1")
    args = ap.parse_args()
    snap = snapshot(args.guests, 1_795_459_495_000)
    for d in snap.domains:  # make the counters move between cycles
        d.stats["cpu.time"] = int(d.stats["cpu.time"])

    cache: dict[str, DomainSeries] = {}
    encoder = Encoder(2000) if args.protocol == "v1" else EncoderV2(2000)
    t = time.process_time()
    samples, nbytes = one_cycle(snap, cache, encoder, snap.ts_ms)
    cold = time.process_time() - t

    times = []
    for c in range(1, args.cycles + 1):
        for d in snap.domains:
            d.stats["cpu.time"] += 1_000_000
            d.stats["vcpu.0.time"] += 500_000
        t = time.process_time()
        samples, nbytes = one_cycle(snap, cache, encoder, snap.ts_ms + c * 15_000)
        times.append(time.process_time() - t)
    # The median cycle: on a shared VM a few cycles run slow for reasons outside the process.
    steady = statistics.median(times)
    q = statistics.quantiles(times, n=10)
    series_per_guest = samples / args.guests
    print(
        f"{args.guests} guests, {samples:,} samples per cycle "
        f"({series_per_guest:.0f} series per guest), python {sys.version.split()[0]}"
    )
    print(
        f"steady state: {steady * 1000:.1f} ms CPU per cycle = "
        f"{steady / samples * 1e6:.3f} us per sample = {samples / steady:,.0f} samples/s "
        f"(median of {args.cycles} cycles; 10th-90th percentile "
        f"{q[0] / samples * 1e6:.3f}-{q[-1] / samples * 1e6:.3f} us per sample)"
    )
    print(f"cold cycle:   {cold * 1000:.1f} ms CPU ({cold / samples * 1e6:.2f} us per sample)")
    version = "1.0" if args.protocol == "v1" else "2.0"
    print(
        f"compressed:   {nbytes / samples:.1f} bytes per sample on the wire "
        f"(remote-write {version})"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS:     {rss:.1f} MiB for the process (Python, libraries and this state)")


if __name__ == "__main__":
    main()
