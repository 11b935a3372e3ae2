"""Macro benchmark: this agent vs Debian's libvirt exporter + Prometheus agent, side by side.

    python benchmarks/macro.py [--guests 20] [--interval 5] [--window 60] [--rounds 3]

(run it with the project's venv python, as root, on a host prepared by scripts/setup-host.sh,
with `apt-get install prometheus-libvirt-exporter`.)

On the same `--guests` real QEMU guests (created here, removed at the end) and the same
interval, it runs alternating windows, one thing at a time:

- idle: neither side runs (libvirtd's baseline CPU: other clients, the guests' own events);
- A:    this agent (`python -m pusher`) pushing to Debian's `prometheus` as receiver;
- B:    Debian's `prometheus-libvirt-exporter` (Nova labels on), scraped by Debian's
        `prometheus --enable-feature=agent` remote-writing to another such receiver;

each round is idle, A, B (B before A every other round), every side started fresh before its
window and warmed up (first delivery seen, then one more interval) outside it. After the rounds
one more A window runs with A's receiver unreachable, to measure the spool (with a receiver up
the spool is empty); its backlog is then delivered and checked. Both senders talk to their
receiver through the same counting proxy (benchmarks/macro_proxy.py).

Per window: CPU (utime+stime of the side's processes and their children, /proc/<pid>/stat),
libvirtd's CPU, resident memory (VmRSS, sampled every 0.5 s, the maximum of the side's sum),
samples the receiver appended (`prometheus_tsdb_head_samples_appended_total`), samples of the
benchmark guests (a count_over_time query on the receiver), request-body and raw TCP bytes
through the proxy; for B also the agent's WAL growth and the samples it appended to it.
A window is a whole number of intervals, so it holds exactly that many cycles of either side.

Everything runs on the host's one libvirtd, which other work may use at the same time: the
figures are as noisy as the host. libvirtd's CPU induced per cycle is measured twice:
- windows: the median side window minus the median idle window (the pooled mean beside it;
  a window across a libvirtd restart has no libvirtd figure). Other work on a shared host can
  load libvirtd by far more than one side does, and then this figure is noise;
- probe (the headline): each side's collection run `--probe-calls` times back to back between
  two quiet gaps, the burst's libvirtd CPU minus the gaps' rate, per collection, the median
  over `--probe-rounds` rounds (see `libvirtd_probe`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests" / "integration")]

try:
    import libvirt
    import yaml
    from guests import create_guests, destroy_guests
except ImportError as e:  # pragma: no cover - not the project's python: use its venv if there
    venv = REPO / ".venv" / "bin" / "python"
    if venv.exists() and not os.environ.get("MACRO_REEXEC"):
        os.environ["MACRO_REEXEC"] = "1"
        os.execv(venv, [str(venv), *sys.argv])
    raise SystemExit(
        f"macro.py: {e}. Run it with the project's venv python (scripts/setup-host.sh makes "
        ".venv; e.g. .venv/bin/python benchmarks/macro.py)."
    ) from None

from macro_proxy import CountingProxy  # noqa: E402

URI = "qemu:///system"
RO_URI = "qemu:///system?socket=/var/run/libvirt/libvirt-sock-ro"
EXPORTER = "prometheus-libvirt-exporter"
PROMETHEUS = "prometheus"
GUEST_BASE = 0xF000  # instance-0000f001, …: clear of the test suite's a0xx/b0xx and soak's e0xx
GUEST_RE = "instance-0000f[0-9a-f]{3}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# REFERENCE.md §7: the peer pipeline measured on this machine type (20 guests, 5 s).
REFERENCE_B = {"cpu_ms": 106.0, "libvirtd_ms": 37.0, "rss_mb": 82.0, "wire": 24.0, "disk": 7.2}


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and where its log is."""


# --- processes ---------------------------------------------------------------------------------


class Proc:
    """A child process with its output in a log file; every one is tracked for cleanup."""

    running: ClassVar[list[Proc]] = []

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None) -> None:
        self.name, self.log = name, log
        with log.open("ab") as f:
            self.popen = subprocess.Popen(
                argv, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        self.pid = self.popen.pid
        Proc.running.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.popen.returncode}; log: {self.log}\n"
                             + tail(self.log))  # fmt: skip

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self in Proc.running:
            Proc.running.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for p in list(reversed(cls.running)):
            try:
                p.stop(10)
            except Exception as e:
                print(f"warning: could not stop {p.name} (pid {p.pid}): {e}", file=sys.stderr)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_ticks(pid: int, children: bool = True) -> int:
    """utime+stime of the process (all threads) and, with `children`, its reaped children
    (cutime+cstime) and its live descendants."""
    total = _stat_ticks(pid, children)
    if children:
        for d in descendants(pid):
            total += _stat_ticks(d, True)
    return total


