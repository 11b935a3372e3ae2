"""What `buffer.fsync` costs: one cycle's requests written to the spool, with and without it.

    python benchmarks/spool_write.py [--guests 20] [--cycles 40] [--dir /var/lib/...]

Encodes `cycles` cycles of `guests` guests (the recorded snapshot, scaled) with the agent's
encoder, then writes them cycle by cycle with `Spool.put`, as the agent does before it sends,
into a fresh spool with fsync on and into another with it off. Reports the median cycle's
wall and CPU time. Run it on the file system the spool will live on (`--dir`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import cycle_plans, snapshot

from pusher.encode import Encoder, Request
from pusher.spool import Spool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guests", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--dir", default="/var/tmp", help="where the spools go (default /var/tmp)")
    args = ap.parse_args()
    snap = snapshot(args.guests, 1_795_459_495_000)
    plans = cycle_plans(snap, {})
    encoder = Encoder(2000)
    cycles: list[list[Request]] = [
        encoder.encode([], snap.ts_ms + i * 15_000, b"", plans) for i in range(args.cycles)
    ]
    samples = sum(r.samples for r in cycles[0])
    print(f"{args.guests} guests: {samples:,} samples in {len(cycles[0])} request(s) per cycle, "
          f"{args.cycles} cycles, spools under {args.dir}")  # fmt: skip
    for fsync in (True, False):
        work = tempfile.mkdtemp(dir=args.dir)
        try:
            spool = Spool(str(Path(work) / "spool"), 2**30, fsync)
            wall, cpu = [], []
            for requests in cycles:
                t, c = time.perf_counter(), time.process_time()
                spool.put(requests)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            spool.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"  fsync {'on ' if fsync else 'off'}: {statistics.median(wall) * 1000:.2f} ms wall, "
              f"{statistics.median(cpu) * 1000:.2f} ms CPU per cycle (median)")  # fmt: skip


if __name__ == "__main__":
    main()
