"""libvirtd's CPU for the optional calls of issue 17: the storage pools of a cycle
(`collect.storage_pools`), one domain's vCPU placement (`collect.vcpu_placement`), and the stats
of the named domains with and without the `vm` group (KVM statistics).

    python benchmarks/extras_cost.py DOMAIN... [--calls 200] [--rounds 5]

(the project's venv python with PYTHONPATH at the checkout, as root: it reads libvirtd's CPU
time from /proc.) Method as in host_cost.py: each call runs `--calls` times back to back between
two quiet gaps, the gaps' rate is taken off, the median over `--rounds` rounds is printed.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
from host_cost import RO_URI, induced_ms

from pusher.collect import STATS_GROUPS
from pusher.placement import read_placement
from pusher.pools import StoragePools


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("domains", nargs="+")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.openReadOnly(RO_URI)
    pid = int(Path("/var/run/libvirtd.pid").read_text())
    doms = [conn.lookupByName(n) for n in args.domains]
    pools = StoragePools()
    nowait = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
    vm = STATS_GROUPS | libvirt.VIR_DOMAIN_STATS_VM
    calls: dict[str, Callable[[], Any]] = {
        f"storage pools ({len(pools.read(conn))} pools)": lambda: pools.read(conn),
        f"vCPU placement, {len(doms)} domain(s)": lambda: [read_placement(d) for d in doms],
        f"default groups, {len(doms)} domain(s)": lambda: conn.domainListGetStats(
            doms, STATS_GROUPS, nowait
        ),
        f"default groups + vm, {len(doms)} domain(s)": lambda: conn.domainListGetStats(
            doms, vm, nowait
        ),
    }
    for name, call in calls.items():
        runs = [induced_ms(pid, call, args.calls) for _ in range(args.rounds)]
        print(f"{name}: {statistics.median(runs):.3f} ms of libvirtd CPU per cycle "
              f"(rounds: {', '.join(f'{r:.3f}' for r in runs)})")  # fmt: skip
    conn.close()


if __name__ == "__main__":
    main()