def _stat_ticks(pid: int, with_reaped: bool, task: int | None = None) -> int:
    try:
        raw = Path(f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    f = raw[raw.rindex(")") + 2 :].split()  # f[0] is field 3 (state)
    ticks = int(f[11]) + int(f[12])  # utime, stime
    if with_reaped:
        ticks += int(f[13]) + int(f[14])  # cutime, cstime
    return ticks


def descendants(pid: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(raw[raw.rindex(")") + 2 :].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Libvirtd:
    """The host's libvirtd (or virtqemud), found again at every window: other work on the host
    may restart it, and a window across a restart has no libvirtd figure."""

    @staticmethod
    def _find() -> tuple[int, int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    comm = Path(f"/proc/{entry}/comm").read_text().strip()
                    raw = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if comm in ("libvirtd", "virtqemud"):
                    starttime = int(raw[raw.rindex(")") + 2 :].split()[19])
                    found.append((int(entry), starttime))
        if len(found) != 1:
            raise BenchError(f"expected one libvirtd (or virtqemud) process, found "
                             f"{found or 'none'} (scripts/setup-host.sh starts it)")  # fmt: skip
        return found[0]

    def __init__(self) -> None:
        deadline = time.monotonic() + 30
        while True:  # it may be restarting just now
            try:
                self.pid, self.starttime = self._find()
                return
            except BenchError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def ticks(self) -> int | None:
        """Its CPU so far, None once it is no longer the same process."""
        try:
            raw = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        f = raw[raw.rindex(")") + 2 :].split()
        if int(f[19]) != self.starttime:
            return None
        return int(f[11]) + int(f[12])

    @staticmethod
    def seconds(t0: int | None, t1: int | None) -> float:
        return math.nan if t0 is None or t1 is None else (t1 - t0) / CLK_TCK


class RssSampler(threading.Thread):
    """Samples VmRSS of a set of processes every 0.5 s; keeps the maximum of their sum and
    each one's maximum."""

    def __init__(self, procs: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.max_sum = 0
        self.max_each = dict.fromkeys(procs, 0)
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            values = {name: rss_kb(pid) + sum(rss_kb(d) for d in descendants(pid))
                      for name, pid in self.procs.items()}  # fmt: skip
            self.max_sum = max(self.max_sum, sum(values.values()))
            for name, v in values.items():
                self.max_each[name] = max(self.max_each[name], v)
            if self._halt.wait(0.5):
                return

    def finish(self) -> None:
        self._halt.set()
        self.join(5)


# --- HTTP helpers ------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body: bytes = r.read()
        return body


def metric_sum(port: int, name: str, missing_is_zero: bool = False) -> float:
    """Sum of all series named `name` on the Prometheus at `port`'s own /metrics (a labelled
    counter has no series before its first increment: `missing_is_zero` for those)."""
    text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    if not seen and not missing_is_zero:
        raise BenchError(f"no {name} on http://127.0.0.1:{port}/metrics")
    return total


def query(port: int, promql: str, at: float) -> list[dict[str, Any]]:
    """An instant query on the receiver; its `data.result`."""
    params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
    try:
        body = json.loads(http_get(f"http://127.0.0.1:{port}/api/v1/query?{params}"))
    except urllib.error.HTTPError as e:
        raise BenchError(f"query {promql!r}: HTTP {e.code}: {e.read()[:500]!r}") from None
    if body.get("status") != "success":
        raise BenchError(f"query {promql!r} failed: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def raw_samples(port: int, selector: str, seconds: float, at: float) -> int:
    """Samples stored for `selector` with timestamps in (at - seconds, at]."""
    return sum(len(r["values"]) for r in query(port, f"{selector}[{int(seconds)}s]", at))


def wait_http(url: str, proc: Proc, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        try:
            http_get(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise BenchError(f"{proc.name} did not answer {url} within {timeout:.0f}s; log: {proc.log}\n"
                     + tail(proc.log))  # fmt: skip


# --- the pieces --------------------------------------------------------------------------------


class Receiver:
    """Debian's prometheus as a remote-write receiver (no scrape configs: it only receives),
    fronted by a counting proxy."""

    def __init__(self, name: str, workdir: Path, transcode_v2: bool = False) -> None:
        workdir.mkdir(parents=True)
        self.port = free_port()
        (workdir / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
        self.proc = Proc(f"receiver {name}", [
            PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}", "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-remote-write-receiver",
        ], workdir / "prometheus.log", cwd=workdir)  # fmt: skip
        wait_http(f"http://127.0.0.1:{self.port}/-/ready", self.proc)
        self.proxy = CountingProxy(self.port, transcode_v2=transcode_v2)
        self.write_url = f"http://127.0.0.1:{self.proxy.port}/api/v1/write"

    def appended(self) -> float:
        return metric_sum(self.port, "prometheus_tsdb_head_samples_appended_total", True)

    def close(self) -> None:
        self.proxy.close()
        self.proc.stop()


class Side:
    """One side of the comparison: started fresh for a window, stopped after it."""

    label = ""
    up_selector = ""  # 1 for each cycle whose collection succeeded

    def __init__(self, args: argparse.Namespace, workdir: Path, rx: Receiver) -> None:
        self.args, self.workdir, self.rx = args, workdir, rx
        self.procs: list[Proc] = []

    def start(self, run: int) -> None:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.procs}

    def check(self) -> None:
        for p in self.procs:
            p.check()

    def extra(self) -> dict[str, float]:
        """Side-specific counters read at the window's edges."""
        return {}

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs = []


class Ours(Side):
    label = "A"
    up_selector = "libvirt_up"

    def start(self, run: int, spool: Path | None = None) -> None:
        d = self.workdir / f"run{run}"
        d.mkdir(parents=True)
        self.spool = spool or d / "spool"
        cfg = {
            "libvirt": {"uri": RO_URI},
            "collect": {"interval": f"{self.args.interval}s", "timeout": f"{self.args.interval}s"},
            "remote_write": {
                "url": self.rx.write_url,
                "tenant": "openstack",
                "timeout": "10s",
                "protocol": self.args.protocol,
            },
            "external_labels": {"cluster": "bench", "host": socket.gethostname()},
            "buffer": {"path": str(self.spool)},
            "log": {"level": "info"},
            "shutdown_grace": "3s",
        }
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        # From the repository root, so the working tree's pusher/ is what runs.
        self.procs = [Proc("agent", [sys.executable, "-m", "pusher", "-c", str(d / "config.yaml")],
                           d / "agent.log", cwd=REPO)]  # fmt: skip

    def extra(self) -> dict[str, float]:
        # The main thread collects, builds, encodes and spools; the others send (and run
        # libvirt's RPC and event loop). Python 3.11 does not name its threads for /proc.
        pid = self.procs[0].pid
        return {"main_thread_s": _stat_ticks(pid, with_reaped=False, task=pid) / CLK_TCK}

    def spool_stats(self) -> tuple[int, int, int]:
        """(samples, body bytes, requests) waiting in the spool, read while the agent runs."""
        if not (self.spool / "spool.db").exists():
            return 0, 0, 0
        db = sqlite3.connect(f"file:{self.spool / 'spool.db'}?mode=ro", uri=True, timeout=10)
        try:
            s, b, n = db.execute(
                "SELECT COALESCE(SUM(samples),0), COALESCE(SUM(LENGTH(body)),0), COUNT(*) "
                "FROM requests"
            ).fetchone()
        finally:
            db.close()
        return int(s), int(b), int(n)

    def spool_file_bytes(self) -> int:
        """The database and its WAL (what grows with the backlog)."""
        return sum(p.stat().st_size for p in self.spool.glob("spool.db*") if p.is_file()
                   and not p.name.endswith("-shm"))  # fmt: skip

    def spool_index_bytes(self) -> int:
        """SQLite's -shm (the WAL index other readers share): a fixed size, not the backlog's."""
        shm = self.spool / "spool.db-shm"
        return shm.stat().st_size if shm.is_file() else 0


class Theirs(Side):
    label = "B"
    up_selector = 'up{job="libvirt"}'

    def start(self, run: int) -> None:
        d = self.workdir / f"run{run}"
        d.mkdir(parents=True)
        self.exporter_port, self.agent_port = free_port(), free_port()
        self.wal = d / "agent-data"
        t = self.args.interval
        cfg = {
            "global": {"scrape_interval": f"{t}s", "scrape_timeout": f"{t}s",
                       "external_labels": {"cluster": "bench", "host": socket.gethostname()}},
            "scrape_configs": [{"job_name": "libvirt", "static_configs":
                                [{"targets": [f"127.0.0.1:{self.exporter_port}"]}]}],
            "remote_write": [{"url": self.rx.write_url}],
        }  # fmt: skip
        (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        exporter = Proc("exporter", [
            EXPORTER, f"--web.listen-address=127.0.0.1:{self.exporter_port}",
            f"--libvirt.uri={URI}", "--libvirt.export-nova-metadata",
        ], d / "exporter.log", cwd=d)  # fmt: skip
        self.procs = [exporter]
        wait_http(f"http://127.0.0.1:{self.exporter_port}/", exporter)
        agent = Proc("prometheus-agent", [
            PROMETHEUS, "--enable-feature=agent", f"--config.file={d / 'prometheus.yml'}",
            f"--storage.agent.path={self.wal}", f"--web.listen-address=127.0.0.1:{self.agent_port}",
        ], d / "prometheus-agent.log", cwd=d)  # fmt: skip
        self.procs.append(agent)
        wait_http(f"http://127.0.0.1:{self.agent_port}/-/ready", agent)

    last_error = ""
    failed_scrapes = 0

    def stop(self) -> None:
        """Stops both; keeps the exporter's last error (a failed scrape fails every domain)."""
        logs = [p.log for p in self.procs if p.name == "exporter"]
        super().stop()
        for log in logs:
            errors = [x for x in log.read_text(errors="replace").splitlines() if "Failed" in x]
            self.failed_scrapes += len(errors)
            self.last_error = errors[-1] if errors else self.last_error

    def extra(self) -> dict[str, float]:
        return {
            "wal_bytes": float(sum(p.stat().st_size for p in self.wal.rglob("*") if p.is_file())),
            "wal_samples": metric_sum(
                self.agent_port, "prometheus_agent_samples_appended_total", True
            ),
            "rw_bytes": metric_sum(self.agent_port, "prometheus_remote_storage_bytes_total", True),
        }


# --- windows -----------------------------------------------------------------------------------


@dataclass
class Window:
    kind: str  # idle, A, B, A-outage
    seconds: float
    cycles: int
    libvirtd_s: float
    domains: int = 0
    cpu_s: float = 0.0
    cpu_each_s: dict[str, float] = field(default_factory=dict)
    up: float = math.nan  # share of the window's cycles whose collection succeeded
    rss_kb: int = 0
    rss_each_kb: dict[str, int] = field(default_factory=dict)
    samples: float = 0.0  # appended by the receiver
    guest_samples: float = 0.0  # of the benchmark's guests, by timestamp in the window
    body_bytes: int = 0
    raw_bytes: int = 0
    requests: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def count_domains() -> int:
    """Domains on the host now (others' too); -1 if libvirtd does not answer within 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = libvirt.openReadOnly(RO_URI)
            try:
                return len(conn.listAllDomains(0))
            finally:
                conn.close()
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                return -1
            time.sleep(1)


def warm_up(side: Side, interval: float) -> None:
    """Until the receiver has appended samples from this side, then one more interval, so the
    start-up work (imports, first XML reads, WAL creation) stays out of the window."""
    before = side.rx.appended()
    limit = START_TIMEOUT + 3 * interval
    deadline = time.monotonic() + limit
    while side.rx.appended() <= before:
        side.check()
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log}\n{tail(p.log)}" for p in side.procs)
            raise BenchError(f"side {side.label}: nothing reached its receiver within "
                             f"{limit:.0f}s\n{logs}")  # fmt: skip
        time.sleep(0.5)
    time.sleep(interval + 1)


def measure(kind: str, seconds: float, interval: float, side: Side | None = None) -> Window:
    domains = count_domains()
    sampler = RssSampler(side.pids()) if side else None
    rx = side.rx if side else None
    # Edges: side counters first and last, so the CPU interval is the innermost.
    e0 = side.extra() if side else {}
    a0 = rx.appended() if rx else 0.0
    p0 = rx.proxy.snapshot() if rx else None
    names = side.pids() if side else {}
    libvirtd = Libvirtd()
    l0, t0 = libvirtd.ticks(), time.time()
    c0 = {name: cpu_ticks(pid) for name, pid in names.items()}
    if sampler:
        sampler.start()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        if side:
            side.check()
    l1, t1 = libvirtd.ticks(), time.time()
    c1 = {name: cpu_ticks(pid) for name, pid in names.items()}
    w = Window(kind, t1 - t0, round(seconds / interval), Libvirtd.seconds(l0, l1), domains)
    if side and rx and sampler and p0:
        sampler.finish()
        p1 = rx.proxy.snapshot()
        w.cpu_each_s = {name: (c1[name] - c0[name]) / CLK_TCK for name in names}
        w.cpu_s = sum(w.cpu_each_s.values())
        w.rss_kb, w.rss_each_kb = sampler.max_sum, dict(sampler.max_each)
        w.samples = rx.appended() - a0
        w.body_bytes, w.raw_bytes = p1.body_bytes - p0.body_bytes, p1.raw_bytes - p0.raw_bytes
        w.requests = p1.requests - p0.requests
        e1 = side.extra()
        w.extra = {k: e1[k] - e0[k] for k in e0}
        # Samples of the benchmark's own guests whose timestamps fall in (t1 - seconds, t1].
        sel = f'{{__name__=~"libvirt_.+",domain=~"{GUEST_RE}"}}'
        time.sleep(min(interval, 5.0))  # let the last cycle's requests land
        w.guest_samples = raw_samples(rx.port, sel, seconds, t1)
        ups = [float(v) for r in query(rx.port, f"{side.up_selector}[{int(seconds)}s]", t1)
               for _, v in r["values"]]  # fmt: skip
        w.up = sum(ups) / len(ups) if ups else 0.0
    return w


def outage_window(ours: Ours, args: argparse.Namespace, run: int) -> Window:
    """A fresh agent with its receiver unreachable for one window: what the spool holds."""
    rx = ours.rx
    domains = count_domains()
    rx.proxy.set_down(True)
    try:
        ours.start(run)
        wait_until_spooling(ours, args.interval)
        w = measure_spooling(ours, args, domains)
    finally:
        rx.proxy.set_down(False)
    deliver_backlog(ours, run + 1, w)
    return w


def wait_until_spooling(ours: Ours, interval: float) -> None:
    """Start-up (imports, the first cycle's XML reads) stays out of the window, as in A's."""
    deadline = time.monotonic() + START_TIMEOUT
    while ours.spool_stats()[0] == 0:
        ours.check()
        if time.monotonic() > deadline:
            raise BenchError(f"A spooled nothing within {START_TIMEOUT:.0f}s; log: "
                             f"{ours.procs[0].log}\n{tail(ours.procs[0].log)}")  # fmt: skip
        time.sleep(0.5)
    time.sleep(interval + 1)


def measure_spooling(ours: Ours, args: argparse.Namespace, domains: int) -> Window:
    """One window of the agent spooling, then its spool files once it has closed them."""
    s0, f0 = ours.spool_stats()[0], ours.spool_file_bytes()
    libvirtd = Libvirtd()
    c0, l0, t0 = cpu_ticks(ours.procs[0].pid), libvirtd.ticks(), time.time()
    deadline = time.monotonic() + args.window
    largest = 0  # the files at their largest during the outage, read every 0.25 s
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.25))
        ours.check()
        largest = max(largest, ours.spool_file_bytes())
    c1, l1, t1 = cpu_ticks(ours.procs[0].pid), libvirtd.ticks(), time.time()
    samples, body, requests = ours.spool_stats()
    live = max(largest, ours.spool_file_bytes())
    index = ours.spool_index_bytes()
    rss = rss_kb(ours.procs[0].pid)
    ours.stop()  # SQLite checkpoints the WAL into the database when the agent closes it
    closed = ours.spool_file_bytes()
    w = Window("A-outage", t1 - t0, round(args.window / args.interval), Libvirtd.seconds(l0, l1),
               domains, cpu_s=(c1 - c0) / CLK_TCK, rss_kb=rss)  # fmt: skip
    w.extra = {"spool_samples": samples, "spool_body": body, "spool_requests": requests,
               "spool_samples_in_window": samples - s0, "spool_live": live,
               "spool_live_growth": live - f0, "spool_closed": closed,
               "spool_index": index}  # fmt: skip
    return w


def deliver_backlog(ours: Ours, run: int, w: Window) -> None:
    """The backlog must reach the receiver once it is back: a fresh agent on the same spool;
    whether it got there, and how long it took, go into `w.extra`."""
    rx = ours.rx
    samples = w.extra["spool_samples"]
    before = rx.appended()
    ours.start(run, spool=ours.spool)
    deadline = time.monotonic() + 120
    try:
        while True:
            ours.check()
            if ours.spool_stats()[2] == 0 and rx.appended() - before >= samples:
                w.extra["backlog_delivered"] = 1
                break
            if time.monotonic() > deadline:
                w.extra["backlog_delivered"] = 0
                break
            time.sleep(1)
        w.extra["backlog_delivery_s"] = 120 - (deadline - time.monotonic())
    finally:
        ours.stop()


def libvirtd_probe(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """libvirtd's CPU per collection, measured in short bursts against quiet gaps around them.

    Other work on a shared host loads libvirtd by far more than a 5 s cycle does, in bursts, so
    whole windows against idle windows can give nothing usable. Here each side's collection
    runs `--probe-calls` times back to back (A: the agent's own `Collector.collect()`, in this
    process, after a first call that read the XML; B: GET /metrics of the exporter, which does
    all its libvirt calls per scrape) between two quiet gaps of the same length; the induced
    CPU is the burst's minus the gaps' rate, per call; the median over `--probe-rounds`."""
    from pusher.collect import Collector  # the agent's code: its libvirt calls, nothing else

    port = free_port()
    exporter = Proc("probe exporter", [
        EXPORTER, f"--web.listen-address=127.0.0.1:{port}", f"--libvirt.uri={URI}",
        "--libvirt.export-nova-metadata",
    ], workdir / "probe-exporter.log")  # fmt: skip
    collector = Collector(RO_URI, use_events=False)
    calls: dict[str, Any] = {
        "A": collector.collect,
        "B": lambda: http_get(f"http://127.0.0.1:{port}/metrics", timeout=60),
    }
    induced: dict[str, list[float]] = {"A": [], "B": []}
    wall: dict[str, list[float]] = {"A": [], "B": []}
    try:
        wait_http(f"http://127.0.0.1:{port}/", exporter)
        for call in calls.values():
            call()  # connection, XML cache, first-time costs
        domains = count_domains()
        for r in range(args.probe_rounds):
            for kind in ("A", "B") if r % 2 == 0 else ("B", "A"):
                burst = probe_burst(calls[kind], args.probe_calls, args.probe_gap)
                if burst is None:
                    continue  # libvirtd was restarted meanwhile
                induced[kind].append(burst[0])
                wall[kind].append(burst[1])
            exporter.check()
    finally:
        collector.close()
        exporter.stop()
    return probe_medians(induced, wall, domains, args.probe_rounds)


def probe_burst(call: Callable[[], Any], calls: int, gap: float) -> tuple[float, float] | None:
    """(libvirtd CPU seconds induced, wall seconds) per call of `calls` back-to-back calls
    between two quiet `gap`s; None if libvirtd was restarted meanwhile."""
    lv = Libvirtd()
    g0, tg0 = lv.ticks(), time.monotonic()
    time.sleep(gap)
    b0, tb0 = lv.ticks(), time.monotonic()
    for _ in range(calls):
        call()
    b1, tb1 = lv.ticks(), time.monotonic()
    time.sleep(gap)
    g1, tg1 = lv.ticks(), time.monotonic()
    if None in (g0, b0, b1, g1):
        return None
    assert g0 is not None and b0 is not None and b1 is not None and g1 is not None
    rate = ((b0 - g0) + (g1 - b1)) / CLK_TCK / ((tb0 - tg0) + (tg1 - tb1))
    burst = (b1 - b0) / CLK_TCK
    return (burst - rate * (tb1 - tb0)) / calls, (tb1 - tb0) / calls


def probe_medians(induced: dict[str, list[float]], wall: dict[str, list[float]], domains: int,
                  rounds: int) -> dict[str, float]:  # fmt: skip
    """Each side's median over the rounds (and the spread of its induced CPU), in ms."""
    out: dict[str, float] = {"domains": domains, "rounds": rounds}
    for kind in ("A", "B"):
        if induced[kind]:
            out[f"{kind}_ms"] = 1000 * statistics.median(induced[kind])
            out[f"{kind}_spread_ms"] = 1000 * (max(induced[kind]) - min(induced[kind]))
            out[f"{kind}_wall_ms"] = 1000 * statistics.median(wall[kind])
    return out


# --- report ------------------------------------------------------------------------------------


def summarise(windows: list[Window], args: argparse.Namespace,
              probe: dict[str, float]) -> dict[str, dict[str, float]]:  # fmt: skip
    idle = [w for w in windows if w.kind == "idle"]
    idle = [w for w in idle if not math.isnan(w.libvirtd_s)]  # libvirtd restarted in it
    # Other work on the host loads libvirtd in bursts: the median window is the estimate
    # (the pooled mean is reported beside it).
    idle_rate = sum(w.libvirtd_s for w in idle) / sum(w.seconds for w in idle) if idle else 0.0
    idle_median = statistics.median(w.libvirtd_s / w.seconds for w in idle) if idle else 0.0
    out: dict[str, dict[str, float]] = {"idle": {"libvirtd_per_s": idle_rate}}
    for kind in ("A", "B"):
        ws = [w for w in windows if w.kind == kind]
        out[kind] = side_figures(kind, ws, idle, idle_rate, idle_median, probe)
    outage = [w for w in windows if w.kind == "A-outage"]
    if outage:
        e = outage[0].extra
        n = e["spool_samples"] or math.nan
        out["A"]["disk"] = e["spool_live"] / n
        out["A"]["disk_closed"] = e["spool_closed"] / n
        out["A"]["disk_with_index"] = (e["spool_live"] + e.get("spool_index", 0)) / n
        out["A"]["spool_body"] = e["spool_body"] / n
    return out


def side_figures(kind: str, ws: list[Window], idle: list[Window], idle_rate: float,
                 idle_median: float, probe: dict[str, float]) -> dict[str, float]:  # fmt: skip
    """One side's figures per cycle over its windows `ws`; libvirtd's with the idle baseline
    taken off (none without idle windows that have a libvirtd figure)."""
    cycles = sum(w.cycles for w in ws)
    samples = sum(w.samples for w in ws)
    lv = [w for w in ws if not math.isnan(w.libvirtd_s)]
    lv_cycles = sum(w.cycles for w in lv)
    s: dict[str, float] = {
        "cpu_ms": 1000 * sum(w.cpu_s for w in ws) / cycles,
        "libvirtd_ms": 1000
        * statistics.median((w.libvirtd_s - idle_median * w.seconds) / w.cycles for w in lv)
        if lv and idle
        else math.nan,
        "libvirtd_mean_ms": 1000 * sum(w.libvirtd_s - idle_rate * w.seconds for w in lv) / lv_cycles
        if lv and idle
        else math.nan,
        "samples": samples / cycles,
        "guest_samples": sum(w.guest_samples for w in ws) / cycles,
        "rss_mb": max(w.rss_kb for w in ws) / 1024,
        "wire": sum(w.body_bytes for w in ws) / samples if samples else math.nan,
        "wire_raw": sum(w.raw_bytes for w in ws) / samples if samples else math.nan,
        "requests": sum(w.requests for w in ws) / cycles,
        "up": sum(w.up * w.cycles for w in ws) / cycles,
    }
    for name in {n for w in ws for n in w.rss_each_kb}:
        s[f"rss_mb:{name}"] = max(w.rss_each_kb.get(name, 0) for w in ws) / 1024
    if kind == "B":
        wal_samples = sum(w.extra["wal_samples"] for w in ws)
        s["disk"] = sum(w.extra["wal_bytes"] for w in ws) / wal_samples
        s["wire_agent"] = sum(w.extra["rw_bytes"] for w in ws) / samples
    s["probe_ms"] = probe.get(f"{kind}_ms", math.nan)
    s["probe_wall_ms"] = probe.get(f"{kind}_wall_ms", math.nan)
    return s


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:,.{digits}f}"


def ratio(x: float, y: float) -> float:
    return x / y if y and not math.isnan(x) and not math.isnan(y) else math.nan


def window_table(windows: list[Window], args: argparse.Namespace) -> list[str]:
    lines = [
        f"per window (interval {args.interval:g}s; cpu and libvirtd: ms per cycle, libvirtd raw, "
        "before the idle baseline is taken off; idle: libvirtd ms per second):",
        f"  {'window':<9}{'s':>5}{'cycles':>7}{'domains':>8}{'up %':>6}{'cpu':>7}  "
        f"{'(per process)':<17}{'libvirtd':>9}{'samples/c':>10}{'guest/c':>8}{'RSS MB':>7}"
        f"{'B/sample':>9}{'req/c':>6}",
    ]
    for w in windows:
        if w.kind == "idle":
            lines.append(f"  {w.kind:<9}{w.seconds:>5.0f}{'':>7}{w.domains:>8}{'':>6}{'':>7}  "
                         f"{'':<17}{fmt(1000 * w.libvirtd_s / w.seconds):>9}")  # fmt: skip
            continue
        c = w.cycles
        each = " + ".join(f"{1000 * v / c:.1f}" for _, v in sorted(w.cpu_each_s.items()))
        each = f"({each})" if len(w.cpu_each_s) > 1 else ""
        if "main_thread_s" in w.extra:
            main = 1000 * w.extra["main_thread_s"] / c
            each = f"({main:.1f} + {1000 * w.cpu_s / c - main:.1f})"
        wire = w.body_bytes / w.samples if w.samples else math.nan
        lines.append(
            f"  {w.kind:<9}{w.seconds:>5.0f}{c:>7}{w.domains:>8}{fmt(100 * w.up, 0):>6}"
            f"{1000 * w.cpu_s / c:>7.1f}  {each:<17}{fmt(1000 * w.libvirtd_s / c):>9}"
            f"{w.samples / c:>10.0f}{w.guest_samples / c:>8.0f}{w.rss_kb / 1024:>7.1f}"
            f"{fmt(wire, 2):>9}{w.requests / c:>6.1f}"
        )
    lines.append(
        "  (per process: A main thread (collect, encode, spool) + its other threads (send, "
        "libvirt RPC and events); B exporter + prometheus agent. libvirtd '-': restarted "
        "during the window, which is left out of the libvirtd figures)"
    )
    return lines


def report(windows: list[Window], args: argparse.Namespace, extra_domains: int,
           probe: dict[str, float], exporter_error: str = "") -> str:  # fmt: skip
    s = summarise(windows, args, probe)
    a, b = s["A"], s["B"]
    lines = window_table(windows, args)
    lines += result_table(a, b, args)
    lines += result_notes(b, args, probe)
    lines += target_lines(a, b, args, exporter_error)
    lines += outage_lines(windows)
    if extra_domains:
        lines += [
            "",
            f"note: libvirtd also held up to {extra_domains} domain(s) of other work on this host "
            "during the run; both sides read every domain, so the per-cycle CPU figures include "
            "them; the 'guests' samples row counts only the benchmark's.",
        ]
    return "\n".join(lines)


def result_table(a: dict[str, float], b: dict[str, float], args: argparse.Namespace) -> list[str]:
    """A against B figure by figure, with REFERENCE.md §7's B figures beside them."""
    proto = "Remote-Write 2.0" if args.protocol == "v2" else "Remote-Write 1.0"
    lines = [
        "",
        f"result ({args.guests} guests, {args.interval:g}s interval, {args.rounds} round(s) of "
        f"{args.window:g}s windows; A = libvirt-pusher, B = prometheus-libvirt-exporter + "
        "prometheus agent):",
        f"  {'figure':<46}{'A ours':>10}{'B theirs':>10}{'A/B':>7}  {'REF §7 B':>9}",
    ]
    table: list[tuple[str, float, float, str | None, int]] = [
        ("CPU per cycle, ms (B: exporter + agent)", a["cpu_ms"], b["cpu_ms"], "cpu_ms", 1),
        ("libvirtd CPU induced per cycle, ms (probe)", a["probe_ms"], b["probe_ms"],
         "libvirtd_ms", 1),
        ("  windows vs idle windows, median", a["libvirtd_ms"], b["libvirtd_ms"], None, 1),
        ("  windows vs idle windows, pooled mean", a["libvirtd_mean_ms"], b["libvirtd_mean_ms"],
         None, 1),
        ("wall time of one collection, ms (probe)", a["probe_wall_ms"], b["probe_wall_ms"], None,
         1),
        ("cycles whose collection succeeded, %", 100 * a["up"], 100 * b["up"], None, 0),
        ("samples delivered per cycle (all)", a["samples"], b["samples"], None, 0),
        (f"  of which libvirt_* of the {args.guests} guests", a["guest_samples"],
         b["guest_samples"], None, 0),
        ("resident memory, max MB", a["rss_mb"], b["rss_mb"], "rss_mb", 1),
        (f"wire bytes per sample (request bodies; A {proto})", a["wire"], b["wire"], "wire", 2),
        ("  incl. HTTP request lines and headers", a["wire_raw"], b["wire_raw"], None, 2),
        ("remote-write requests per cycle", a["requests"], b["requests"], None, 1),
        ("disk bytes per buffered sample", a.get("disk", math.nan), b["disk"], "disk", 2),
        ("  A: with SQLite's -shm index (fixed size)", a.get("disk_with_index", math.nan),
         b["disk"], None, 2),
        ("  A: after SQLite checkpoint (agent closed)", a.get("disk_closed", math.nan),
         b["disk"], None, 2),
        ("  A: request bodies alone", a.get("spool_body", math.nan), b["disk"], None, 2),
    ]  # fmt: skip
    for name, x, y, ref, digits in table:
        refv = fmt(REFERENCE_B[ref], 1) if ref else ""
        lines.append(f"  {name:<46}{fmt(x, digits):>10}{fmt(y, digits):>10}"
                     f"{fmt(ratio(x, y), 2):>7}  {refv:>9}")  # fmt: skip
    return lines


def result_notes(b: dict[str, float], args: argparse.Namespace,
                 probe: dict[str, float]) -> list[str]:  # fmt: skip
    """How the table's figures were taken, and B's cross-check of its wire bytes."""
    rss_b = " + ".join(f"{b[k]:.1f}" for k in sorted(b) if k.startswith("rss_mb:"))
    return [
        f"  B resident memory: {rss_b} MB (exporter + prometheus agent; REF §7: 50 + 32); "
        f"A and B are the maxima of the processes' summed VmRSS",
        "  disk: A = spool.db + spool.db-wal at their largest (read every 0.25 s) during one "
        "window of a fresh agent with its receiver unreachable, / samples in the spool (the "
        "-shm line adds SQLite's WAL index); B = growth of the agent's WAL directory during its "
        "windows / samples it appended to the WAL",
        "  libvirtd probe: each side's collection run back to back "
        f"{args.probe_calls} times between two quiet {args.probe_gap:g}s gaps, "
        f"{probe.get('rounds', 0):.0f} rounds, median; {probe.get('domains', 0):.0f} domains on "
        f"the host; spread (max-min) A {fmt(probe.get('A_spread_ms', math.nan))}, B "
        f"{fmt(probe.get('B_spread_ms', math.nan))} ms",
        f"  B wire cross-check: the agent's prometheus_remote_storage_bytes_total gives "
        f"{b['wire_agent']:.2f} bytes per sample",
    ]


def evaluate_targets(a: dict[str, float], b: dict[str, float],
                     args: argparse.Namespace) -> list[tuple[str, bool | None]]:  # fmt: skip
    """Issue 5's targets, each with whether A met it (None: not measurable here)."""
    cpu_r, smp_r = ratio(a["cpu_ms"], b["cpu_ms"]), ratio(a["guest_samples"], b["guest_samples"])
    lv_r = ratio(a["probe_ms"], b["probe_ms"])
    lv_how = "probe"
    if math.isnan(lv_r):
        lv_r, lv_how = ratio(a["libvirtd_ms"], b["libvirtd_ms"]), "windows"
    rss_r, wire_r = ratio(a["rss_mb"], b["rss_mb"]), ratio(a["wire"], b["wire"])
    targets: list[tuple[str, bool | None]] = [
        (f"CPU per cycle <= 1/4 of B's while delivering >= 2x its samples (CPU {cpu_r:.2f}, "
         f"samples of the guests {smp_r:.2f}x)", cpu_r <= 0.25 and smp_r >= 2),
        (f"libvirtd CPU induced per cycle <= 1/2 of B's ({lv_r:.2f}, {lv_how})", lv_r <= 0.5),
        (f"resident memory <= 1/2 of B's ({rss_r:.2f})", rss_r <= 0.5),
        (f"resident memory <= 40 MB with 300 guests: not measurable with real guests here "
         f"(at {args.guests} guests: {a['rss_mb']:.1f} MB)", None),
        (f"wire bytes per sample <= B's, Remote-Write 1.0 ({wire_r:.2f})", wire_r <= 1)
        if args.protocol == "v1"
        else (f"wire bytes per sample <= 1/2 of B's, Remote-Write 2.0 ({wire_r:.2f})",
              wire_r <= 0.5),
    ]  # fmt: skip
    if "disk" in a:
        live, closed = ratio(a["disk"], b["disk"]), ratio(a["disk_closed"], b["disk"])
        targets.append((f"disk bytes per buffered sample <= 1/2 of B's WAL (spool files live "
                        f"{live:.2f}; after checkpoint {closed:.2f})", live <= 0.5))  # fmt: skip
    return targets


def target_lines(a: dict[str, float], b: dict[str, float], args: argparse.Namespace,
                 exporter_error: str) -> list[str]:  # fmt: skip
    """The targets, met or not; those comparing with B are invalid when B's collection
    mostly failed, since its figures are then not those of a working pipeline."""
    targets = evaluate_targets(a, b, args)
    lines = ["", "targets (issue 5):"]
    valid = b["up"] >= 0.9 and b["guest_samples"] > 0
    for text, ok in targets:
        mark = "n/a    " if ok is None else ("met    " if ok else "NOT MET")
        if ok is not None and not valid and "B's" in text:
            mark = "invalid"
        lines.append(f"  [{mark}] {text}")
    if not valid:
        lines.append(f"  invalid: B's collection succeeded in only {100 * b['up']:.0f}% of its "
                     "cycles (see the exporter's log line below), so its figures are not those "
                     "of a working pipeline")  # fmt: skip
        if exporter_error:
            lines.append(f"  exporter: {exporter_error}")
    return lines


def outage_lines(windows: list[Window]) -> list[str]:
    """A's spool after the outage window, if there was one."""
    outage = [w for w in windows if w.kind == "A-outage"]
    if not outage:
        return []
    o, e = outage[0], outage[0].extra
    return [
        "",
        f"A's spool after {o.seconds:.0f}s with its receiver unreachable: "
        f"{e['spool_samples']:,.0f} samples in {e['spool_requests']:.0f} requests, "
        f"{e['spool_body']:,.0f} body bytes, files {e['spool_live']:,.0f} bytes live and "
        f"{e['spool_closed']:,.0f} once the agent closed it; agent CPU "
        f"{1000 * o.cpu_s / o.cycles:.1f} ms per cycle while buffering; the backlog was "
        + ("delivered" if e.get("backlog_delivered") else "NOT delivered")
        + f" {e.get('backlog_delivery_s', 0):.0f}s after the receiver came back",
    ]


# --- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """The command line; `--window` comes back rounded to a whole number of intervals."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--guests", type=int, default=20, help="real QEMU guests (default 20)")
    ap.add_argument("--interval", type=float, default=5, help="seconds per cycle (default 5)")
    ap.add_argument(
        "--window",
        type=float,
        default=60,
        help="seconds per window, rounded to whole intervals (default 60)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="idle/A/B rounds (default 3)")
    ap.add_argument(
        "--probe-rounds",
        type=int,
        default=8,
        help="rounds of the libvirtd probe (default 8; 0: none)",
    )
    ap.add_argument(
        "--probe-calls", type=int, default=10, help="collections per probe burst (default 10)"
    )
    ap.add_argument(
        "--probe-gap",
        type=float,
        default=3,
        help="quiet seconds before and after each burst (default 3)",
    )
    ap.add_argument(
        "--protocol",
        choices=["v1", "v2"],
        default="v1",
        help="A's remote-write protocol (default v1; v2 is handed to the receiver as 1.0 by "
        "the counting proxy, which counts the 2.0 bytes)",
    )
    ap.add_argument("--no-outage", action="store_true", help="skip the spool (outage) window")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--json", metavar="FILE", help="also write every window's figures here")
    args = ap.parse_args()  # fmt: skip
    if args.guests < 1 or args.rounds < 1 or args.interval <= 0:
        ap.error("--guests, --rounds and --interval must be positive")
    args.window = max(1, round(args.window / args.interval)) * args.interval
    return args


def check_host() -> None:
    """Exits with a hint if a tool is missing or not root, before anything is created."""
    for tool in (EXPORTER, PROMETHEUS, "qemu-img"):
        if not shutil.which(tool):
            hint = " (apt-get install -y prometheus-libvirt-exporter)" if tool == EXPORTER else ""
            raise SystemExit(f"macro.py: {tool} not found{hint}")
    if os.geteuid() != 0:
        raise SystemExit("macro.py: run as root (guests on qemu:///system, libvirtd's /proc)")


def time_budget(args: argparse.Namespace) -> float:
    """Seconds the run should take at most; the alarm that ends a stuck run is set from it."""
    per_round = 3 * args.window + 2 * (args.interval * 2 + 20)
    budget: float = args.rounds * per_round + (0 if args.no_outage else 2 * args.window + 150)
    budget += args.probe_rounds * 2 * (2 * args.probe_gap + args.probe_calls * 2)
    budget += 60 + 10 * args.guests  # guests up and down, receivers
    return budget


def on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def arm_signals(budget: float) -> None:
    """Bounded: an alarm ends a stuck run; it, SIGTERM and SIGINT all arrive as a
    KeyboardInterrupt, so main's cleanup still runs."""
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started in the background (SIG_IGN)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(budget * 1.5) + 120)


@dataclass
class Bench:
    """What the run's phases share; teardown stops and removes what is recorded here, whichever
    phase failed."""

    args: argparse.Namespace
    work: Path
    names: list[str]  # the guests' domain names
    receivers: list[Receiver] = field(default_factory=list)
    sides: list[Side] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)


def set_up(bench: Bench) -> tuple[Ours, Theirs]:
    """The guests, both receivers and both sides (each side is started by its windows)."""
    args, work, names = bench.args, bench.work, bench.names
    Libvirtd()  # there is one
    t = time.monotonic()
    create_guests(URI, work / "guests", args.guests, prefix="macro", base=GUEST_BASE)
    print(f"  {args.guests} guests up in {time.monotonic() - t:.0f}s "
          f"({names[0]} … {names[-1]})", flush=True)  # fmt: skip
    rx_a = Receiver("A", work / "rx-a", transcode_v2=args.protocol == "v2")
    rx_b = Receiver("B", work / "rx-b")
    bench.receivers += [rx_a, rx_b]
    ours, theirs = Ours(args, work / "a", rx_a), Theirs(args, work / "b", rx_b)
    bench.sides += [ours, theirs]
    time.sleep(10)  # the guests' boot settles before the first idle window
    return ours, theirs


def run_rounds(bench: Bench, ours: Ours, theirs: Theirs) -> int:
    """The idle/A/B rounds (B before A every other round); returns the number of side runs so
    far, which numbers each run's work directory (the outage window's runs come next)."""
    args = bench.args
    run = 0
    for r in range(args.rounds):
        order: list[Side | None] = [None, ours, theirs] if r % 2 == 0 else [None, theirs, ours]
        for side in order:
            if side is None:
                w = measure("idle", args.window, args.interval)
            else:
                run += 1
                w = side_window(side, args, run)
            bench.windows.append(w)
            print_window_done(r, w)
    return run


def side_window(side: Side, args: argparse.Namespace, run: int) -> Window:
    """The side started fresh, warmed up outside the window, measured, then stopped."""
    side.start(run)
    try:
        warm_up(side, args.interval)
        return measure(side.label, args.window, args.interval, side)
    finally:
        side.stop()


def print_window_done(round_index: int, w: Window) -> None:
    print(f"  round {round_index + 1}: {w.kind:<5} done"
          + (f"  cpu {1000 * w.cpu_s / w.cycles:.1f} ms/cycle, "
             f"{w.samples / w.cycles:.0f} samples/cycle, RSS {w.rss_kb / 1024:.1f} MB"
             if w.kind != "idle" else
             f"  libvirtd {fmt(1000 * w.libvirtd_s / w.seconds)} ms/s"),
          flush=True)  # fmt: skip


def run_probe(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """The libvirtd probe unless `--probe-rounds 0`; {} if it was skipped."""
    probe: dict[str, float] = {}
    if args.probe_rounds:
        try:
            probe = libvirtd_probe(args, work)
        except (ImportError, TypeError, AttributeError, libvirt.libvirtError) as e:
            # The probe calls the agent's Collector directly: report, go on without it.
            print(f"warning: libvirtd probe skipped: {e!r}", file=sys.stderr)
        print(f"  libvirtd probe: A {fmt(probe.get('A_ms', math.nan))} ms, B "
              f"{fmt(probe.get('B_ms', math.nan))} ms per collection", flush=True)  # fmt: skip
    return probe


def run_outage(bench: Bench, ours: Ours, run: int) -> None:
    w = outage_window(ours, bench.args, run)
    bench.windows.append(w)
    print(f"  outage: {w.extra['spool_samples']:.0f} samples spooled", flush=True)


def report_results(bench: Bench, probe: dict[str, float], theirs: Theirs) -> None:
    """The report, what it was measured with, and every window's figures as JSON if asked."""
    args, windows = bench.args, bench.windows
    extra_domains = max(w.domains for w in windows) - args.guests
    print()
    error = f"{theirs.failed_scrapes} failed scrapes, last: {theirs.last_error}"
    print(report(windows, args, extra_domains, probe,
                 error if theirs.failed_scrapes else ""))  # fmt: skip
    print(
        f"\nagent: {agent_revision()}; "
        f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([w.__dict__ for w in windows], indent=1))


def agent_revision() -> str:
    """The commit the agent ran from, flagged if pusher/ had uncommitted changes."""
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "pusher"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    return f"{rev}{' with local changes in pusher/' if dirty else ''}"


def tear_down(bench: Bench, ok: bool) -> None:
    """Stops everything started and removes the guests; keeps the work directory (its logs)
    unless the run succeeded without `--keep`."""
    signal.alarm(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for side in bench.sides:
        side.stop()
    for rx in bench.receivers:
        rx.close()
    Proc.stop_all()
    try:
        destroy_guests(URI, bench.names)
    except Exception as e:
        print(f"warning: could not remove the guests {bench.names[0]}…: {e}", file=sys.stderr)
    if ok and not bench.args.keep:
        shutil.rmtree(bench.work, ignore_errors=True)
    else:
        print(f"work directory kept: {bench.work}", file=sys.stderr)


def main() -> int:
    args = parse_args()
    check_host()
    budget = time_budget(args)
    print(
        f"macro: {args.guests} guests, interval {args.interval:g}s, {args.rounds} round(s) of "
        f"idle/A/B windows of {args.window:g}s (~{budget / 60:.0f} min at most)",
        flush=True,
    )
    arm_signals(budget)
    work = Path(tempfile.mkdtemp(prefix="pusher-macro-"))
    work.chmod(0o755)  # the qemu user must reach the guest images below it
    names = [f"instance-{GUEST_BASE + i:08x}" for i in range(1, args.guests + 1)]
    bench = Bench(args, work, names)
    ok = False
    try:
        ours, theirs = set_up(bench)
        runs = run_rounds(bench, ours, theirs)
        probe = run_probe(args, work)
        if not args.no_outage:
            run_outage(bench, ours, runs + 1)
        report_results(bench, probe, theirs)
        ok = True
        return 0
    except BenchError as e:
        print(f"macro.py: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"macro.py: interrupted ({e or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        tear_down(bench, ok)


if __name__ == "__main__":
    sys.exit(main())
