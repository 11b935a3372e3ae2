"""`--health`: what the agent writes and what the check makes of it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pusher.health import (
    HEALTH_FILE,
    HEALTH_LIBVIRT_CYCLES,
    HEALTH_MAX_SEND_AGE,
    LibvirtStreak,
    check_health,
    write_health,
)

NOW = 1_800_000_000.0
ERROR = "cannot connect to qemu:///system?socket=/x: Failed to find user record for uid '10001'"


def state(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "cycle_at": NOW - 1,
        "interval": 15.0,
        "libvirt_up": 1,
        "last_send_success": NOW - 1,
        "spool_requests": 0,
        "oldest_pending_ms": None,
        **LibvirtStreak().state(),
    }
    return {**base, **changes}


def check(tmp_path: Path, **changes: object) -> tuple[bool, str]:
    write_health(str(tmp_path), state(**changes))
    return check_health(str(tmp_path), NOW)


def streak_after(results: list[bool]) -> LibvirtStreak:
    streak = LibvirtStreak()
    for i, up in enumerate(results):
        streak.record(up, NOW - 100 + i * 15, "" if up else ERROR)
    return streak


def test_healthy_when_cycling_reading_and_sending(tmp_path: Path) -> None:
    healthy, why = check(tmp_path)
    assert healthy, why
    assert "libvirt up" in why


def test_unhealthy_without_a_health_file(tmp_path: Path) -> None:
    healthy, why = check_health(str(tmp_path), NOW)
    assert not healthy
    assert HEALTH_FILE in why


def test_unhealthy_when_no_cycle_ran_for_three_intervals(tmp_path: Path) -> None:
    healthy, why = check(tmp_path, cycle_at=NOW - 3 * 15 - 6)
    assert not healthy
    assert "last cycle 51s ago" in why


@pytest.mark.parametrize("failed", range(1, HEALTH_LIBVIRT_CYCLES))
def test_a_few_failed_libvirt_reads_stay_healthy(tmp_path: Path, failed: int) -> None:
    # A libvirtd restart costs a cycle or two; that is no reason to alarm.
    streak = streak_after([True] + [False] * failed)
    healthy, why = check(tmp_path, libvirt_up=0, **streak.state())
    assert healthy, why
    assert f"DOWN for {failed} cycle(s)" in why


def test_unhealthy_when_libvirt_is_unreadable_for_several_cycles(tmp_path: Path) -> None:
    streak = streak_after([True] + [False] * HEALTH_LIBVIRT_CYCLES)
    healthy, why = check(tmp_path, libvirt_up=0, **streak.state())
    assert not healthy
    assert f"libvirt unreadable for {HEALTH_LIBVIRT_CYCLES} cycles" in why
    assert "Failed to find user record for uid '10001'" in why  # the reason, from libvirt
    assert "(85s)" in why  # since the first failed cycle, NOW - 100 + 15


def test_one_good_read_ends_the_streak(tmp_path: Path) -> None:
    streak = streak_after([False] * 5 + [True])
    assert streak.state() == {"libvirt_failures": 0, "libvirt_down_since": None,
                              "libvirt_error": ""}  # fmt: skip
    healthy, why = check(tmp_path, **streak.state())
    assert healthy, why


def test_the_streak_is_logged_when_it_turns_unhealthy_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pusher.health"):
        streak_after([False] * (HEALTH_LIBVIRT_CYCLES + 2) + [True])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "unhealthy" in messages[0] and "Failed to find user record" in messages[0]
    assert f"after {HEALTH_LIBVIRT_CYCLES + 2} failed cycles" in messages[1]


def test_a_long_libvirt_error_is_cut(tmp_path: Path) -> None:
    streak = LibvirtStreak()
    streak.record(False, NOW, "x" * 10_000)
    assert len(str(streak.state()["libvirt_error"])) == 300


def test_unhealthy_when_a_backlog_has_not_been_sent_for_ten_minutes(tmp_path: Path) -> None:
    old = NOW - HEALTH_MAX_SEND_AGE - 30
    healthy, why = check(tmp_path, spool_requests=4, oldest_pending_ms=old * 1000,
                         last_send_success=old)  # fmt: skip
    assert not healthy
    assert "4 request(s) unsent" in why


def test_a_backlog_being_sent_is_healthy(tmp_path: Path) -> None:
    healthy, why = check(tmp_path, spool_requests=4, oldest_pending_ms=(NOW - 3600) * 1000,
                         last_send_success=NOW - 5)  # fmt: skip
    assert healthy, why


def test_a_health_file_of_an_older_agent_is_read(tmp_path: Path) -> None:
    old = {k: v for k, v in state().items() if not k.startswith("libvirt_")}
    (tmp_path / HEALTH_FILE).write_text(json.dumps({**old, "libvirt_up": 1}))
    healthy, why = check_health(str(tmp_path), NOW)
    assert healthy, why
