"""libvirtd's CPU for the host capacity calls of one cycle (`collect.host_stats`), beside the
bulk stats call, on this host's running guests.

    python benchmarks/host_cost.py [--calls 300] [--rounds 5]

(the project's venv python, as root: it reads libvirtd's CPU time from /proc.) Each call runs
`--calls` times back to back between two quiet gaps; the gaps' rate is taken off; the median
over `--rounds` rounds is printed, in ms of libvirtd CPU per cycle.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from pusher.host import read_host_stats, read_layout

RO_URI = "qemu:///system?socket=/var/run/libvirt/libvirt-sock-ro"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def libvirtd_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def induced_ms(pid: int, call: Callable[[], Any], calls: int, gap: float = 1.5) -> float:
    g0 = libvirtd_ticks(pid)
    time.sleep(gap)
    b0, t0 = libvirtd_ticks(pid), time.monotonic()
    for _ in range(calls):
        call()
    b1, t1 = libvirtd_ticks(pid), time.monotonic()
    time.sleep(gap)
    g1 = libvirtd_ticks(pid)
    rate = ((b0 - g0) + (g1 - b1)) / CLK_TCK / (2 * gap)
    return 1000 * ((b1 - b0) / CLK_TCK - rate * (t1 - t0)) / calls


def bulk(conn: Any, flags: int) -> None:
    # A guest of another user of this libvirtd may go away during the call.
    with contextlib.suppress(libvirt.libvirtError):
        conn.getAllDomainStats(0, flags)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.openReadOnly(RO_URI)
    pid = int(Path("/var/run/libvirtd.pid").read_text())
    layout = read_layout(conn)
    flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
    calls: dict[str, tuple[Callable[[], Any], int]] = {
        "host stats (3 calls)": (lambda: read_host_stats(conn, layout), args.calls),
        "bulk stats call": (lambda: bulk(conn, flags), max(1, args.calls // 15)),
    }
    print(f"{len(conn.listAllDomains(0))} domains; huge page sizes {layout.huge_page_kib} KiB, "
          f"{layout.cells} NUMA node(s)")  # fmt: skip
    for name, (call, n) in calls.items():
        runs = [induced_ms(pid, call, n) for _ in range(args.rounds)]
        print(f"{name}: {statistics.median(runs):.2f} ms of libvirtd CPU per cycle "
              f"(rounds: {', '.join(f'{r:.2f}' for r in runs)})")  # fmt: skip
    conn.close()


if __name__ == "__main__":
    main()
