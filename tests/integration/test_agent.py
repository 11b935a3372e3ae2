"""The agent end to end: real libvirtd guests with Nova metadata -> real remote-write receiver."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

from agent import AgentProcess, assert_promtool_accepts, run_once, wait_for, write_config
from guests import Guest, domstats
from receiver import Receiver

from pusher import catalog

# virsh without group flags also shows groups the agent does not ask for (dirtyrate, …).
GROUP_PREFIXES = {"state", "cpu", "balloon", "vcpu", "net", "block"}


def _pushed(receiver: Receiver, domain: str) -> list[dict[str, Any]]:
    return receiver.query(f'{{__name__=~"libvirt_domain_.+", domain="{domain}"}}')


def test_once_delivers_every_guest_with_nova_and_cluster_labels(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    result = run_once(write_config(tmp_path, fresh_receiver.write_url), "--once")
    assert result.returncode == 0, result.stderr

    for g in guests:
        series = _pushed(fresh_receiver, g["name"])
        names = {s["metric"]["__name__"] for s in series}
        for family in (
            "libvirt_domain_info_cpu_time_seconds_total",
            "libvirt_domain_vcpu_time_seconds_total",
            "libvirt_domain_memory_stats_actual_balloon_bytes",
            "libvirt_domain_block_stats_read_requests_total",
            "libvirt_domain_interface_stats_receive_bytes_total",
            "libvirt_domain_state_code",
        ):
            assert family in names, f"{g['name']} lacks {family}"
        for s in series:
            labels = s["metric"]
            assert labels["uuid"] == g["uuid"]
            assert labels["cluster"] == "test-cluster" and labels["region"] == "test-region"
            assert labels["host"]
            assert labels["instance_name"] == g["instance_name"]
            assert labels["project_name"] == g["project"]
            assert labels["project_uuid"] == g["project_uuid"]
            assert labels["flavor"] == g["flavor"]
            if labels["__name__"] != "libvirt_domain_openstack_info":
                assert "user_uuid" not in labels  # not in the default nova.series_labels

        (info,) = fresh_receiver.query(f'libvirt_domain_openstack_info{{uuid="{g["uuid"]}"}}')
        labels = info["metric"]
        assert info["value"][1] == "1"
        assert labels["user_name"] == g["user"] and labels["user_uuid"] == g["user_uuid"]
        assert labels["flavor_id"] == g["flavor_id"]
        assert labels["image_uuid"] == g["image_uuid"]
        assert labels["root_type"] == "image"

    # The devices: both disks and the NIC, by target device.
    g = guests[0]
    disks = fresh_receiver.query(
        f'libvirt_domain_block_stats_capacity_bytes{{domain="{g["name"]}"}}'
    )
    assert {d["metric"]["target_device"] for d in disks} == {"vda", "vdb"}
    assert {d["metric"]["source_file"] for d in disks} == set(g["disks"])
    # The Cinder volume behind vdb (its serial) and the Neutron port behind the tap.
    volumes = {d["metric"]["target_device"]: d["metric"].get("volume_id") for d in disks}
    assert volumes == {"vda": None, "vdb": g["volume_id"]}
    (nic,) = fresh_receiver.query(
        f'libvirt_domain_interface_stats_transmit_bytes_total{{domain="{g["name"]}"}}'
    )
    assert nic["metric"]["target_device"] == g["tap"]
    assert nic["metric"]["port_id"] == g["port_uuid"]
    (versions,) = fresh_receiver.query("libvirt_versions_info")
    assert versions["metric"]["hypervisor"] == "QEMU"
    assert float(fresh_receiver.query("libvirt_node_cpus")[0]["value"][1]) >= 1

    up = fresh_receiver.query('libvirt_up{cluster="test-cluster"}')
    assert [u["value"][1] for u in up] == ["1"]
    sent = fresh_receiver.query("pusher_samples_collected_total")
    assert len(sent) == 1


def _source_key(metric: catalog.Metric, labels: dict[str, str], stats: dict[str, str]) -> str:
    """The libvirt stats key a pushed series came from."""
    if "<n>" not in metric.source:
        return metric.source
    prefix = metric.source.split(".")[0]
    if prefix == "vcpu":
        return metric.source.replace("<n>", labels["vcpu"])
    for key, value in stats.items():
        m = re.fullmatch(rf"{prefix}\.(\d+)\.name", key)
        if m and value == labels["target_device"]:
            return metric.source.replace("<n>", m.group(1))
    raise AssertionError(f"no {prefix} device named {labels['target_device']}")


def test_values_agree_with_virsh_domstats_before_and_after(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path, libvirt_uri: str
) -> None:
    names = [g["name"] for g in guests]
    before = domstats(libvirt_uri, names)
    result = run_once(write_config(tmp_path, fresh_receiver.write_url), "--once")
    after = domstats(libvirt_uri, names)
    assert result.returncode == 0, result.stderr

    checked = 0
    for name in names:
        exported_keys = set()
        for s in _pushed(fresh_receiver, name):
            metric = catalog.by_name(s["metric"]["__name__"])
            if not metric.source:
                continue
            key = _source_key(metric, s["metric"], before[name])
            exported_keys.add(key)
            value = float(s["value"][1])
            lo, hi = sorted(float(x[name][key]) * metric.scale for x in (before, after))
            slack = 1e-9 * max(abs(hi), 1.0)
            # Counters lie between the two readings; gauges that did not move are equal.
            assert lo - slack <= value <= hi + slack, f"{name} {key}: {lo} <= {value} <= {hi}"
            checked += 1
        # Every numeric key virsh shows is exported (names and paths are labels).
        numeric = {
            k
            for k, v in before[name].items()
            if k.split(".")[0] in GROUP_PREFIXES
            and not k.startswith("cpu.cache.")  # the cpu cache monitor is a group of its own
            and not k.endswith(".backingIndex")  # bookkeeping, not a value
            and re.fullmatch(r"-?\d+(\.\d+)?", v)
        }
        assert numeric <= exported_keys, numeric - exported_keys
    assert checked > 100


def test_dry_run_from_real_guests_passes_promtool(guests: list[Guest], tmp_path: Path) -> None:
    result = run_once(write_config(tmp_path, "http://127.0.0.1:9/unused"), "--dry-run")
    assert result.returncode == 0, result.stderr
    for g in guests:
        assert f'instance_name="{g["instance_name"]}"' in result.stdout
    assert_promtool_accepts(result.stdout)


def test_running_agent_pushes_at_its_offset_past_each_interval_and_stops_on_sigterm(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    config = write_config(tmp_path, fresh_receiver.write_url, collect={"offset": "400ms"})
    agent = AgentProcess(config, tmp_path / "agent.log")
    selector = f'libvirt_domain_info_cpu_time_seconds_total{{domain="{guests[0]["name"]}"}}'
    try:
        wait_for(
            lambda: fresh_receiver.query(f"count_over_time({selector}[1m]) >= 4"),
            timeout=20,
            what="four cycles to arrive",
        )
    finally:
        status = agent.stop()
    assert status == 0, agent.log()
    assert "Traceback" not in agent.log()

    (series,) = fresh_receiver.query(f"{selector}[1m]")
    stamps = [float(ts) for ts, _ in series["values"]]
    values = [float(v) for _, v in series["values"]]
    # One cycle per second, taken just after 0.4 s past each whole second of the wall clock (a
    # loaded machine may delay one).
    assert all(0.4 < b - a < 1.6 for a, b in itertools.pairwise(stamps)), stamps
    on_time = [ts for ts in stamps if ((ts - 0.4) % 1.0) < 0.3]
    assert len(on_time) >= len(stamps) - 1, stamps
    assert values == sorted(values)  # a counter, delivered in order
    assert not any(math.isnan(v) for v in values)


def test_auto_protocol_against_a_1_0_receiver_falls_back_and_delivers(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    # Prometheus 2.42 knows only 1.0: it decodes a 2.0 body as an empty 1.0 request and
    # answers 204 without the 2.0 "-Written" headers, which the agent must take as "no".
    config = write_config(tmp_path, fresh_receiver.write_url, remote_write={"protocol": "auto"})
    result = run_once(config, "--once")
    assert result.returncode == 0, result.stderr
    assert "does not take Remote-Write 2.0" in result.stderr
    for g in guests:
        assert fresh_receiver.query(
            f'libvirt_domain_info_cpu_time_seconds_total{{uuid="{g["uuid"]}"}}'
        )
    assert (tmp_path / "spool" / "protocol").read_text().strip() == "1"
