"""vCPU placement (`pusher.placement`): virDomainGetVcpus' answer as stats keys, and the series
the catalog makes of them."""

from __future__ import annotations

import pytest

from pusher.catalog import domain_samples
from pusher.config import ConfigError, from_mapping
from pusher.placement import placement_keys

# As libvirt-python returns it on a 4-CPU host: vCPU 0 pinned to CPU 2, vCPU 1 to CPUs 0-1,
# vCPU 2 free to run anywhere, vCPU 3 offline (no host CPU).
VCPUS = [(0, 1, 10_000, 2), (1, 1, 20_000, 0), (2, 1, 30_000, 3), (3, 0, 0, -1)]
MAPS = [
    (False, False, True, False),
    (True, True, False, False),
    (True, True, True, True),
    (True, True, True, True),
]


def test_the_answer_becomes_placement_keys() -> None:
    assert placement_keys(VCPUS, MAPS) == {
        "placement.0.cpu": 2,
        "placement.0.affinity_cpus": 1,
        "placement.0.pinned_cpu": 2,
        "placement.1.cpu": 0,
        "placement.1.affinity_cpus": 2,
        "placement.2.cpu": 3,
        "placement.2.affinity_cpus": 4,
        "placement.3.affinity_cpus": 4,
    }


def test_the_keys_become_series_per_vcpu() -> None:
    record = {"state.state": 1, **placement_keys(VCPUS, MAPS)}
    got = {(name, own): value for (name, own, _), value in domain_samples(record, ())}
    assert got[("libvirt_domain_vcpu_cpu", (("vcpu", "0"),))] == 2.0
    assert got[("libvirt_domain_vcpu_pinned_cpu", (("vcpu", "0"),))] == 2.0
    assert got[("libvirt_domain_vcpu_affinity_cpus", (("vcpu", "1"),))] == 2.0
    assert ("libvirt_domain_vcpu_pinned_cpu", (("vcpu", "1"),)) not in got
    assert ("libvirt_domain_vcpu_cpu", (("vcpu", "3"),)) not in got
    assert len(got) == 1 + 8  # the state, and one series per key


def test_vcpu_placement_is_off_by_default_and_the_key_is_checked() -> None:
    assert from_mapping(None, hostname="h").collect.vcpu_placement is False
    on = from_mapping({"collect": {"vcpu_placement": True}}, hostname="h")
    assert on.collect.vcpu_placement is True
    with pytest.raises(ConfigError) as e:
        from_mapping({"collect": {"vcpu_placement": 2}}, hostname="h")
    assert e.value.key == "collect.vcpu_placement"
