"""Record a real `getAllDomainStats` snapshot (stats and domain XML) as benchmark data.

    python benchmarks/record.py [URI] > benchmarks/data/snapshot.json

Run it while guests exist (the integration suite's guests, or real ones). The benchmarks
scale the recorded guests to any count by cloning them under new names and UUIDs.
"""

from __future__ import annotations

import json
import sys

import libvirt

from pusher.collect import STATS_FLAGS, STATS_GROUPS


def main() -> None:
    uri = sys.argv[1] if len(sys.argv) > 1 else "qemu:///system"
    conn = libvirt.openReadOnly(uri)
    out = []
    for dom, stats in conn.getAllDomainStats(STATS_GROUPS, STATS_FLAGS):
        out.append(
            {"name": dom.name(), "uuid": dom.UUIDString(), "xml": dom.XMLDesc(0), "stats": stats}
        )
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
