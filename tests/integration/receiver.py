"""Debian's `prometheus` as a real remote-write receiver, queried through its HTTP API."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from services import became_ready

RECEIVER_START_S = 30.0
PROMETHEUS_CONFIG = "global:\n  scrape_interval: 15s\n"  # no scrape configs: it only receives


class Receiver:
    """Debian's `prometheus` running as a remote-write receiver on a free loopback port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        """`port` and an existing `workdir` restart a receiver with the data it had."""
        if port is None:
            with socket.socket() as s:  # could be taken again before prometheus binds it
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        workdir.mkdir(parents=True, exist_ok=True)
        self.base_url = f"http://127.0.0.1:{port}"
        self.write_url = f"{self.base_url}/api/v1/write"
        self.log_path = workdir / "prometheus.log"
        config = workdir / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG)
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the fd
            self._proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-remote-write-receiver",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        if not became_ready(self._proc, f"{self.base_url}/-/ready", RECEIVER_START_S):
            pytest.fail(f"prometheus did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        response = requests.get(f"{self.base_url}{path}", params=params, timeout=10)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"{path} {params} -> {response.status_code}: {body}")
        return body["data"]

    def query(self, promql: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns `data.result` (each {"metric": {...}, "value": [ts, "v"]})."""
        params: dict[str, Any] = {"query": promql}
        if time is not None:
            params["time"] = time
        result: list[dict[str, Any]] = self._get("/api/v1/query", params)["result"]
        return result

    def series(self, match: str) -> list[dict[str, str]]:
        """Label sets of all stored series matching the selector `match`."""
        result: list[dict[str, str]] = self._get("/api/v1/series", {"match[]": match})
        return result

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
