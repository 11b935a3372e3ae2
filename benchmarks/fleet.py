"""A fleet reconnecting at once: N nodes with hours of backlog, one real Mimir tenant.

    python benchmarks/fleet.py [--nodes 20] [--guests 10] [--outage 10m] [--interval 10]
                               [--rate 10000] [--burst 10000] [--cap auto]
                               [--runs today,new] [--order backfill|fifo] [--timeout S]

Each simulated node is the agent's real sending side: a real `Spool` (SQLite, its own
directory) filled with `--outage` of backlog of `--guests` guests (the recorded snapshot,
scaled, with the node's own `host` label), the agent's `Delivery` with its lanes on threads,
and a real `Sender`. Every node keeps producing a fresh cycle every `--interval` seconds while
it drains, when the agent would: at the interval's multiples in the `today` run, at the node's
own offset (`collect.offset: host`) in the `new` one. All nodes start at the same
instant (the moment a regional link comes back) against one real Grafana Mimir 3.0.3
(tests/mimir.py) whose tenant has `ingestion_rate --rate` and `ingestion_burst_size --burst`,
and an out-of-order window so that `backfill` order is possible.

The fleet runs twice in one invocation (`--runs`), each on a tenant of its own:

    today  no cap, no adaptive rate, no jitter: Retry-After honoured in full (up to 10 min)
    new    the defaults (adaptive rate, one interval of jitter, each node's cycles at its own
           offset in the interval) and a per-node backlog cap (`--cap auto`: twice the
           node's share of what the fresh cycles leave of the rate)
    spread today's sending with the new offsets alone (not run by default): what the
           offsets do without the pacing

Reported per run: the time until every node's backlog is in Mimir against the physical limit
(everything sent ÷ the tenant's rate), 429s per sample delivered, samples lost (Mimir's own
count of what it stored against what the nodes spooled: must be 0), the spread of drain
completion between nodes, and how late fresh cycles were acknowledged (from the cycle's
timestamp to its 2xx).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import requests  # noqa: E402
from common import SERIES_LABELS, snapshot  # noqa: E402

from pusher.agent import cycle_offset, next_tick  # noqa: E402
from pusher.config import from_mapping, parse_duration  # noqa: E402
from pusher.delivery import Delivery, Lane, ProtocolMemory  # noqa: E402
from pusher.encode import EncoderV2  # noqa: E402
from pusher.sender import Sender  # noqa: E402
from pusher.series import build_samples  # noqa: E402
from pusher.spool import Spool  # noqa: E402

MAX_SAMPLES = 2000
SAMPLES_PER_GUEST = 59  # the recorded snapshot's guests, with the default series labels
TENANTS: dict[str, dict[str, Any]] = {}  # Mimir's runtime overrides, one tenant per run


class WatchedSpool(Spool):
    """The real spool, noting when rows are acknowledged: fresh rows' lateness, and when the
    last backlog row (older than the run's start) went."""

    def __init__(self, directory: str, start_ms: int) -> None:
        super().__init__(directory, 2**36, fsync=False)
        self.start_ms = start_ms
        self.backlog_rows = 0
        self.drained_at: float | None = None
        self.lateness: list[float] = []
        self.acked: list[tuple[float, int]] = []  # (when, samples) of every row acknowledged
        self._watch = threading.Lock()

    def remove(self, rows: Any) -> None:
        rows = list(rows)
        super().remove(rows)
        now = time.time()
        with self._watch:
            for r in rows:
                self.acked.append((now, r.samples))
                if r.ts_ms < self.start_ms:
                    self.backlog_rows -= 1
                    if self.backlog_rows == 0:
                        self.drained_at = now
                else:
                    self.lateness.append(now - r.ts_ms / 1000)

    def put_counted(self, requests: Any, backlog: bool) -> int:
        self.put(requests)
        if backlog:
            self.backlog_rows += len(requests)
        return sum(r.samples for r in requests)


@dataclass
class Node:
    name: str
    spool: WatchedSpool
    delivery: Delivery
    encoder: EncoderV2
    samples: list[Any]
    offset: float = 0.0  # where in the interval its cycles start
    spooled: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    def put_cycle(self, ts_ms: int, step: int, backlog: bool) -> None:
        values = [(k, v + step) for k, v in self.samples]
        self.spooled += self.spool.put_counted(self.encoder.encode(values, ts_ms), backlog)


def rw_settings(run: str, url: str, tenant: str, args: argparse.Namespace, cap: float) -> dict:
    common = {"url": url, "tenant": tenant, "order": args.order, "max_sample_age": 0,
              "timeout": "10s", "max_samples_per_send": MAX_SAMPLES}  # fmt: skip
    if run in ("today", "spread"):
        return {**common, "adaptive_rate": False, "reconnect_jitter": 0}
    return {**common, "backlog_rate_limit": cap}


def make_nodes(
    run: str, work: Path, rw: dict, args: argparse.Namespace, start: float
) -> list[Node]:
    cfg = from_mapping({"remote_write": rw, "collect": {"interval": args.interval}}, {}, "x")
    base = snapshot(args.guests, 0)
    nodes = []
    for i in range(args.nodes):
        name = f"node-{i:04d}"
        directory = work / run / name
        spool = WatchedSpool(str(directory), int(start * 1000))
        proto = ProtocolMemory(cfg.remote_write.protocol, str(directory))
        sender = Sender(cfg.remote_write)
        delivery = Delivery(cfg.remote_write, args.interval, spool, sender, proto)
        samples = build_samples(base, SERIES_LABELS, (("cluster", "fleet"), ("host", name)))
        node = Node(name, spool, delivery, EncoderV2(MAX_SAMPLES), samples)
        if run != "today":  # today's agent ticks on the interval's multiples on every node
            node.offset = cycle_offset(-1.0, args.interval, name)
        cycles = int(args.outage / args.interval)
        first = (int(start / args.interval) - cycles) * args.interval
        for c in range(cycles):
            node.put_cycle(int((first + c * args.interval) * 1000), c, backlog=True)
        nodes.append(node)
    return nodes


def produce(nodes: list[Node], interval: float, stop: threading.Event) -> None:
    """Every node's fresh cycle every interval at the node's offset, as the agent ticks."""
    step = {n.name: 10**6 for n in nodes}
    now = time.time()
    due = {n.name: next_tick(now, interval, n.offset) for n in nodes}
    while not stop.is_set():
        tick = min(due.values())
        if stop.wait(tick - time.time()):
            return
        for node in nodes:
            if due[node.name] <= tick:
                node.put_cycle(int(due[node.name] * 1000), step[node.name], backlog=False)
                node.delivery.wake()
                step[node.name] += 1
                due[node.name] += interval


def lanes(order: str) -> list[Lane]:
    return ["fresh", "backlog"] if order == "backfill" else ["all"]


def spooled_left(node: Node) -> int:
    with sqlite3.connect(node.spool.path) as db:
        (n,) = db.execute("SELECT COALESCE(SUM(samples), 0) FROM requests").fetchone()
    return int(n)


def run_fleet(run: str, mimir: Any, work: Path, args: argparse.Namespace, cap: float) -> dict:
    tenant = f"fleet-{run}-{int(time.time())}"
    TENANTS[tenant] = {"ingestion_rate": args.rate, "ingestion_burst_size": args.burst,
                       "out_of_order_time_window": "3h"}  # fmt: skip
    mimir.set_overrides(TENANTS)
    time.sleep(3)  # the runtime overrides are read every second
    rw = rw_settings(run, mimir.push_url, tenant, args, cap)
    start = time.time()
    nodes = make_nodes(run, work, rw, args, start)
    backlog = sum(n.spooled for n in nodes)
    print(f"[{run}] {len(nodes)} nodes, {backlog:,} backlog samples spooled in "
          f"{time.time() - start:.1f}s; settings: {rw}", flush=True)  # fmt: skip
    stop = threading.Event()
    producer = threading.Thread(target=produce, args=(nodes, args.interval, stop), daemon=True)
    t0 = time.time()
    cpu0, mimir_cpu0 = time.process_time(), cpu_seconds(mimir)
    for n in nodes:
        n.spool.start_ms = int(t0 * 1000)  # rows written before now are the backlog
        for lane in lanes(args.order):
            t = threading.Thread(target=n.delivery.drain, args=(lane,), daemon=True)
            n.threads.append(t)
    producer.start()
    for n in nodes:
        for t in n.threads:
            t.start()
    deadline = t0 + args.timeout
    while time.time() < deadline and any(n.spool.drained_at is None for n in nodes):
        time.sleep(0.5)
    end = time.time()
    cpu, mimir_cpu = time.process_time() - cpu0, cpu_seconds(mimir) - mimir_cpu0
    time.sleep(2 * args.interval)  # the fresh cycles of the last seconds go out too
    stop.set()
    producer.join()
    for n in nodes:
        n.delivery.stop(time.monotonic() + 15)
    for n in nodes:
        for t in n.threads:
            t.join(20)
        n.delivery.transport.close()
    left = sum(spooled_left(n) for n in nodes)
    finish(nodes, rw, args)
    for n in nodes:
        n.spool.close()
    time.sleep(1)
    result = measure(run, tenant, mimir, nodes, t0, end, backlog, args)
    result.update(agent_cpu=cpu, mimir_cpu=mimir_cpu, left_in_spools=left)
    return result


def finish(nodes: list[Node], rw: dict, args: argparse.Namespace) -> None:
    """After the timed run: send what is left, unpaced, so that Mimir's count is complete."""
    plain = {**rw, "adaptive_rate": False, "reconnect_jitter": 0, "backlog_rate_limit": 0}
    cfg = from_mapping({"remote_write": plain, "collect": {"interval": args.interval}}, {}, "x")
    for n in nodes:
        if not n.spool.stats()[0]:
            continue
        proto = ProtocolMemory(cfg.remote_write.protocol, n.spool.directory)
        d = Delivery(cfg.remote_write, args.interval, n.spool, Sender(cfg.remote_write), proto)
        d.stop(time.monotonic() + 120)
        d.drain()
        d.transport.close()


def cpu_seconds(mimir: Any) -> float:
    """User + system CPU of the Mimir process so far (/proc)."""
    fields = Path(f"/proc/{mimir._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    run: str, tenant: str, mimir: Any, nodes: list[Node], t0: float, end: float,
    backlog: int, args: argparse.Namespace,
) -> dict:  # fmt: skip
    spooled = sum(n.spooled for n in nodes)
    window = int(time.time() - t0 + args.outage + 4 * args.interval)
    stored = stored_samples(mimir, tenant, window)
    sent = sum(n.delivery.stats.sent for n in nodes)
    throttled = sum(n.delivery.stats.responses["429"] for n in nodes)
    rejected = sum(sum(n.delivery.stats.rejected_samples.values()) for n in nodes)
    dropped = sum(sum(n.delivery.stats.dropped.values()) for n in nodes)
    done = [n.spool.drained_at - t0 for n in nodes if n.spool.drained_at is not None]
    late = sorted(x for n in nodes for x in n.spool.lateness)
    fresh = spooled - backlog
    drain_s = max(done) if len(done) == len(nodes) else float("nan")
    # The floor: the backlog drains at what the fresh cycles leave of the tenant's rate.
    fresh_rate = args.nodes * args.guests * SAMPLES_PER_GUEST / args.interval
    physical = backlog / (args.rate - fresh_rate)
    return {
        "run": run, "nodes": len(nodes), "backlog": backlog, "fresh": fresh,
        "stored": int(stored), "lost": spooled - int(stored),
        "sent": sent, "rejected": rejected, "dropped": dropped, "429s": throttled,
        "drained_nodes": len(done), "drain_s": drain_s, "physical_s": physical,
        "done_min": min(done, default=float("nan")), "done_median":
        statistics.median(done) if done else float("nan"), "done_max": max(done, default=0.0),
        "late_p50": pct(late, 0.5), "late_p99": pct(late, 0.99), "late_max": pct(late, 1.0),
        "late_over_interval": sum(1 for x in late if x > args.interval), "fresh_rows": len(late),
        "elapsed": end - t0, "backlog_over_rate": backlog / args.rate,
        "timeline": timeline(nodes, t0, end),
    }  # fmt: skip


TIMELINE_STEP = 10.0  # seconds per line of the timeline


def timeline(nodes: list[Node], t0: float, end: float) -> list[tuple[float, float, int]]:
    """Per TIMELINE_STEP from the start until the last backlog row went: (start of the step,
    samples/s the fleet got acknowledged in it, nodes still draining at its end)."""
    steps = max(1, int((end - t0) / TIMELINE_STEP + 0.999))
    got = [0] * steps
    for n in nodes:
        for when, samples in n.spool.acked:
            i = int((when - t0) / TIMELINE_STEP)
            if 0 <= i < steps:
                got[i] += samples
    out = []
    for i in range(steps):
        at = t0 + (i + 1) * TIMELINE_STEP
        draining = sum(1 for n in nodes if n.spool.drained_at is None or n.spool.drained_at > at)
        out.append((i * TIMELINE_STEP, got[i] / TIMELINE_STEP, draining))
    return out


def stored_samples(mimir: Any, tenant: str, window: int) -> int:
    """Every sample the tenant holds, summed name by name (count_over_time drops the name,
    and series of different names may share their other labels)."""
    r = requests.get(f"{mimir.base_url}/prometheus/api/v1/label/__name__/values",
                     headers={"X-Scope-OrgID": tenant}, timeout=30)  # fmt: skip
    r.raise_for_status()
    total = 0.0
    for name in r.json()["data"]:
        total += mimir.value(f'sum(count_over_time({name}{{cluster="fleet"}}[{window}s]))', tenant)
    return int(total)


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def report(r: dict, args: argparse.Namespace) -> None:
    if r["drained_nodes"] == r["nodes"]:
        drained = (f"{r['drain_s']:.0f}s ({r['drain_s'] / r['physical_s']:.2f}x the physical "
                   f"limit of {r['physical_s']:.0f}s = backlog / (rate - fresh load); backlog / "
                   f"rate alone: {r['backlog_over_rate']:.0f}s)")  # fmt: skip
    else:
        drained = (f"NOT drained: {r['drained_nodes']}/{r['nodes']} nodes in "
                   f"{r['elapsed']:.0f}s (physical limit {r['physical_s']:.0f}s)")  # fmt: skip
    print(f"[{r['run']}] backlog {r['backlog']:,} + fresh {r['fresh']:,} samples; drained in "
          f"{drained}")  # fmt: skip
    print(f"[{r['run']}]   429s: {r['429s']:,} ({r['429s'] / max(1, r['sent']) * 1e6:.1f} per "
          f"million samples delivered); lost: {r['lost']:,} (Mimir stored {r['stored']:,} of "
          f"{r['backlog'] + r['fresh']:,} spooled; rejected {r['rejected']:,}, dropped "
          f"{r['dropped']:,}; {r['left_in_spools']:,} were left when the timed run ended, "
          f"sent unpaced before counting)")  # fmt: skip
    print(f"[{r['run']}]   drain completion per node: first {r['done_min']:.0f}s, median "
          f"{r['done_median']:.0f}s, last {r['done_max']:.0f}s (spread "
          f"{r['done_max'] - r['done_min']:.0f}s)")  # fmt: skip
    print(f"[{r['run']}]   fresh cycles acknowledged after: p50 {r['late_p50']:.2f}s, p99 "
          f"{r['late_p99']:.2f}s, max {r['late_max']:.2f}s; {r['late_over_interval']} of "
          f"{r['fresh_rows']} later than one interval ({args.interval:g}s)")  # fmt: skip
    print(f"[{r['run']}]   CPU until drained: the {r['nodes']} nodes' process "
          f"{r['agent_cpu']:.1f}s ({r['agent_cpu'] / max(1, r['sent']) * 1e6:.1f} us per sample "
          f"sent), Mimir {r['mimir_cpu']:.1f}s", flush=True)  # fmt: skip
    line = ", ".join(
        f"{at:.0f}s {rate / args.rate:.0%} ({left})" for at, rate, left in r["timeline"]
    )
    print(f"[{r['run']}]   acknowledged per {TIMELINE_STEP:g}s, as a share of the tenant's rate "
          f"(nodes still draining): {line}", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--guests", type=int, default=10, help="per node (59 samples each)")
    ap.add_argument("--outage", type=parse_duration, default=600.0, help="backlog per node")
    ap.add_argument("--interval", type=parse_duration, default=10.0)
    ap.add_argument("--rate", type=int, default=10_000, help="tenant ingestion_rate")
    ap.add_argument("--burst", type=int, default=10_000, help="tenant ingestion_burst_size")
    ap.add_argument("--cap", default="auto", help="new run's backlog_rate_limit per node")
    ap.add_argument("--runs", default="today,new", help="of today, new, spread")
    ap.add_argument("--order", choices=["backfill", "fifo"], default="backfill")
    ap.add_argument("--timeout", type=float, default=0.0, help="per run; 0: 2x physical + 60s")
    args = ap.parse_args()
    if not os.environ.get("MIMIR_BIN"):
        tool = HERE.parent.parent / "shared" / "tools" / "mimir" / "mimir-bin"
        tool = tool if tool.exists() else Path("/work/shared/tools/mimir/mimir-bin")
        os.environ["MIMIR_BIN"] = subprocess.check_output(["bash", str(tool)], text=True).strip()
    from mimir import Mimir

    per_cycle = args.guests * SAMPLES_PER_GUEST
    fresh_rate = args.nodes * per_cycle / args.interval
    cap = float(args.cap) if args.cap != "auto" else 2 * (args.rate - fresh_rate) / args.nodes
    backlog = args.nodes * per_cycle * int(args.outage / args.interval)
    if not args.timeout:
        args.timeout = 2 * backlog / (args.rate - fresh_rate) + 60
    print(f"fleet: {args.nodes} nodes x {args.guests} guests, {args.outage:g}s of backlog at "
          f"{args.interval:g}s; tenant ingestion_rate {args.rate:,}/s, burst {args.burst:,}; "
          f"fresh load ~{fresh_rate:,.0f} samples/s; new run's cap {cap:,.0f}/s per node; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    runs = args.runs.split(",")
    if set(runs) - {"today", "new", "spread"}:
        ap.error(f"--runs {args.runs!r}: each of today, new, spread")
    with tempfile.TemporaryDirectory(prefix="pusher-fleet-") as tmp:
        work = Path(tmp)
        mimir = Mimir(work / "mimir", overrides={})
        results = []
        try:
            for run in runs:
                results.append(run_fleet(run, mimir, work, args, cap))
                report(results[-1], args)
        finally:
            mimir.stop()
    print("summary:")
    for r in results:
        report(r, args)


if __name__ == "__main__":
    main()
