"""The real Grafana Mimir (single process, every component) as the receiver in tests.

The binary comes from `MIMIR_BIN` (`.ci/run` and `scripts/test.sh` set it from the tool kept
beside the checkout); without it the tests that need Mimir are skipped with one line saying how
to get one. Each instance listens on free loopback ports, keeps its data in its own directory
(so it can be stopped and started again on the same data), and takes per-tenant limits through
a runtime overrides file, as production does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from services import became_ready

START_TIMEOUT = 60.0
HOW_TO_GET = (
    "set MIMIR_BIN to a Grafana Mimir 3.0.3 binary (the upstream release, linux/amd64: "
    "mimir-linux-amd64 from github.com/grafana/mimir/releases/tag/mimir-3.0.3)"
)


def mimir_binary() -> str:
    """The binary's path, or the test is skipped saying how to get one."""
    path = os.environ.get("MIMIR_BIN", "")
    if not path or not os.access(path, os.X_OK):
        pytest.skip(f"no Mimir binary: {HOW_TO_GET}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ring(**extra: Any) -> dict[str, Any]:
    return {"instance_addr": "127.0.0.1", "kvstore": {"store": "inmemory"}, **extra}


def config(data: Path, http_port: int, grpc_port: int, gossip_port: int) -> dict[str, Any]:
    """A monolithic Mimir on loopback, like the example that ships with the tool: in-memory
    rings, filesystem storage, usage reporting off, and `frontend.address` on loopback
    (without it queries hang on a machine whose other address is unreachable)."""
    return {
        "target": "all",
        "multitenancy_enabled": True,
        "server": {
            "http_listen_address": "127.0.0.1", "http_listen_port": http_port,
            "grpc_listen_address": "127.0.0.1", "grpc_listen_port": grpc_port,
            "log_level": "warn",
        },
        "usage_stats": {"enabled": False},
        "activity_tracker": {"filepath": str(data / "activity.log")},
        "distributor": {"ring": _ring()},
        "ingester": {"ring": _ring(replication_factor=1, min_ready_duration="0s",
                                   final_sleep="0s")},
        "store_gateway": {"sharding_ring": _ring(replication_factor=1)},
        "compactor": {"data_dir": str(data / "compactor"), "sharding_ring": _ring()},
        "ruler": {"rule_path": str(data / "ruler"), "ring": _ring()},
        "memberlist": {"bind_addr": ["127.0.0.1"], "bind_port": gossip_port, "join_members": []},
        "frontend": {"address": "127.0.0.1"},
        "blocks_storage": {
            "backend": "filesystem",
            "filesystem": {"dir": str(data / "blocks")},
            "bucket_store": {"sync_dir": str(data / "tsdb-sync")},
            "tsdb": {"dir": str(data / "tsdb")},
        },
        "ruler_storage": {"backend": "filesystem", "filesystem": {"dir": str(data / "rules")}},
        "runtime_config": {"file": str(data / "overrides.yaml"), "period": "1s"},
    }  # fmt: skip


class Mimir:
    """One real Mimir process; `stop()` and `start()` keep its ports and data directory."""

    def __init__(
        self,
        workdir: Path,
        overrides: dict[str, dict[str, Any]] | None = None,
        limits: dict[str, Any] | None = None,
        extra: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """`overrides`: per-tenant limits (runtime overrides file); `limits`: every tenant's;
        `extra`: more settings, merged into the config's top-level sections."""
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = config(workdir, free_port(), free_port(), free_port())
        if limits:
            cfg["limits"] = limits
        for section, values in (extra or {}).items():
            cfg[section] = {**cfg.get(section, {}), **values}
        path = workdir / "mimir.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self._prepare(path, workdir)
        self.set_overrides(overrides or {})
        self.start()

    @classmethod
    def from_config(cls, path: Path, workdir: Path) -> Mimir:
        """A Mimir from a config file of one's own (its HTTP port on 127.0.0.1)."""
        m = cls.__new__(cls)
        m._prepare(path, workdir)
        m.start()
        return m

    def _prepare(self, path: Path, workdir: Path) -> None:
        self.binary = mimir_binary()
        self.workdir = workdir
        self.config_path = path
        self.port = int(yaml.safe_load(path.read_text())["server"]["http_listen_port"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.push_url = f"{self.base_url}/api/v1/push"
        self.log_path = workdir / "mimir.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def set_overrides(self, overrides: dict[str, dict[str, Any]]) -> None:
        """Per-tenant limits; a running Mimir reads them again within a second or two."""
        path = self.workdir / "overrides.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"overrides": overrides}))
        os.replace(tmp, path)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, f"-config.file={self.config_path}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )  # fmt: skip
        if not became_ready(self._proc, f"{self.base_url}/ready", START_TIMEOUT):
            self.stop()
            raise AssertionError(f"Mimir did not get ready:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def query(self, promql: str, tenant: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        r = requests.get(f"{self.base_url}/prometheus/api/v1/query", params=params,
                         headers={"X-Scope-OrgID": tenant}, timeout=30)  # fmt: skip
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def value(self, promql: str, tenant: str, default: float = 0.0) -> float:
        """The single value a query gives (a sum over series, say), or `default`."""
        result = self.query(promql, tenant)
        return float(result[0]["value"][1]) if result else default

    def range_values(
        self, selector: str, tenant: str, seconds: float, at: float | None = None
    ) -> list[tuple[float, float]]:
        """Every raw sample of one series within `seconds` before `at` (default: now)."""
        result = self.query(f"{selector}[{int(seconds)}s]", tenant, at)
        if not result:
            return []
        assert len(result) == 1, f"{selector} matches {len(result)} series"
        return [(float(t), float(v)) for t, v in result[0]["values"]]
