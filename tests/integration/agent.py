"""Running the real agent (`python -m pusher`) as a separate process, for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml

RO_SOCKET_URI = "qemu:///system?socket=/var/run/libvirt/libvirt-sock-ro"


def write_config(directory: Path, remote_write_url: str, **sections: Any) -> Path:
    """A config file for the agent; `sections` override or add top-level keys."""
    cfg: dict[str, Any] = {
        "libvirt": {"uri": RO_SOCKET_URI},
        "collect": {"interval": "1s", "timeout": "1s"},
        "remote_write": {"url": remote_write_url, "tenant": "openstack", "timeout": "5s"},
        "external_labels": {"cluster": "test-cluster", "region": "test-region"},
        "buffer": {"path": str(directory / "spool")},
        "log": {"level": "debug"},
        "shutdown_grace": "3s",
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_once(config: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pusher", "-c", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_promtool_accepts(exposition: str) -> None:
    """`promtool check metrics` finds nothing wrong with a `--dry-run`'s text exposition."""
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


class AgentProcess:
    """The agent in serve mode, in the background; its log goes to a file.

    Every instance is tracked so that a failed test never leaves an agent running
    (`kill_leftovers`, called by an autouse fixture).
    """

    running: ClassVar[list[AgentProcess]] = []

    def __init__(self, config: Path, log_path: Path, args: Sequence[str] = ()) -> None:
        AgentProcess.running.append(self)
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pusher", "-c", str(config), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent did not stop within {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @classmethod
    def kill_leftovers(cls) -> None:
        while cls.running:
            agent = cls.running.pop()
            if agent.proc.poll() is None:
                agent.proc.kill()
            agent.proc.wait()


def stop_cleanly(agent: AgentProcess) -> str:
    """SIGTERM; the agent must exit 0 without a traceback. Returns its log."""
    status = agent.stop()
    log = agent.log()
    assert status == 0, log
    assert "Traceback" not in log, log
    return log


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll until `predicate()` is truthy; return its value or fail saying `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
