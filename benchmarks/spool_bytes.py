"""Disk bytes per buffered sample: recorded cycles of real guests written by the agent into
its spool, as during an outage, with the file sizes watched after every cycle.

    python benchmarks/record.py URI --cycles 60 --interval 5 --match 'instance-0004a1..' \\
        > /tmp/seq.json                      # real guests' stats as they move, 5 s apart
    python benchmarks/spool_bytes.py /tmp/seq.json [--protocol v1|v2] [--dir /var/tmp]

The agent itself (`Agent.run_cycle`: its planner, its own series, the spool) runs once per
recorded cycle with its receiver unreachable, fsync on, into a fresh spool; the recorded
timestamps are the cycles'. Reported, per buffered sample: the spool directory at its
largest during the run (spool.db + its -wal, and with the -shm index too), the same after the
agent closed the database (SQLite checkpoints the WAL into the file), the stored rows and
dictionary alone, and the growth per sample after the first cycle (what one more cycle costs:
what decides how long `buffer.max_bytes` lasts). `--bodies` stores whole request bodies
instead of cycle records, as agents before the record format did.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from pusher.agent import Agent
from pusher.collect import DomainStats, Snapshot
from pusher.config import from_mapping
from pusher.encode import Encoder, EncoderV2
from pusher.nova import parse_domain_xml
from pusher.sender import Sender
from pusher.spool import Spool


class Replay:
    """A collector handing the agent the recorded snapshots, one per cycle."""

    def __init__(self, cycles: list[dict[str, Any]]) -> None:
        self.cycles = cycles
        self.n = 0
        self.metadata_errors = self.partial_records = self.partial_kept = 0
        self._info: dict[str, Any] = {}

    def collect(self) -> Snapshot:
        cycle = self.cycles[self.n]
        self.n += 1
        domains = []
        for d in cycle["domains"]:
            info = self._info.get(d["uuid"])
            if info is None:
                info = self._info[d["uuid"]] = parse_domain_xml(d["xml"])
            domains.append(DomainStats(d["name"], d["uuid"], d["stats"], info))
        return Snapshot(cycle["ts_ms"], domains, 0.05, 0)

    def readings(self) -> list[object]:
        return []

    def close(self) -> None:
        pass


def sizes(directory: Path) -> dict[str, int]:
    return {p.name.removeprefix("spool.db").lstrip("-") or "db": p.stat().st_size
            for p in directory.glob("spool.db*")}  # fmt: skip


def run(cycles: list[dict[str, Any]], protocol: str, bodies: bool, where: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(dir=where))
    try:
        cfg = from_mapping({
            "remote_write": {"url": "http://127.0.0.1:9/api/v1/push", "protocol": protocol},
            "buffer": {"path": str(work / "spool")}, "collect": {"interval": "5s"},
        })  # fmt: skip
        spool = Spool(cfg.buffer.path, cfg.buffer.max_bytes, cfg.buffer.fsync)
        clock = {"now": cycles[0]["ts_ms"] / 1000}
        agent = Agent(cfg, Sender(cfg.remote_write), spool, Replay(cycles),  # type: ignore[arg-type]
                      clock=lambda: clock["now"])  # fmt: skip
        if bodies:
            n = cfg.remote_write.max_samples_per_send
            encoder = Encoder(n) if protocol == "v1" else EncoderV2(n)
            spool.put_cycle = lambda ts, plans, samples, *_: spool.put(  # type: ignore[method-assign]
                encoder.encode(samples, ts, b"", plans)
            )
        largest = {"db+wal": 0, "db+wal+shm": 0}
        after_first = 0
        for i, c in enumerate(cycles):
            clock["now"] = c["ts_ms"] / 1000
            agent.run_cycle()
            s = sizes(Path(cfg.buffer.path))
            largest["db+wal"] = max(largest["db+wal"], s.get("db", 0) + s.get("wal", 0))
            largest["db+wal+shm"] = max(largest["db+wal+shm"], sum(s.values()))
            if i == 0:
                after_first = s.get("db", 0) + s.get("wal", 0)
                first_samples = spooled(spool)[0]
        samples, stored = spooled(spool)
        live_end = sum(v for k, v in sizes(Path(cfg.buffer.path)).items() if k != "shm")
        spool.close()
        closed = sum(v for k, v in sizes(Path(cfg.buffer.path)).items() if k != "shm")
        return {"samples": samples, "cycles": len(cycles), "largest": largest,
                "closed": closed, "stored": stored,
                "growth": (live_end - after_first) / (samples - first_samples)}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def spooled(spool: Spool) -> tuple[int, int]:
    """(samples, bytes of rows and dictionary) in the spool, through its own connection."""
    db = spool._db
    samples, rows = db.execute(
        "SELECT COALESCE(SUM(samples), 0), COALESCE(SUM(LENGTH(body)), 0) FROM requests"
    ).fetchone()
    try:
        (entries,) = db.execute("SELECT COALESCE(SUM(LENGTH(entry)), 0) FROM dictionary"
                                ).fetchone()  # fmt: skip
    except sqlite3.OperationalError:  # an older agent's spool has no dictionary
        entries = 0
    return int(samples), int(rows) + int(entries)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recording", help="a sequence from benchmarks/record.py --cycles")
    ap.add_argument("--protocol", choices=["v1", "v2"], default="v1")
    ap.add_argument("--bodies", action="store_true", help="store request bodies (the old way)")
    ap.add_argument("--cycles", type=int, default=0, help="only the first N recorded cycles")
    ap.add_argument("--dir", default="/var/tmp", help="where the spool goes (default /var/tmp)")
    args = ap.parse_args()
    cycles = json.loads(Path(args.recording).read_text())["cycles"]
    if args.cycles:
        cycles = cycles[: args.cycles]
    r = run(cycles, args.protocol, args.bodies, args.dir)
    n = r["samples"]
    guests = len(cycles[0]["domains"])
    print(f"{guests} guests, {r['cycles']} cycles, {n:,} samples spooled, protocol "
          f"{args.protocol}, {'request bodies' if args.bodies else 'cycle records'}")  # fmt: skip
    print(f"  largest, spool.db + -wal:          {r['largest']['db+wal'] / n:6.2f} B/sample")
    print(f"  largest, with the -shm index:      {r['largest']['db+wal+shm'] / n:6.2f} B/sample")
    print(f"  after close (checkpointed):        {r['closed'] / n:6.2f} B/sample")
    print(f"  rows and dictionary alone:         {r['stored'] / n:6.2f} B/sample")
    print(f"  growth per sample after cycle 1:   {r['growth']:6.2f} B/sample")


if __name__ == "__main__":
    main()
