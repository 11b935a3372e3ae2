"""KVM statistics (`pusher.kvm`): per-vCPU figures summed per guest, and the catalog's rule for
libvirt's kind suffixes."""

from __future__ import annotations

import pytest

from pusher.catalog import CATALOG, NS, by_name, domain_samples
from pusher.kvm import add_vcpu_totals

# Trimmed from a real KVM guest's `virsh domstats --vcpu --vm` (2 vCPUs, libvirt 9.0).
RECORD: dict[str, object] = {
    "state.state": 1,
    "vcpu.current": 2,
    "vcpu.0.state": 1,
    "vcpu.0.time": 4_150_000_000,
    "vcpu.0.exits.sum": 4756,
    "vcpu.0.halt_wait_ns.sum": 0,
    "vcpu.0.guest_mode.cur": False,
    "vcpu.0.blocking.cur": True,
    "vcpu.1.state": 1,
    "vcpu.1.time": 0,
    "vcpu.1.exits.sum": 1,
    "vcpu.1.halt_wait_ns.sum": 2_296_034_007,
    "vcpu.1.guest_mode.cur": False,
    "vcpu.1.blocking.cur": True,
    "vm.mmu_cache_miss.sum": 20,
    "vm.pages_4k.cur": 512,
    "vm.max_mmu_rmap_size.max": 3,
}


def test_per_vcpu_figures_are_summed_per_guest() -> None:
    stats = dict(RECORD)
    add_vcpu_totals(stats)
    added = {k: v for k, v in stats.items() if k not in RECORD}
    assert added == {
        "vm.vcpus.exits.sum": 4757,
        "vm.vcpus.halt_wait_ns.sum": 2_296_034_007,
        "vm.vcpus.guest_mode.cur": 0,
        "vm.vcpus.blocking.cur": 2,  # vCPUs blocked
    }


def test_a_peak_is_the_highest_of_the_vcpus() -> None:
    stats: dict[str, object] = {"vcpu.0.x.max": 3, "vcpu.1.x.max": 7, "vcpu.2.x.max": 5}
    add_vcpu_totals(stats)
    assert stats["vm.vcpus.x.max"] == 7


def test_a_tcg_guest_gets_nothing_added() -> None:
    stats: dict[str, object] = {"state.state": 1, "vcpu.0.state": 1, "vcpu.0.time": 5}
    add_vcpu_totals(stats)
    assert stats == {"state.state": 1, "vcpu.0.state": 1, "vcpu.0.time": 5}


def test_the_series_in_base_units_and_the_per_vcpu_keys_skipped_silently() -> None:
    stats = dict(RECORD)
    add_vcpu_totals(stats)
    unknown: set[str] = set()
    got = {name: v for (name, own, _), v in domain_samples(stats, (), unknown)}
    assert unknown == set()  # the per-vCPU keys are known, and left to the totals
    assert got["libvirt_domain_kvm_exits_total"] == 4757
    assert got["libvirt_domain_kvm_halt_wait_seconds_total"] == pytest.approx(2.296034007)
    assert got["libvirt_domain_kvm_blocking"] == 2
    assert got["libvirt_domain_kvm_mmu_cache_miss_total"] == 20
    assert got["libvirt_domain_kvm_pages_4k"] == 512
    assert got["libvirt_domain_kvm_max_mmu_rmap_size"] == 3
    # Without the totals (no vm group), the vCPUs' KVM figures make no series.
    plain = domain_samples(dict(RECORD), ())
    assert {k[0] for k, _ in plain if k[0].startswith("libvirt_domain_kvm_")} == {
        "libvirt_domain_kvm_mmu_cache_miss_total",
        "libvirt_domain_kvm_pages_4k",
        "libvirt_domain_kvm_max_mmu_rmap_size",
    }


@pytest.mark.parametrize("m", [m for m in CATALOG if m.name.startswith("libvirt_domain_kvm_")],
                         ids=lambda m: m.name)  # fmt: skip
def test_the_kind_suffix_decides_the_type_and_ns_the_unit(m: object) -> None:
    metric = by_name(m.name)  # type: ignore[attr-defined]
    kind = metric.source.rsplit(".", 1)[1]
    assert metric.type == ("counter" if kind == "sum" else "gauge")
    assert (metric.unit == "seconds") == metric.source.split(".")[-2].endswith("_ns")
    assert metric.scale == (NS if metric.unit == "seconds" else 1.0)
