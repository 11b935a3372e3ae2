"""Drain speed: spooled backlog -> wire, on one core, and the spool's bytes per sample.

    python benchmarks/drain.py [--guests 300] [--cycles 40] [--receiver null|prometheus]
                               [--protocol v1|v2] [--repeat 1]

Fills a fresh spool with `cycles` cycles of `guests` guests (the recorded snapshot, scaled),
exactly as the agent writes them, then lets the agent's own sending code drain it to a
receiver on loopback and reports samples per second of wall time and per CPU second of the
agent's process. The `null` receiver is a separate process that reads each body and answers
204, so the figure is the agent's; `prometheus` uses Debian's Prometheus as a real receiver
(1.0 only).

With `--repeat N` the same filled spool (copied aside before the first drain) is drained N
times, and the best and the median of the N drains are reported: on a shared machine the best
is the figure least disturbed by other load (CPU time stolen by neighbours counts as the
process's own).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import moved, snapshot

from pusher import catalog
from pusher.agent import Agent
from pusher.config import Config, from_mapping
from pusher.encode import Encoder, EncoderV2, metadata_bytes
from pusher.sender import Sender
from pusher.series import DomainSeries
from pusher.spool import Spool

NULL_RECEIVER = textwrap.dedent("""
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            # what a 2.0 receiver says; the null receiver does not count, so: "all of them"
            self.send_header("X-Prometheus-Remote-Write-Samples-Written", "1000000000")
            self.end_headers()
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"receiver on port {port} did not start")


def start_receiver(kind: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if kind == "null":
        proc = subprocess.Popen([sys.executable, "-c", NULL_RECEIVER, str(port)])
        url = f"http://127.0.0.1:{port}/api/v1/push"
    else:
        (workdir / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--web.enable-remote-write-receiver"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/api/v1/write"
    wait_port(port)
    return proc, url


def fill(
    spool: Spool, guests: int, cycles: int, interval_ms: int, max_samples: int, protocol: str,
    bodies: bool = False,
) -> int:  # fmt: skip
    """The spool as the agent fills it during an outage: a cycle at a time, counters moving
    (`put_cycle`); with `bodies`, as agents before the record format did (request bodies)."""
    snap = snapshot(guests, 0)
    encoder = Encoder(max_samples) if protocol == "v1" else EncoderV2(max_samples)
    proto = 1 if protocol == "v1" else 2
    start_ms = int(time.time() * 1000) - cycles * interval_ms
    cache: dict[str, DomainSeries] = {}
    total = 0
    for c in range(cycles):
        plans = moved(snap, c, cache)
        ts_ms, meta = start_ms + c * interval_ms, c % 4 == 0
        if bodies:
            metadata = metadata_bytes(catalog.CATALOG) if meta else b""
            spool.put(encoder.encode([], ts_ms, metadata, plans))
        else:
            spool.put_cycle(ts_ms, plans, [], proto, meta, max_samples)
        total += sum(len(v) for _, v in plans)
    return total


def drain(cfg: Config) -> tuple[int, float, float, bool]:
    """One drain of the spool at cfg.buffer.path: (samples sent, CPU s, wall s, emptied)."""
    spool = Spool(cfg.buffer.path, cfg.buffer.max_bytes, cfg.buffer.fsync)
    agent = Agent(cfg, [(Sender(cfg.remote_write), spool)])
    cpu0, wall0 = time.process_time(), time.perf_counter()
    emptied = agent.drain_once(time.monotonic() + 600)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    spool.close()
    return agent.endpoints[0].delivery.stats.sent, cpu, wall, emptied


def pick(
    runs: list[tuple[int, float, float, bool]],
) -> list[tuple[str, tuple[int, float, float, bool]]]:
    """The one run, or the best (least CPU) and the median of several."""
    if len(runs) == 1:
        return [("one run", runs[0])]
    by_cpu = sorted(runs, key=lambda r: r[1])
    return [
        (f"best of {len(runs)}", by_cpu[0]),
        (f"median of {len(runs)}", by_cpu[len(by_cpu) // 2]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guests", type=int, default=300)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--receiver", choices=["null", "prometheus"], default="null")
    ap.add_argument("--max-samples-per-send", type=int, default=2000)
    ap.add_argument("--protocol", choices=["v1", "v2"], default="v1")
    ap.add_argument("--bodies", action="store_true", help="spool request bodies (the old way)")
    ap.add_argument("--repeat", type=int, default=1, help="drain the same backlog N times")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, url = start_receiver(args.receiver, workdir)
        try:
            cfg = from_mapping({
                "remote_write": {"url": url, "tenant": "openstack", "protocol": args.protocol,
                                 "max_samples_per_send": args.max_samples_per_send,
                                 # a long backlog is older than the default: keep it all
                                 "max_sample_age": "7d"},
                "buffer": {"path": str(workdir / "spool")},
                "collect": {"interval": "15s"},
            })  # fmt: skip
            spool = Spool(cfg.buffer.path, cfg.buffer.max_bytes, cfg.buffer.fsync)
            t0 = time.perf_counter()
            total = fill(spool, args.guests, args.cycles, 15000,
                         cfg.remote_write.max_samples_per_send, args.protocol,
                         args.bodies)  # fmt: skip
            fill_s = time.perf_counter() - t0
            requests, body_bytes, _ = spool.stats()
            # as they stand: the file and its WAL (bounded), not checkpointed
            file_bytes = sum(p.stat().st_size for p in Path(cfg.buffer.path).glob("spool.db*"))
            spool.close()
            shutil.copytree(cfg.buffer.path, workdir / "filled")
            runs = []
            for _ in range(args.repeat):
                shutil.rmtree(cfg.buffer.path)
                shutil.copytree(workdir / "filled", cfg.buffer.path)
                runs.append(drain(cfg))
        finally:
            proc.terminate()
            proc.wait()

    print(
        f"backlog: {args.guests} guests x {args.cycles} cycles = {total:,} samples "
        f"in {requests:,} spooled requests (filled in {fill_s:.2f}s)"
    )
    print(
        f"spool: {body_bytes / total:.2f} stored bytes per sample (rows and dictionary), "
        f"{file_bytes / total:.2f} file bytes per sample (spool.db and its WAL)"
    )
    for label, (sent, cpu, wall, emptied) in pick(runs):
        print(
            f"drain to {args.receiver} receiver ({label}): {sent:,} samples in {wall:.2f}s "
            f"wall, {cpu:.2f}s CPU of the agent process"
        )
        print(
            f"  {sent / wall:,.0f} samples/s wall, {sent / cpu:,.0f} samples per CPU second"
            f"{'' if emptied else '  (NOT EMPTIED)'}"
        )
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
