"""The health file: `<buffer.path>/health.json`, written by the agent after every cycle and
read by `libvirt-pusher --health` (a container healthcheck needs no port).

Unhealthy means one of: no cycle for three intervals (the agent hangs or is gone); libvirt
unreadable for HEALTH_LIBVIRT_CYCLES cycles in a row (socket gone, access refused, libvirtd
down); a backlog with no successful send for HEALTH_MAX_SEND_AGE (Mimir or the link down).
The answer names the reason, with libvirt's own error, so `docker inspect` shows why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

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
    read within HEALTH_LIBVIRT_CYCLES cycles, and no backlog left unsent for more than
    HEALTH_MAX_SEND_AGE."""
    path = os.path.join(directory, HEALTH_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        cycle_at = float(state["cycle_at"])
        interval = float(state["interval"])
        last_send = float(state["last_send_success"])
        oldest = state["oldest_pending_ms"]
        pending = int(state["spool_requests"])
        failures = int(state.get("libvirt_failures", 0))
        down_since = state.get("libvirt_down_since")
        error = str(state.get("libvirt_error", ""))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"no readable health file at {path}: {e}"
    if now - cycle_at > 3 * interval + 5:
        return False, f"last cycle {now - cycle_at:.0f}s ago (interval {interval:g}s)"
    if failures >= HEALTH_LIBVIRT_CYCLES:
        since = f" ({now - float(down_since):.0f}s)" if down_since is not None else ""
        return False, f"libvirt unreadable for {failures} cycles{since}: {error or 'no error'}"
    if pending and oldest is not None:
        waiting = now - max(last_send, float(oldest) / 1000)
        if waiting > HEALTH_MAX_SEND_AGE:
            return False, f"{pending} request(s) unsent; no successful send for {waiting:.0f}s"
    libvirt = "up" if state.get("libvirt_up") else f"DOWN for {failures} cycle(s)"
    return True, f"last cycle {now - cycle_at:.1f}s ago, libvirt {libvirt}, {pending} pending"
