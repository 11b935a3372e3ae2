"""Record real `getAllDomainStats` snapshots (stats and domain XML) as benchmark data.

    python benchmarks/record.py [URI] > benchmarks/data/snapshot.json
    python benchmarks/record.py [URI] --cycles 40 --interval 5 --match 'instance-0004a1..' \\
        > /tmp/seq.json

Run it while guests exist (the integration suite's guests, or real ones). The first form
records one snapshot: the benchmarks scale the recorded guests to any count by cloning them
under new names and UUIDs. The second records `--cycles` snapshots `--interval` seconds
apart of the domains whose names match `--match` (a regular expression on the whole name),
for the benchmarks that need values as they move (benchmarks/spool_bytes.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

import libvirt

from pusher.collect import STATS_FLAGS, STATS_GROUPS


def snapshot(conn: libvirt.virConnect, match: re.Pattern[str] | None) -> list[dict[str, Any]]:
    out = []
    for dom, stats in conn.getAllDomainStats(STATS_GROUPS, STATS_FLAGS):
        if match is None or match.fullmatch(dom.name()):
            out.append({"name": dom.name(), "uuid": dom.UUIDString(), "xml": dom.XMLDesc(0),
                        "stats": stats})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("uri", nargs="?", default="qemu:///system")
    ap.add_argument("--cycles", type=int, default=0, help="record a sequence of this many")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--match", help="only domains whose whole name matches this expression")
    args = ap.parse_args()
    conn = libvirt.openReadOnly(args.uri)
    match = re.compile(args.match) if args.match else None
    if not args.cycles:
        json.dump(snapshot(conn, match), sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
        return
    cycles = []
    for _ in range(args.cycles):
        started = time.time()
        cycles.append({"ts_ms": int(started * 1000), "domains": snapshot(conn, match)})
        time.sleep(max(0.0, args.interval - (time.time() - started)))
    json.dump({"cycles": cycles}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
