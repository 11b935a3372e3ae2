"""A Docker engine for the tests, started by hand (no systemd here) and left as found.

dockerd changes the machine's network state: it sets the FORWARD policy to DROP, adds its
chains to the filter and nat tables (iptables and ip6tables), turns on IP forwarding and
creates the docker0 bridge. `DockerEngine.stop` undoes exactly what appeared after the start
and checks that the rules read back as before; a difference fails the test.
An engine that was already running is used and left running.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

DOCKER = "/usr/bin/docker"  # Debian's CLI: its classic `build` speaks BuildKit (RUN --mount)
START_S = 60.0
STOP_S = 30.0
TABLES = [
    ("iptables", "filter"),
    ("iptables", "nat"),
    ("ip6tables", "filter"),
    ("ip6tables", "nat"),
]
FORWARDING = [Path("/proc/sys/net/ipv4/ip_forward"), Path("/proc/sys/net/ipv6/conf/all/forwarding")]


def rules(tool: str, table: str) -> list[str]:
    out = subprocess.run(
        [tool, "-w", "-t", table, "-S"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.splitlines() if out.returncode == 0 else []


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, env=env)


class DockerEngine:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pidfile = workdir / "dockerd.pid"
        self.log_path = workdir / "dockerd.log"
        self.started = False
        self._proc: subprocess.Popen[bytes] | None = None
        self.before: dict[tuple[str, str], list[str]] = {}
        self.forwarding: dict[Path, str] = {}
        self.had_bridge = Path("/sys/class/net/docker0").exists()

    def answers(self) -> bool:
        try:
            return docker("info", timeout=20).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self) -> None:
        if not Path(DOCKER).exists() or not Path("/usr/sbin/dockerd").exists():
            pytest.fail("docker.io is not installed: scripts/setup-host.sh installs it")
        if self.answers():
            return  # someone else's engine: use it, leave it running
        self.before = {t: rules(*t) for t in TABLES}
        self.forwarding = {p: p.read_text() for p in FORWARDING if p.exists()}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                ["/usr/sbin/dockerd", "--pidfile", str(self.pidfile)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = True
        deadline = time.monotonic() + START_S
        while not self.answers():
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"dockerd did not answer within {START_S:.0f} s; cannot test the "
                    f"container stack on this machine:\n{self.log()[-3000:]}"
                )
            time.sleep(0.3)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stops the engine this object started and restores the network state it changed."""
        if not self.started:
            return
        self.started = False
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_S
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone
        if self._proc is not None:
            self._proc.wait(timeout=STOP_S)
        if not self.had_bridge and Path("/sys/class/net/docker0").exists():
            subprocess.run(["ip", "link", "delete", "docker0"], check=False, timeout=30)
        for (tool, table), before in self.before.items():
            undo_rules(tool, table, before)
        for path, value in self.forwarding.items():
            path.write_text(value)
        changed = {
            f"{tool} -t {table}": sorted(set(rules(tool, table)) ^ set(before))
            for (tool, table), before in self.before.items()
        }
        left = {k: v for k, v in changed.items() if v}
        if left:
            pytest.fail(f"dockerd's firewall changes could not all be undone: {left}")


def undo_rules(tool: str, table: str, before: list[str]) -> None:
    """Deletes the rules and chains that appeared since `before` and restores its policies."""
    now = rules(tool, table)
    was = set(before)
    run = [tool, "-w", "-t", table]
    for line in reversed(now):
        if line.startswith("-A ") and line not in was:
            subprocess.run([*run, "-D", *shlex.split(line[3:])], check=False, timeout=30)
    for line in now:
        if line.startswith("-N ") and line not in was:
            subprocess.run([*run, "-F", line.split()[1]], check=False, timeout=30)
    for line in now:
        if line.startswith("-N ") and line not in was:
            subprocess.run([*run, "-X", line.split()[1]], check=False, timeout=30)
    for line in before:
        if line.startswith("-P "):
            subprocess.run([*run, *line.split()], check=False, timeout=30)
