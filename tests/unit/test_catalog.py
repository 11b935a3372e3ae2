"""pusher.catalog: the metric table, libvirt stats -> samples, labels, and docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pusher import catalog
from pusher.catalog import (
    CATALOG,
    MAX_LABEL_VALUE_BYTES,
    domain_samples,
    label_pairs,
    series_labels,
    truncate_label_value,
)

REPO = Path(__file__).resolve().parents[2]

# Prometheus's metric and label name grammar.
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

UUID = "5d3c8a2e-1f4b-4c2a-9d1e-7a6b5c4d3e2f"
DISK = f"/var/lib/nova/instances/{UUID}/disk"
CONFIG_DRIVE = f"/var/lib/nova/instances/{UUID}/disk.config"

# One record of conn.getAllDomainStats(state|cpu_total|balloon|vcpu|interface|block, NOWAIT)
# for a running QEMU guest with 2 vCPUs, 1 NIC, 2 disks and balloon stats, as libvirt-python
# returns it: ints for (u)llong parameters, bool for boolean ones, str for strings.
STATS: dict[str, object] = {
    "state.state": 1,
    "state.reason": 1,
    "cpu.time": 48_237_316_000,
    "cpu.user": 30_170_000_000,
    "cpu.system": 14_560_000_000,
    "cpu.haltpoll.success.time": 1_234_567_000,
    "cpu.haltpoll.fail.time": 89_012_000,
    "balloon.current": 2_097_152,
    "balloon.maximum": 4_194_304,
    "balloon.swap_in": 1_024,
    "balloon.swap_out": 2_048,
    "balloon.major_fault": 412,
    "balloon.minor_fault": 1_532_877,
    "balloon.unused": 1_523_712,
    "balloon.available": 2_034_284,
    "balloon.usable": 1_700_084,
    "balloon.last-update": 1_763_892_000,
    "balloon.disk_caches": 221_936,
    "balloon.hugetlb_pgalloc": 3,
    "balloon.hugetlb_pgfail": 1,
    "balloon.rss": 612_144,
    "vcpu.current": 2,
    "vcpu.maximum": 4,
    "vcpu.0.state": 1,
    "vcpu.0.time": 21_870_000_000,
    "vcpu.0.wait": 5_000_000,
    "vcpu.0.halted": True,
    "vcpu.0.delay": 118_362,
    "vcpu.1.state": 1,
    "vcpu.1.time": 19_620_000_000,
    "vcpu.1.wait": 0,
    "vcpu.1.halted": False,
    "vcpu.1.delay": 97_231,
    "net.count": 1,
    "net.0.name": "tap5d3c8a2e-1f",
    "net.0.rx.bytes": 9_876_543,
    "net.0.rx.pkts": 65_432,
    "net.0.rx.errs": 0,
    "net.0.rx.drop": 7,
    "net.0.tx.bytes": 1_234_567,
    "net.0.tx.pkts": 12_345,
    "net.0.tx.errs": 2,
    "net.0.tx.drop": 0,
    "block.count": 2,
    "block.0.name": "vda",
    "block.0.path": DISK,
    "block.0.backingIndex": 2,
    "block.0.rd.reqs": 10_234,
    "block.0.rd.bytes": 312_918_016,
    "block.0.rd.times": 4_567_891_234,
    "block.0.wr.reqs": 5_678,
    "block.0.wr.bytes": 98_304_000,
    "block.0.wr.times": 12_345_678_901,
    "block.0.fl.reqs": 321,
    "block.0.fl.times": 987_654_321,
    "block.0.allocation": 1_610_612_736,
    "block.0.capacity": 21_474_836_480,
    "block.0.physical": 1_611_071_488,
    "block.1.name": "sda",
    "block.1.path": CONFIG_DRIVE,
    "block.1.rd.reqs": 120,
    "block.1.rd.bytes": 491_520,
    "block.1.rd.times": 23_456_789,
    "block.1.wr.reqs": 0,
    "block.1.wr.bytes": 0,
    "block.1.wr.times": 0,
    "block.1.fl.reqs": 0,
    "block.1.fl.times": 0,
    "block.1.allocation": 491_520,
    "block.1.capacity": 491_520,
    "block.1.physical": 491_520,
}
# Keys that are labels or bookkeeping, not values.
NOT_VALUES = {"net.0.name", "block.0.name", "block.0.path", "block.1.name", "block.1.path",
              "block.0.backingIndex"}  # fmt: skip

# The libvirt stats units (REFERENCE.md §4), written out independently of the catalog.
NS_KEYS = {"cpu.time", "cpu.user", "cpu.system", "cpu.haltpoll.success.time",
           "cpu.haltpoll.fail.time", "vcpu.<n>.time", "vcpu.<n>.wait", "vcpu.<n>.delay",
           "block.<n>.rd.times", "block.<n>.wr.times", "block.<n>.fl.times",
           "perf.cpu_clock", "perf.task_clock", "iothread.<n>.poll-max-ns"}  # fmt: skip
# dirtyrate is reported in MiB/s.
# libvirt's job info gives times in milliseconds and the auto-converge throttle in percent.
MS_KEYS = {"job.time_elapsed", "job.time_remaining", "job.downtime", "job.setup_time"}
PERCENT_KEYS = {"job.auto_converge_throttle"}
MIB_KEYS = {"dirtyrate.megabytes_per_second", "dirtyrate.vcpu.<n>.megabytes_per_second"}
KIB_KEYS = {"balloon.current", "balloon.maximum", "balloon.swap_in", "balloon.swap_out",
            "balloon.unused", "balloon.available", "balloon.usable", "balloon.rss",
            "balloon.disk_caches", "balloon.used"}  # fmt: skip

SHARED = (("domain", "instance-0000002a"), ("host", "kvm-1"), ("uuid", UUID))


def pattern(key: str) -> str:
    """'vcpu.1.time' -> 'vcpu.<n>.time' (the catalog's source notation)."""
    return re.sub(r"^(vcpu|net|block)\.\d+\.", r"\1.<n>.", key)


def samples_by_name(samples: list[catalog.Sample]) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for (name, own, shared), value in samples:
        assert shared is SHARED
        assert own not in out.get(name, {}), f"duplicate series {name}{own}"
        out.setdefault(name, {})[own] = value
    return out


# --- the table ---------------------------------------------------------------------------


def test_metric_names_are_valid_and_unique() -> None:
    names = [m.name for m in CATALOG]
    assert len(names) == len(set(names))
    for name in names:
        assert METRIC_NAME.match(name), name
        assert name == name.lower(), name
        assert not name.startswith("__"), name


def test_counters_and_only_counters_end_in_total() -> None:
    for m in CATALOG:
        assert m.type in ("counter", "gauge"), m.name
        assert (m.type == "counter") == m.name.endswith("_total"), m.name


def test_a_name_that_ends_in_a_unit_has_that_unit() -> None:
    # The metadata's unit is what the name promises: `_hertz` and `_bytes_per_second` too.
    suffixes = ("_bytes_per_second", "_seconds", "_bytes", "_hertz")
    for m in CATALOG:
        base = m.name.removesuffix("_total")
        unit = next((s[1:] for s in suffixes if base.endswith(s)), "")
        assert m.unit == unit, m.name
    assert catalog.by_name("libvirt_node_cpu_frequency_hertz").unit == "hertz"
    assert catalog.by_name("libvirt_domain_job_memory_bytes_per_second").unit == "bytes_per_second"


def test_source_units_are_converted_to_base_units() -> None:
    for m in CATALOG:
        if m.source in NS_KEYS:
            assert (m.unit, m.scale) == ("seconds", 1e-9), m.name
        elif m.source in KIB_KEYS:
            assert (m.unit, m.scale) == ("bytes", 1024.0), m.name
        elif m.source in MS_KEYS:
            assert (m.unit, m.scale) == ("seconds", 1e-3), m.name
        elif m.source in PERCENT_KEYS:
            assert m.scale == 0.01 and m.name.endswith("_ratio"), m.name
        elif m.source in MIB_KEYS:
            assert m.scale == 2**20 and m.name.endswith("_bytes_per_second"), m.name
        else:
            assert m.scale == 1.0, m.name


def test_label_names_are_valid_and_help_is_one_sentence() -> None:
    for m in CATALOG:
        for label in m.labels:
            assert LABEL_NAME.match(label) and not label.startswith("__"), (m.name, label)
        assert len(set(m.labels)) == len(m.labels), m.name
        assert m.help.endswith(".") and "\n" not in m.help, m.name
        assert m.help[0].isupper(), m.name


def test_device_metrics_carry_their_device_labels() -> None:
    for m in CATALOG:
        if m.source.startswith("vcpu.<n>."):
            assert m.labels == ("vcpu",), m.name
        elif m.source.startswith("net.<n>."):
            assert m.labels == ("target_device", "port_id"), m.name
        elif m.source.startswith("block.<n>."):
            assert m.labels == ("target_device", "source_file", "volume_id"), m.name


def test_every_source_key_is_one_metric_except_the_documented_alias() -> None:
    sources: dict[str, list[str]] = {}
    for m in CATALOG:
        if m.source:
            sources.setdefault(m.source, []).append(m.name)
    shared = {s: names for s, names in sources.items() if len(names) > 1}
    # balloon.current feeds both lineage names: info_memory_usage_bytes and actual_balloon_bytes.
    assert shared == {
        "balloon.current": [
            "libvirt_domain_info_memory_usage_bytes",
            "libvirt_domain_memory_stats_actual_balloon_bytes",
        ]
    }


LINEAGE = [
    "libvirt_up",
    "libvirt_domain_info_maximum_memory_bytes",
    "libvirt_domain_info_memory_usage_bytes",
    "libvirt_domain_info_virtual_cpus",
    "libvirt_domain_info_cpu_time_seconds_total",
    *(f"libvirt_domain_vcpu_{x}_seconds_total" for x in ("time", "wait", "delay")),
    *(f"libvirt_domain_memory_stats_{x}_bytes"
      for x in ("actual_balloon", "available", "unused", "usable", "rss", "disk_cache")),
    "libvirt_domain_memory_stats_major_fault_total",
    "libvirt_domain_memory_stats_minor_fault_total",
    *(f"libvirt_domain_block_stats_{op}_{x}_total"
      for op in ("read", "write") for x in ("bytes", "requests")),
    *(f"libvirt_domain_block_stats_{op}_time_seconds_total" for op in ("read", "write", "flush")),
    "libvirt_domain_block_stats_flush_requests_total",
    *(f"libvirt_domain_block_stats_{x}_bytes" for x in ("allocation", "capacity", "physicalsize")),
    *(f"libvirt_domain_interface_stats_{d}_{x}_total"
      for d in ("receive", "transmit") for x in ("bytes", "packets", "errors", "drops")),
]  # fmt: skip


@pytest.mark.parametrize("name", LINEAGE)
def test_libvirt_exporter_lineage_names_exist_for_existing_dashboards(name: str) -> None:
    assert catalog.by_name(name).name == name


def test_openstack_info_carries_every_nova_label() -> None:
    from pusher.config import NOVA_LABELS

    assert set(catalog.by_name("libvirt_domain_openstack_info").labels) == set(NOVA_LABELS)


# --- domain_samples on a full record -----------------------------------------------------


def test_full_record_maps_every_numeric_key_and_reports_none_unknown() -> None:
    unknown: set[str] = set()
    samples = domain_samples(STATS, SHARED, unknown)
    assert unknown == set()
    sources = {m.source for m in CATALOG}
    expected = 0
    for key, value in STATS.items():
        if key in NOT_VALUES:
            continue
        assert isinstance(value, int), key  # bool is an int too
        assert pattern(key) in sources, f"{key} has no metric"
        expected += sum(1 for m in CATALOG if m.source == pattern(key))
    assert len(samples) == expected


def test_full_record_values_are_in_base_units() -> None:
    samples = domain_samples(STATS, SHARED)
    by_source: dict[str, list[float]] = {}
    for (name, own, _), value in samples:
        m = catalog.by_name(name)
        index = dict(own).get("vcpu") or {"vda": "0", "sda": "1", "tap5d3c8a2e-1f": "0"}.get(
            dict(own).get("target_device", ""), ""
        )
        key = m.source.replace("<n>", index)
        by_source.setdefault(key, []).append(value)
    for key, raw in STATS.items():
        if key in NOT_VALUES:
            continue
        if pattern(key) in NS_KEYS:
            want = int(raw) / 1e9  # type: ignore[call-overload]
        elif key in KIB_KEYS:
            want = int(raw) * 1024  # type: ignore[call-overload]
        else:
            want = float(raw)  # type: ignore[arg-type]
        for got in by_source[key]:
            assert got == pytest.approx(want, rel=1e-15, abs=0), key


def test_full_record_spot_values() -> None:
    s = samples_by_name(domain_samples(STATS, SHARED))
    vda = (("source_file", DISK), ("target_device", "vda"))
    sda = (("source_file", CONFIG_DRIVE), ("target_device", "sda"))
    tap = (("target_device", "tap5d3c8a2e-1f"),)
    assert s["libvirt_domain_info_cpu_time_seconds_total"][()] == pytest.approx(48.237316)
    assert s["libvirt_domain_info_memory_usage_bytes"][()] == 2_147_483_648.0
    assert s["libvirt_domain_memory_stats_actual_balloon_bytes"][()] == 2_147_483_648.0
    assert s["libvirt_domain_info_maximum_memory_bytes"][()] == 4_294_967_296.0
    assert s["libvirt_domain_memory_stats_swap_out_bytes_total"][()] == 2_097_152.0
    assert s["libvirt_domain_memory_stats_major_fault_total"][()] == 412.0
    assert s["libvirt_domain_memory_stats_last_update_timestamp_seconds"][()] == 1_763_892_000.0
    assert s["libvirt_domain_vcpu_time_seconds_total"] == {
        (("vcpu", "0"),): pytest.approx(21.87),
        (("vcpu", "1"),): pytest.approx(19.62),
    }
    assert s["libvirt_domain_vcpu_wait_seconds_total"][(("vcpu", "0"),)] == pytest.approx(0.005)
    assert s["libvirt_domain_vcpu_halted"] == {(("vcpu", "0"),): 1.0, (("vcpu", "1"),): 0.0}
    assert s["libvirt_domain_interface_stats_receive_bytes_total"] == {tap: 9_876_543.0}
    assert s["libvirt_domain_interface_stats_transmit_errors_total"] == {tap: 2.0}
    assert s["libvirt_domain_block_stats_read_bytes_total"] == {vda: 312_918_016.0, sda: 491_520.0}
    assert s["libvirt_domain_block_stats_write_time_seconds_total"][vda] == pytest.approx(
        12.345678901
    )
    assert s["libvirt_domain_block_stats_capacity_bytes"][vda] == 21_474_836_480.0
    assert s["libvirt_domain_block_stats_physicalsize_bytes"][sda] == 491_520.0
    assert s["libvirt_domain_state_code"][()] == 1.0


def test_bool_values_become_one_and_zero() -> None:
    samples = domain_samples({"vcpu.0.halted": True, "vcpu.1.halted": False}, ())
    values = {own: v for (_, own, _), v in samples}
    assert values == {(("vcpu", "0"),): 1.0, (("vcpu", "1"),): 0.0}
    assert all(type(v) is float for v in values.values())


def test_device_labels_are_sorted_pairs() -> None:
    for (name, own, _), _v in domain_samples(STATS, SHARED):
        assert list(own) == sorted(own), name
        assert len({k for k, _ in own}) == len(own), name


def test_interface_without_a_name_is_labelled_by_its_index() -> None:
    samples = domain_samples({"net.3.rx.bytes": 10}, ())
    assert [own for (_, own, _), _ in samples] == [(("target_device", "net3"),)]


def test_block_device_without_a_path_has_no_source_file_label() -> None:
    stats = {"block.0.name": "vdb", "block.0.rd.reqs": 5}  # a network disk (rbd): no path
    samples = domain_samples(stats, ())
    assert [own for (_, own, _), _ in samples] == [(("target_device", "vdb"),)]


def test_a_stopped_guest_gives_only_what_libvirt_reported() -> None:
    samples = domain_samples({"state.state": 5, "state.reason": 2}, SHARED)
    assert sorted((k[0], v) for k, v in samples) == [
        ("libvirt_domain_state_code", 5.0),
        ("libvirt_domain_state_reason_code", 2.0),
    ]


def test_unknown_numeric_keys_are_reported_and_skipped() -> None:
    stats = dict(STATS)
    added = {
        "perf.cycles": 123,  # the real key is perf.cpu_cycles
        "iothread.1.poll-brand-new": 1,
        "dirtyrate.calc_brand_new": 2,
        "memory.bandwidth.monitor.0.node.0.bytes.new": 3,
        "block.0.newfangled": 5,
        "vcpu.x.time": 9,
        "balloon.brand_new": 4,
    }
    stats.update(added)
    stats["vm.some.string"] = "text"  # strings are never values
    unknown: set[str] = set()
    samples = domain_samples(stats, SHARED, unknown)
    assert unknown == set(added)
    assert len(samples) == len(domain_samples(STATS, SHARED))


def test_unknown_keys_are_skipped_without_a_set() -> None:
    assert domain_samples({"perf.cycles": 1}, ()) == []


# --- label values and series labels ------------------------------------------------------


def test_long_label_value_is_cut_to_2048_bytes() -> None:
    assert MAX_LABEL_VALUE_BYTES == 2048
    assert truncate_label_value("a" * 3000) == "a" * 2048
    assert truncate_label_value("a" * 2048) == "a" * 2048


@pytest.mark.parametrize(
    "value",
    ["€" * 700, "a" + "€" * 700, "aa" + "€" * 700, "实" * 1000, "\U0001f600" * 600,
     "a" * 2047 + "é", "a" * 2046 + "é" + "x"],
)  # fmt: skip
def test_truncation_cuts_on_a_utf8_character_boundary(value: str) -> None:
    cut = truncate_label_value(value)
    raw = cut.encode("utf-8")
    assert len(raw) <= 2048
    assert len(raw) > 2048 - 4  # at most one partial character dropped
    assert value.startswith(cut)


def test_short_values_are_untouched() -> None:
    assert truncate_label_value("Ünïcødé-实例") == "Ünïcødé-实例"


def test_block_path_label_is_truncated() -> None:
    path = "/var/lib/nova/instances/" + "ü" * 2000
    samples = domain_samples(
        {"block.0.name": "vda", "block.0.path": path, "block.0.rd.reqs": 1}, ()
    )
    own = dict(samples[0][0][1])
    assert len(own["source_file"].encode()) <= 2048
    assert path.startswith(own["source_file"])


def test_label_pairs_sorts_drops_empty_values_and_cuts() -> None:
    pairs = label_pairs({"zone": "b", "az": "", "app": "x" * 3000, "Zeta": "y"})
    assert pairs == (("Zeta", "y"), ("app", "x" * 2048), ("zone", "b"))


def test_series_labels_are_sorted_bytewise_with_name() -> None:
    key = (
        "libvirt_domain_vcpu_time_seconds_total",
        (("vcpu", "1"),),
        (("uuid", UUID), ("host", "kvm-1"), ("Zone", "eu"), ("domain", "instance-1")),
    )
    assert series_labels(key) == [
        ("Zone", "eu"),  # uppercase sorts before "__name__" in byte order, as Mimir checks
        ("__name__", "libvirt_domain_vcpu_time_seconds_total"),
        ("domain", "instance-1"),
        ("host", "kvm-1"),
        ("uuid", UUID),
        ("vcpu", "1"),
    ]


def test_series_own_labels_win_over_shared_ones() -> None:
    key = ("pusher_requests_total", (("code", "204"), ("host", "own")), (("host", "shared"),))
    labels = series_labels(key)
    assert labels == [("__name__", "pusher_requests_total"), ("code", "204"), ("host", "own")]


def test_series_name_cannot_be_overridden_by_labels() -> None:
    key = ("real_name", (("__name__", "fake"),), (("__name__", "fake2"),))
    assert series_labels(key) == [("__name__", "real_name")]


# --- the generated docs ------------------------------------------------------------------


def test_docs_metrics_md_is_generated_from_the_catalog() -> None:
    committed = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert committed == catalog.markdown(), (
        "docs/metrics.md is stale; regenerate it with: python -m pusher.catalog > docs/metrics.md"
    )


def test_markdown_lists_every_metric_once() -> None:
    text = catalog.markdown()
    for m in CATALOG:
        assert text.count(f"| `{m.name}` |") == 1, m.name


# --- the optional groups: perf, iothread, memory (bandwidth), dirtyrate ---------------------

PERF_EVENTS = ("cmt", "mbmt", "mbml", "cpu_cycles", "instructions", "cache_references",
               "cache_misses", "branch_instructions", "branch_misses", "bus_cycles",
               "stalled_cycles_frontend", "stalled_cycles_backend", "ref_cpu_cycles",
               "cpu_clock", "task_clock", "page_faults", "context_switches", "cpu_migrations",
               "page_faults_min", "page_faults_maj", "alignment_faults",
               "emulation_faults")  # fmt: skip
MBM = "memory.bandwidth.monitor"
# Keys as libvirt documents them for virConnectGetAllDomainStats (and libvirt 11.2 names
# them in VIR_DOMAIN_STATS_* macros); IOThread ids start at 1.
OPTIONAL: dict[str, object] = {
    **{f"perf.{e}": 1000 + i for i, e in enumerate(PERF_EVENTS)},
    "iothread.count": 2,
    "iothread.1.poll-max-ns": 32_768,
    "iothread.1.poll-grow": 2,
    "iothread.1.poll-shrink": 0,
    "iothread.3.poll-max-ns": 0,
    "iothread.3.poll-grow": 0,
    "iothread.3.poll-shrink": 0,
    f"{MBM}.count": 1,
    f"{MBM}.0.name": "vcpus_0-1",
    f"{MBM}.0.vcpus": "0-1",
    f"{MBM}.0.node.count": 2,
    f"{MBM}.0.node.0.id": 0,
    f"{MBM}.0.node.0.bytes.local": 4096,
    f"{MBM}.0.node.0.bytes.total": 8192,
    f"{MBM}.0.node.1.id": 1,
    f"{MBM}.0.node.1.bytes.local": 0,
    f"{MBM}.0.node.1.bytes.total": 1024,
    "dirtyrate.calc_status": 2,
    "dirtyrate.calc_start_time": 348_414,
    "dirtyrate.calc_period": 1,
    "dirtyrate.megabytes_per_second": 4,
    "dirtyrate.calc_mode": "dirty-ring",
    "dirtyrate.vcpu.0.megabytes_per_second": 1,
    "dirtyrate.vcpu.1.megabytes_per_second": 2,
    # cpu_total's cache monitors (hosts with resctrl; elsewhere only the count, 0)
    "cpu.cache.monitor.count": 1,
    "cpu.cache.monitor.0.name": "vcpus_0-1",
    "cpu.cache.monitor.0.vcpus": "0-1",
    "cpu.cache.monitor.0.bank.count": 1,
    "cpu.cache.monitor.0.bank.0.id": 3,
    "cpu.cache.monitor.0.bank.0.bytes": 5_767_168,
}
OPTIONAL_LABEL_KEYS = {f"{MBM}.0.node.0.id", f"{MBM}.0.node.1.id", "cpu.cache.monitor.0.bank.0.id"}


def test_every_key_of_the_optional_groups_has_a_metric() -> None:
    unknown: set[str] = set()
    samples = domain_samples({**STATS, **OPTIONAL}, SHARED, unknown)
    assert unknown == set()
    values = [k for k, v in OPTIONAL.items() if not isinstance(v, str)]
    assert len(samples) == len(domain_samples(STATS, SHARED)) + len(values) - len(
        OPTIONAL_LABEL_KEYS
    )


def test_optional_group_series_labels_and_units() -> None:
    s = samples_by_name(domain_samples(OPTIONAL, SHARED))
    perf = "libvirt_domain_perf_"
    assert s[f"{perf}cpu_cycles_total"] == {(): 1003.0}
    assert s[f"{perf}cmt_bytes"] == {(): 1000.0}
    assert s[f"{perf}mbmt_bytes_per_second"] == {(): 1001.0}
    assert s[f"{perf}task_clock_seconds_total"][()] == pytest.approx(1014e-9)
    assert len([n for n in s if n.startswith(perf)]) == len(PERF_EVENTS)
    assert s["libvirt_domain_iothreads"] == {(): 2.0}
    assert s["libvirt_domain_iothread_poll_max_seconds"] == {
        (("iothread", "1"),): pytest.approx(32.768e-6),
        (("iothread", "3"),): 0.0,
    }
    assert s["libvirt_domain_iothread_poll_grow"][(("iothread", "1"),)] == 2.0
    assert s["libvirt_domain_memory_bandwidth_monitors"] == {(): 1.0}
    monitor = ("monitor", "vcpus_0-1")
    assert s["libvirt_domain_memory_bandwidth_monitor_nodes"] == {(monitor,): 2.0}
    assert s["libvirt_domain_memory_bandwidth_bytes_total"] == {
        (("memory_node", "0"), monitor): 8192.0,
        (("memory_node", "1"), monitor): 1024.0,
    }
    assert (
        s["libvirt_domain_memory_bandwidth_local_bytes_total"][(("memory_node", "0"), monitor)]
        == 4096.0
    )
    assert s["libvirt_domain_cpu_cache_monitors"] == {(): 1.0}
    assert s["libvirt_domain_cpu_cache_monitor_banks"] == {(monitor,): 1.0}
    assert s["libvirt_domain_cpu_cache_occupancy_bytes"] == {
        (("cache_bank", "3"), monitor): 5_767_168.0
    }
    assert s["libvirt_domain_dirtyrate_calc_status"] == {(): 2.0}
    assert s["libvirt_domain_dirtyrate_calc_period_seconds"] == {(): 1.0}
    assert s["libvirt_domain_dirtyrate_bytes_per_second"] == {(): 4 * 2**20}
    assert s["libvirt_domain_dirtyrate_vcpu_bytes_per_second"] == {
        (("vcpu", "0"),): 2**20,
        (("vcpu", "1"),): 2 * 2**20,
    }


def test_a_memory_controller_id_labels_its_series_when_it_differs_from_the_index() -> None:
    stats = {f"{MBM}.2.node.0.id": 7, f"{MBM}.2.node.0.bytes.total": 5}  # no monitor name
    samples = domain_samples(stats, ())
    assert [own for (_, own, _), _ in samples] == [(("memory_node", "7"), ("monitor", "2"))]


def test_optional_metrics_come_from_their_groups() -> None:
    groups = {m.source.partition(".")[0] for m in CATALOG if m.source}
    assert {"perf", "iothread", "memory", "dirtyrate"} <= groups
    assert catalog.group_of("libvirt_domain_dirtyrate_vcpu_bytes_per_second") == "dirtyrate"
    assert catalog.group_of("libvirt_domain_memory_bandwidth_bytes_total") == "memory"


def test_device_labels_of_the_optional_groups() -> None:
    for m in CATALOG:
        if m.source.startswith(("iothread.<n>.",)):
            assert m.labels == ("iothread",), m.name
        elif m.source.startswith("dirtyrate.vcpu.<n>."):
            assert m.labels == ("vcpu",), m.name
        elif m.source.startswith(f"{MBM}.<n>."):
            want = ("monitor", "memory_node") if "<i>" in m.source else ("monitor",)
            assert m.labels == want, m.name
        elif m.source.startswith("cpu.cache.monitor.<n>."):
            want = ("monitor", "cache_bank") if "<i>" in m.source else ("monitor",)
            assert m.labels == want, m.name


# --- dropped labels and the label limits ---------------------------------------------------


def test_dropped_device_labels_are_left_off() -> None:
    stats = {"block.0.name": "vdb", "block.0.path": "/dev/sdb", "block.0.rd.reqs": 5,
             "net.0.name": "tap1", "net.0.rx.bytes": 1}  # fmt: skip

    def extra(target: str) -> catalog.LabelPairs:
        return (("volume_id", "v1"),) if target == "vdb" else (("port_id", "p1"),)

    plan = catalog.plan_domain(stats, (), None, extra, frozenset({"source_file", "port_id"}))
    assert sorted(own for _, own, _ in plan.series) == [
        (("target_device", "tap1"),),
        (("target_device", "vdb"), ("volume_id", "v1")),
    ]
    assert catalog.devices(stats, extra, frozenset({"source_file"})) == {
        (("port_id", "p1"), ("target_device", "tap1")),
        (("target_device", "vdb"), ("volume_id", "v1")),
    }


def test_the_value_limit_is_configurable() -> None:
    limits = catalog.LabelLimits(max_value_bytes=100)
    assert truncate_label_value("a" * 101, limits) == "a" * 100
    assert truncate_label_value("é" * 60, limits).encode() == ("é" * 50).encode()
    assert truncate_label_value("a" * 100, limits) == "a" * 100
    assert limits.truncated == 2
    assert truncate_label_value("a" * 2048) == "a" * 2048  # Mimir's default: 2048 bytes


def test_max_label_names_counts_the_widest_series() -> None:
    ext = ("host", "cluster")
    # block_info: __name__, 2 external, domain, uuid, instance_name and its 11 own labels.
    assert catalog.max_label_names(ext, ("instance_name",)) == 17
    # ... unless the info series are fitted to what is left: openstack_info is the widest,
    # __name__, 2 external, domain, uuid and the 10 Nova labels.
    assert catalog.max_label_names(ext, ("instance_name",), (), catalog.XML_SERIES) == 15
    fitted = catalog.XML_SERIES
    assert (
        catalog.max_label_names(ext, ("instance_name",), ("image_uuid", "root_uuid"), fitted) == 13
    )
    # With every Nova label dropped: a block series with its three device labels.
    from pusher.config import NOVA_LABELS

    assert catalog.max_label_names(ext, (), NOVA_LABELS, fitted) == 8
    # ... and then the memory bandwidth series: monitor and memory_node.
    assert catalog.max_label_names(ext, (), (*NOVA_LABELS, *catalog.DEVICE_EXTRAS), fitted) == 7


def test_fit_own_labels_keeps_the_first_in_order() -> None:
    own = (("a", "1"), ("b", "2"), ("c", "3"))
    shared = (("x", "9"),)
    limits = catalog.LabelLimits(max_names=4)
    assert catalog.fit_own_labels(own, shared, ("a", "b", "c"), limits) == (
        ("a", "1"), ("b", "2"))  # fmt: skip
    assert limits.dropped == 1
    assert catalog.fit_own_labels(own, shared, ("a", "b", "c"), catalog.LabelLimits()) is own


def test_job_info_keys_become_job_series_in_base_units() -> None:
    # What jobStats gives during a live migration (collect.job_info adds it as job.<key>).
    job = {"type": 2, "operation": 5, "time_elapsed": 2500, "time_elapsed_net": 2480,
           "downtime": 300, "data_total": 2 * 2**30, "data_processed": 2**30,
           "memory_bps": 100 * 2**20, "memory_dirty_rate": 1200, "memory_iteration": 3,
           "memory_page_size": 4096, "memory_constant": 10, "auto_converge_throttle": 20,
           "success": True, "errmsg": "none"}  # fmt: skip
    stats = {"state.state": 1, **{f"job.{k}": v for k, v in job.items()}}
    unknown: set[str] = set()
    got = {key[0]: value for key, value in catalog.domain_samples(stats, (), unknown)}
    assert unknown == set()  # the keys not exported are known to be left out
    assert got["libvirt_domain_job_type"] == 2
    assert got["libvirt_domain_job_operation"] == 5
    assert got["libvirt_domain_job_time_elapsed_seconds"] == 2.5
    assert got["libvirt_domain_job_downtime_seconds"] == 0.3
    assert got["libvirt_domain_job_data_processed_bytes"] == 2**30
    assert "libvirt_domain_job_data_remaining_bytes" not in got  # libvirt gave no such key
    assert got["libvirt_domain_job_memory_bytes_per_second"] == 100 * 2**20
    assert got["libvirt_domain_job_memory_iterations"] == 3
    assert got["libvirt_domain_job_auto_converge_throttle_ratio"] == 0.2
    assert {m.source for m in CATALOG if m.name.startswith("libvirt_domain_job_")} >= {
        f"job.{k}" for k in ("type", "operation", "time_elapsed", "data_total", "memory_bps")
    }


# --- derived keys ---------------------------------------------------------------------------


def test_guest_memory_in_use_is_available_minus_unused_in_bytes() -> None:
    stats: dict[str, object] = dict(STATS)
    catalog.add_derived(stats)
    assert stats["balloon.used"] == 2_034_284 - 1_523_712
    s = samples_by_name(domain_samples(stats, SHARED))
    assert s["libvirt_domain_memory_stats_used_bytes"][()] == (2_034_284 - 1_523_712) * 1024.0
    assert s["libvirt_domain_memory_stats_usable_bytes"][()] == 1_700_084 * 1024.0


@pytest.mark.parametrize(
    "record",
    [
        {"balloon.current": 131072, "balloon.rss": 200660},  # no balloon driver in the guest
        {"balloon.available": 94928},  # one of the two
        {"balloon.available": 1000, "balloon.unused": 1001},  # more unused than available
        {"balloon.available": "94928", "balloon.unused": 68696},  # not a number
    ],
)
def test_no_memory_in_use_without_both_figures(record: dict[str, object]) -> None:
    stats = dict(record)
    catalog.add_derived(stats)
    assert "balloon.used" not in stats
    names = {name for (name, _, _), _ in domain_samples(stats, SHARED)}
    assert "libvirt_domain_memory_stats_used_bytes" not in names


def test_docs_name_the_keys_a_derived_series_comes_from() -> None:
    line = next(x for x in catalog.markdown().splitlines() if "memory_stats_used_bytes" in x)
    assert "`balloon.available` minus `balloon.unused`" in line
