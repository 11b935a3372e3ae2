"""The health file: `<buffer.path>/health.json`, written by the agent after every cycle and
read by `libvirt-pusher --health` (a container healthcheck needs no port)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

__all__ = ["HEALTH_FILE", "HEALTH_MAX_SEND_AGE", "check_health", "write_health"]

log = logging.getLogger(__name__)

HEALTH_FILE = "health.json"
# --health fails when a backlog has had no successful send for this long.
HEALTH_MAX_SEND_AGE = 600.0


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
    """(healthy, why) from the agent's health file: a cycle within three intervals, and no
    backlog left unsent for more than HEALTH_MAX_SEND_AGE."""
    path = os.path.join(directory, HEALTH_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        cycle_at = float(state["cycle_at"])
        interval = float(state["interval"])
        last_send = float(state["last_send_success"])
        oldest = state["oldest_pending_ms"]
        pending = int(state["spool_requests"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"no readable health file at {path}: {e}"
    if now - cycle_at > 3 * interval + 5:
        return False, f"last cycle {now - cycle_at:.0f}s ago (interval {interval:g}s)"
    if pending and oldest is not None:
        waiting = now - max(last_send, float(oldest) / 1000)
        if waiting > HEALTH_MAX_SEND_AGE:
            return False, f"{pending} request(s) unsent; no successful send for {waiting:.0f}s"
    libvirt = "up" if state.get("libvirt_up") else "DOWN"
    return True, f"last cycle {now - cycle_at:.1f}s ago, libvirt {libvirt}, {pending} pending"
