"""What `buffer.fsync` costs: one cycle's requests written to the spool, with and without it.

    python benchmarks/spool_write.py [--guests 20] [--cycles 40] [--dir /var/lib/...]
                                     [--protocol v1|v2] [--bodies]

Writes `cycles` cycles of `guests` guests (the recorded snapshot, scaled, every counter a
little higher each cycle) cycle by cycle with `Spool.put_cycle`, as the agent does before it
sends, into a fresh spool with fsync on and into another with it off. Reports the median
cycle's wall and CPU time: the cycle's record made and stored. `--bodies` times what agents
did before the record format: the cycle encoded into request bodies, and those stored
(`Spool.put`). Run it on the file system the spool will live on (`--dir`).
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

from common import cycle_plans, moved, snapshot

from pusher.encode import Encoder, EncoderV2
from pusher.series import DomainSeries
from pusher.spool import Spool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guests", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--dir", default="/var/tmp", help="where the spools go (default /var/tmp)")
    ap.add_argument("--protocol", choices=["v1", "v2"], default="v1")
    ap.add_argument("--bodies", action="store_true", help="encode and store request bodies")
    args = ap.parse_args()
    snap = snapshot(args.guests, 1_795_459_495_000)
    plans = cycle_plans(snap, {})
    proto = 2 if args.protocol == "v2" else 1
    encoder = EncoderV2(2000) if proto == 2 else Encoder(2000)
    cache: dict[str, DomainSeries] = {}
    cycles = [(snap.ts_ms + i * 15_000, moved(snap, i, cache)) for i in range(args.cycles)]
    samples = sum(len(v) for _, v in plans)
    print(f"{args.guests} guests: {samples:,} samples per cycle, {args.cycles} cycles, "
          f"protocol {args.protocol}, {'request bodies' if args.bodies else 'cycle records'}, "
          f"spools under {args.dir}")  # fmt: skip
    for fsync in (True, False):
        work = tempfile.mkdtemp(dir=args.dir)
        try:
            spool = Spool(str(Path(work) / "spool"), 2**30, fsync)
            wall, cpu = [], []
            for ts_ms, cycle in cycles:
                t, c = time.perf_counter(), time.process_time()
                if args.bodies:
                    spool.put(encoder.encode([], ts_ms, b"", cycle))
                else:
                    spool.put_cycle(ts_ms, cycle, [], proto)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            spool.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"  fsync {'on ' if fsync else 'off'}: {statistics.median(wall) * 1000:.2f} ms wall, "
              f"{statistics.median(cpu) * 1000:.2f} ms CPU per cycle (median)")  # fmt: skip


if __name__ == "__main__":
    main()
