"""Micro benchmark: what `relabel_configs` costs the series stage, on one core.

    python benchmarks/relabel.py [--guests 300] [--cycles 30]

The recorded snapshot (benchmarks/data/snapshot.json), scaled to `--guests` guests, goes
through the agent's planner (`Planner.cycle`, the agent's own series added with `add_own`)
and the 1.0 encoder, once without rules and once with the CloudKitty rules of
config.example.yaml plus a drop rule (labelmap, labeldrop, replace, drop). Reports CPU per
cycle in the steady state (plans and relabeled plans cached, the normal case) and for a cold
first cycle (every domain new), per series sent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import yaml
from common import snapshot

from pusher.agent import own_samples
from pusher.catalog import Reporter
from pusher.collect import Snapshot
from pusher.config import from_mapping
from pusher.encode import Encoder
from pusher.series import Planner

RULES = """
nova:
  series_labels: [instance_name, project_name, project_uuid, user_uuid, flavor]
relabel_configs:
  - action: labelmap
    regex: (project|user)_uuid
    replacement: ${1}_id
  - action: labeldrop
    regex: (project|user)_uuid
  - source_labels: [uuid]
    target_label: id
  - action: drop
    source_labels: [__name__]
    regex: libvirt_domain_vcpu_delay_seconds_total
"""
PLAIN = "nova: {series_labels: [instance_name, project_name, project_uuid, user_uuid, flavor]}"


def run(doc: str, snap: Snapshot, cycles: int) -> tuple[float, float, float, float, int]:
    """(cold cycle, median cycle) for the planner alone and planner + encoder, in s; series."""
    planner = Planner.from_config(from_mapping(yaml.safe_load(doc), env={}, hostname="c-17"))
    encoder = Encoder(2000)
    plan_times, all_times = [], []
    n = 0
    for c in range(cycles + 1):
        for d in snap.domains:
            d.stats["cpu.time"] = int(d.stats["cpu.time"]) + 1_000_000
        t = time.process_time()
        cycle = planner.cycle(snap, frozenset(), 0)
        reporters: list[Reporter] = [planner.limits] + (
            [planner.relabeler] if planner.relabeler else []
        )
        planner.add_own(cycle, own_samples(reporters, planner.external))
        planned = time.process_time() - t
        encoder.encode(cycle.samples, snap.ts_ms + c * 15_000, b"", cycle.plans)
        encoder.forget(cycle.ended)
        plan_times.append(planned)
        all_times.append(time.process_time() - t)
        n = cycle.count()
    return (plan_times[0], statistics.median(plan_times[1:]), all_times[0],
            statistics.median(all_times[1:]), n)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guests", type=int, default=300)
    ap.add_argument("--cycles", type=int, default=30)
    args = ap.parse_args()
    print(f"{args.guests} guests, python {sys.version.split()[0]}; CPU per cycle, "
          "median of the steady cycles")  # fmt: skip
    for label, doc in (("no rules", PLAIN), ("4 rules", RULES)):
        snap = snapshot(args.guests, 1_795_459_495_000)
        cold, steady, _, steady_all, n = run(doc, snap, args.cycles)
        print(
            f"{label:9s} {n:,} series: planner {steady * 1000:.2f} ms "
            f"({steady / n * 1e6:.3f} us/series), with encoding {steady_all * 1000:.1f} ms "
            f"({steady_all / n * 1e6:.3f} us/series); cold cycle planner {cold * 1000:.0f} ms "
            f"({cold / n * 1e6:.1f} us/series)"
        )


if __name__ == "__main__":
    main()
