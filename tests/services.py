"""Waiting for a service the tests started (a receiver, Mimir) to answer."""

from __future__ import annotations

import subprocess
import time

import requests


def became_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    """Whether `url` answered 200 within `timeout` seconds while `proc` kept running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False
