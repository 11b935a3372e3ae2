"""Soak: a long receiver outage with a kill -9 and restart of the agent in the middle.

    python benchmarks/outage.py [--outage 600] [--interval 5] [--guests 3]

Real QEMU guests (created and removed by the script), Debian's Prometheus as the receiver.
The receiver is stopped for `--outage` seconds; halfway through, the agent is killed with
SIGKILL and started again 10 s later. Then the receiver comes back with its data, and the
script waits until the backlog is through and reports, for every guest series, the samples
that arrived and any gap longer than 1.5 intervals (only the 10 s no agent ran may show).
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent / "tests" / "integration"), str(HERE.parent / "tests")]


from agent import AgentProcess, write_config  # noqa: E402
from guests import create_guests, destroy_guests  # noqa: E402
from receiver import Receiver  # noqa: E402

URI = "qemu:///system"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outage", type=float, default=600)
    ap.add_argument("--interval", type=float, default=5)
    ap.add_argument("--guests", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pusher-outage-"))
    work.chmod(0o755)  # the qemu user must reach the guest images below it
    guests = create_guests(URI, work / "guests", args.guests, prefix="soak", base=0xE000)
    names = [g["name"] for g in guests]
    receiver = Receiver(work / "rx")
    config = write_config(work, receiver.write_url, collect={"interval": f"{args.interval}s",
                          "timeout": f"{args.interval}s"}, log={"level": "info"})  # fmt: skip
    agents = [AgentProcess(config, work / "agent1.log")]
    try:
        time.sleep(3 * args.interval)
        receiver.stop()
        down_at = time.time()
        print(f"receiver down at {time.strftime('%X')} for {args.outage:.0f}s", flush=True)
        time.sleep(args.outage / 2)
        agents[0].stop(signal.SIGKILL)
        killed_at = time.time()
        time.sleep(10)
        agents.append(AgentProcess(config, work / "agent2.log"))
        restarted_at = time.time()
        time.sleep(max(0.0, down_at + args.outage - time.time()))
        receiver = Receiver(work / "rx", port=int(receiver.base_url.rsplit(":", 1)[1]))
        up_at = time.time()
        print(f"receiver up; agent was dead {restarted_at - killed_at:.1f}s", flush=True)
        sel = f'libvirt_domain_info_cpu_time_seconds_total{{domain="{names[0]}"}}'
        while time.time() - up_at < 600:
            r = receiver.query(f"timestamp({sel})")
            if r and float(r[0]["value"][1]) > time.time() - 2 * args.interval:
                break
            time.sleep(1)
        drained = time.time() - up_at
        time.sleep(2 * args.interval)
        agents[-1].stop()
        span = time.time() - down_at + 4 * args.interval
        worst = 0
        total = 0
        holes = []
        for s in receiver.query(
            f'{{__name__=~"libvirt_domain_.+_total",domain=~"{"|".join(names)}"}}[{int(span)}s]'
        ):
            stamps = [float(t) for t, _ in s["values"]]
            total += len(stamps)
            for a, b in itertools.pairwise(stamps):
                if b - a > 1.5 * args.interval:
                    holes.append((a, b))
                    worst = max(worst, b - a)
        outside = [
            h
            for h in holes
            if not (
                h[0] >= killed_at - args.interval - 1 and h[1] <= restarted_at + 2 * args.interval
            )
        ]
        print(
            f"outage {args.outage:.0f}s, interval {args.interval:g}s, {args.guests} guests: "
            f"backlog drained {drained:.1f}s after the receiver returned; "
            f"{total} counter samples checked; longest hole {worst:.1f}s "
            f"(agent dead {restarted_at - killed_at:.1f}s); holes outside the dead time: "
            f"{len(outside)}"
        )
    finally:
        for a in agents:
            if a.proc.poll() is None:
                a.proc.kill()
        receiver.stop()
        destroy_guests(URI, names)


if __name__ == "__main__":
    main()
