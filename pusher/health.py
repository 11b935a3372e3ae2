"""The health file: `<buffer.path>/health.json`, written by the agent after every cycle and
read by `libvirt-pusher --health` (a container healthcheck needs no port).

Unhealthy means one of: no cycle for three intervals (the agent hangs or is gone); libvirt
unreadable for HEALTH_LIBVIRT_CYCLES cycles in a row (socket gone, access refused, libvirtd
down); a backlog with no successful send for HEALTH_MAX_SEND_AGE (Mimir or the link down),
at any of the remote-write endpoints: each is judged on its own, and the answer names the
endpoint when there are several. The answer names the reason, with libvirt's own error, so
`docker inspect` shows why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HEALTH_FILE",
    "HEALTH_LIBVIRT_CYCLES",
    "HEALTH_MAX_SEND_AGE",
    "LibvirtStreak",
    "check_health",
    "write_health",
]

log = logging.getLogger(__name__)

HEALTH_FILE = "health.json"
# --health fails when a backlog has had no successful send for this long.
HEALTH_MAX_SEND_AGE = 600.0
# --health fails when this many cycles in a row could not read libvirt: one failed cycle is
# a libvirtd restart, three are an outage (45 s at the default 15 s interval).
HEALTH_LIBVIRT_CYCLES = 3
# libvirt's error as kept in the health file: enough for the reason, never a flood.
ERROR_CHARS = 300


class LibvirtStreak:
    """Consecutive cycles that could not read libvirt, since when, and the last error."""

    def __init__(self) -> None:
        self.failures = 0
        self.since: float | None = None
        self.error = ""

    def record(self, up: bool, at: float, error: str = "") -> None:
        if up:
            if self.failures >= HEALTH_LIBVIRT_CYCLES:
                log.warning("libvirt readable again after %d failed cycles", self.failures)
            self.failures, self.since, self.error = 0, None, ""
            return
        self.failures += 1
        self.since = at if self.since is None else self.since
        self.error = error[:ERROR_CHARS]
        if self.failures == HEALTH_LIBVIRT_CYCLES:
            log.warning("libvirt unreadable for %d cycles; --health reports unhealthy: %s",
                        self.failures, self.error)  # fmt: skip

    def state(self) -> dict[str, object]:
        return {"libvirt_failures": self.failures, "libvirt_down_since": self.since,
                "libvirt_error": self.error}  # fmt: skip


def write_health(directory: str, state: Mapping[str, object]) -> None:
    path = os.path.join(directory, HEALTH_FILE)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, path)  # readers never see a half-written file
    except OSError as e:
        log.debug("cannot write %s: %s", path, e)


def check_health(directory: str, now: float) -> tuple[bool, str]:
    """(healthy, why) from the agent's health file: a cycle within three intervals, libvirt
    read within HEALTH_LIBVIRT_CYCLES cycles, and at no endpoint a backlog left unsent for
    more than HEALTH_MAX_SEND_AGE."""
    path = os.path.join(directory, HEALTH_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        cycle_at = float(state["cycle_at"])
        interval = float(state["interval"])
        # An older agent's file (before several endpoints) has its one endpoint at the top.
        listed = state.get("endpoints", {"default": state})
        endpoints = {str(k): _Endpoint.of(v) for k, v in listed.items()}
        failures = int(state.get("libvirt_failures", 0))
        down_since = state.get("libvirt_down_since")
        error = str(state.get("libvirt_error", ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return False, f"no readable health file at {path}: {e}"
    if now - cycle_at > 3 * interval + 5:
        return False, f"last cycle {now - cycle_at:.0f}s ago (interval {interval:g}s)"
    if failures >= HEALTH_LIBVIRT_CYCLES:
        since = f" ({now - float(down_since):.0f}s)" if down_since is not None else ""
        return False, f"libvirt unreadable for {failures} cycles{since}: {error or 'no error'}"
    for name, endpoint in endpoints.items():
        waiting = endpoint.waiting(now)
        if waiting > HEALTH_MAX_SEND_AGE:
            who = f"endpoint {name}: " if len(endpoints) > 1 else ""
            unsent = f"{endpoint.pending} request(s) unsent"
            return False, f"{who}{unsent}; no successful send for {waiting:.0f}s"
    libvirt = "up" if state.get("libvirt_up") else f"DOWN for {failures} cycle(s)"
    pending = sum(endpoint.pending for endpoint in endpoints.values())
    return True, f"last cycle {now - cycle_at:.1f}s ago, libvirt {libvirt}, {pending} pending"


@dataclass(frozen=True)
class _Endpoint:
    """An endpoint's part of the health file (`Endpoint.health` writes it)."""

    last_send: float
    pending: int
    oldest_ms: float | None

    @classmethod
    def of(cls, e: Mapping[str, Any]) -> _Endpoint:
        oldest = e["oldest_pending_ms"]
        return cls(float(e["last_send_success"]), int(e["spool_requests"]),
                   None if oldest is None else float(oldest))  # fmt: skip

    def waiting(self, now: float) -> float:
        """How long its backlog has waited for a successful send (0 without one)."""
        if not self.pending or self.oldest_ms is None:
            return 0.0
        return now - max(self.last_send, self.oldest_ms / 1000)
