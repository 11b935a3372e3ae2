"""When the agent's cycles start: `collect.offset` past each multiple of the interval, by
default a share of the interval drawn from the host label (pusher.agent's pure helpers)."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest

from pusher.agent import cycle_offset, next_tick
from pusher.config import ConfigError, from_mapping


def test_an_offset_that_is_set_is_used_as_it_is() -> None:
    assert cycle_offset(0.0, 15.0, "node-1") == 0.0
    assert cycle_offset(7.5, 15.0, "node-1") == 7.5


def test_the_host_offset_is_the_same_on_every_start_and_within_the_interval() -> None:
    first = cycle_offset(-1.0, 15.0, "compute-0042")
    assert first == cycle_offset(-1.0, 15.0, "compute-0042")
    assert 0.0 <= first < 15.0
    assert first != cycle_offset(-1.0, 15.0, "compute-0043")


def test_a_fleet_s_host_offsets_spread_evenly_over_the_interval() -> None:
    offsets = [cycle_offset(-1.0, 15.0, f"compute-{i:04d}") for i in range(2000)]
    per_second = collections.Counter(int(o) for o in offsets)
    assert sorted(per_second) == list(range(15))
    # 133 per second on average; a binomial spread stays well within these bounds.
    assert min(per_second.values()) > 90 and max(per_second.values()) < 180, per_second


@pytest.mark.parametrize(
    ("now", "expected"),
    [(100.0, 103.0), (102.999, 103.0), (103.0, 118.0), (117.5, 118.0), (2.0, 13.0)],
)
def test_the_next_tick_is_the_first_start_after_now(now: float, expected: float) -> None:
    assert next_tick(now, 15.0, 13.0) == pytest.approx(expected)


def test_without_an_offset_ticks_are_the_interval_s_multiples() -> None:
    assert next_tick(1_700_000_007.2, 15.0, 0.0) == 1_700_000_010.0


def test_the_default_offset_is_drawn_from_the_host() -> None:
    cfg = from_mapping({}, env={}, hostname="node-1")
    assert cfg.collect.offset == -1.0
    assert from_mapping({"collect": {"offset": "host"}}, env={}).collect.offset == -1.0
    assert from_mapping({"collect": {"offset": "2500ms"}}, env={}).collect.offset == 2.5


@pytest.mark.parametrize(
    ("collect", "message"),
    [
        ({"offset": "15s"}, "collect.offset: must be less than collect.interval"),
        ({"interval": "10s", "offset": "12s"}, "collect.offset: must be less than"),
        ({"offset": "-1s"}, "collect.offset"),
        ({"offset": "soon"}, "collect.offset"),
    ],
)
def test_a_bad_offset_is_refused_naming_the_key(collect: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping({"collect": collect}, env={})
    assert err.value.key == "collect.offset"
    assert str(err.value).startswith(message)


def test_check_config_says_when_in_the_interval_the_node_collects(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    host = "compute-0042"
    expected = cycle_offset(-1.0, 15.0, host)
    for offset, shown in (("host", f"{expected:.3f}"), ("2500ms", "2.500")):
        path.write_text(
            f"remote_write: {{url: 'http://127.0.0.1:9/push'}}\n"
            f"external_labels: {{host: {host}}}\ncollect: {{offset: {offset}}}\n"
        )
        result = subprocess.run([sys.executable, "-m", "pusher", "--check-config", "-c", str(path)],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"every 15s at +{shown}s -> http://127.0.0.1:9/push" in result.stdout
