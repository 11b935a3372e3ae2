"""The pure core: per-domain plans, their reuse, and stale markers (`pusher.series`), fed by
the deadline collector over a fake libvirt collector."""

from __future__ import annotations

import math

import pytest

from pusher.agent import own_samples
from pusher.catalog import LabelLimits
from pusher.collect import DeadlineCollector, DomainStats, Snapshot
from pusher.config import Config, from_mapping
from pusher.encode import is_stale
from pusher.nova import DomainInfo, NovaInstance
from pusher.series import Cycle, Planner, plan_snapshot

EXT = (("cluster", "c1"), ("host", "h1"))
LABELS = ("instance_name", "project_name")


def stats(disks: int = 1) -> dict[str, object]:
    s: dict[str, object] = {"state.state": 1, "cpu.time": 5_000_000_000, "vcpu.0.time": 10}
    for i in range(disks):
        s[f"block.{i}.name"] = f"vd{'abc'[i]}"
        s[f"block.{i}.rd.bytes"] = 1000 * (i + 1)
    return s


def domain(uuid: str, st: dict[str, object], info: DomainInfo, name: str = "") -> DomainStats:
    return DomainStats(name or f"instance-{uuid}", uuid, st, info)


class FakeCollector:
    """Hands the agent prepared snapshots, one per cycle."""

    def __init__(self, snapshots: list[list[DomainStats]]) -> None:
        self.snapshots = snapshots
        self.ts = 1_000_000

    def collect(self) -> Snapshot:
        self.ts += 15_000
        return Snapshot(self.ts, self.snapshots.pop(0), 0.0, 0)

    def readings(self) -> list[object]:
        return []

    def close(self) -> None:
        pass


class Pipeline:
    """What the agent does to collect a cycle, without spool or sender."""

    def __init__(self, cfg: Config, collector: FakeCollector) -> None:
        self.cfg = cfg
        self.collection = DeadlineCollector(collector, cfg.collect.timeout)  # type: ignore[arg-type]
        self.planner = Planner.from_config(cfg)

    def collect_cycle(self) -> Cycle:
        snapshot = self.collection.collect()
        return self.planner.cycle(snapshot, frozenset(self.collection.stuck), 0)


def agent_for(snapshots: list[list[DomainStats]], timeout: str = "10s") -> Pipeline:
    tree = {"nova": {"series_labels": list(LABELS)}, "collect": {"timeout": timeout}}
    cfg = from_mapping(tree, hostname="h1")
    return Pipeline(cfg, FakeCollector(snapshots))


WEB = DomainInfo(nova=NovaInstance(name="web-1", project_name="demo"))


def test_unchanged_domain_reuses_its_plan() -> None:
    info = WEB
    snap = Snapshot(1, [domain("u1", stats(), info)], 0.0, 0)
    first = plan_snapshot(snap, LABELS, EXT, {})
    again = plan_snapshot(snap, LABELS, EXT, first)
    assert again["u1"] is first["u1"]


@pytest.mark.parametrize(
    "change",
    ["new key", "renamed domain", "new nova info"],
)
def test_changed_domain_gets_a_new_plan(change: str) -> None:
    snap = Snapshot(1, [domain("u1", stats(), WEB)], 0.0, 0)
    first = plan_snapshot(snap, LABELS, EXT, {})
    if change == "new key":
        d = domain("u1", stats(disks=2), WEB)
    elif change == "renamed domain":
        d = domain("u1", stats(), WEB, name="other")
    else:
        d = domain("u1", stats(), DomainInfo(nova=NovaInstance(name="web-2")))
    again = plan_snapshot(Snapshot(2, [d], 0.0, 0), LABELS, EXT, first)
    assert again["u1"] is not first["u1"]


def _stale_names(agent: Pipeline) -> dict[str, list[dict[str, str]]]:
    cycle = agent.collect_cycle()
    out: dict[str, list[dict[str, str]]] = {}
    for (name, own, shared), value in cycle.samples:
        if is_stale(value):
            out.setdefault(name, []).append({**dict(shared), **dict(own)})
    return out


def test_vanished_device_domain_and_renamed_instance_get_stale_markers_once() -> None:
    a = domain("u1", stats(disks=2), WEB)
    b = domain("u2", stats(), DomainInfo())
    renamed = DomainInfo(nova=NovaInstance(name="web-renamed", project_name="demo"))
    agent = agent_for([
        [a, b],
        [domain("u1", stats(disks=1), WEB), b],  # vdb detached
        [domain("u1", stats(disks=1), WEB)],  # u2 gone
        [domain("u1", stats(disks=1), renamed)],  # Nova renamed u1
        [domain("u1", stats(disks=1), renamed)],  # nothing changed
    ])  # fmt: skip
    assert _stale_names(agent) == {}
    detached = _stale_names(agent)
    assert list(detached) == ["libvirt_domain_block_stats_read_bytes_total"]
    assert detached["libvirt_domain_block_stats_read_bytes_total"][0]["target_device"] == "vdb"
    gone = _stale_names(agent)
    assert {d["uuid"] for series in gone.values() for d in series} == {"u2"}
    assert len(gone["libvirt_domain_state_code"]) == 1
    renamed_stale = _stale_names(agent)
    # every series of u1 carried the old name; all of them, and its info series, end
    assert all(d["instance_name"] == "web-1" for s in renamed_stale.values() for d in s)
    assert "libvirt_domain_openstack_info" in renamed_stale
    assert _stale_names(agent) == {}


def test_a_group_missing_as_a_whole_is_partial_not_removed_devices() -> None:
    partial = {k: v for k, v in stats(disks=2).items() if not k.startswith("block.")}
    agent = agent_for([
        [domain("u1", stats(disks=2), WEB)],
        [domain("u1", partial, WEB)],  # a job held the domain: no block group at all
        [domain("u1", stats(disks=2), WEB)],
        [domain("u1", stats(disks=1), WEB)],  # vdb really detached
    ])  # fmt: skip
    assert _stale_names(agent) == {}
    assert _stale_names(agent) == {}
    assert _stale_names(agent) == {}
    detached = _stale_names(agent)
    assert [
        d["target_device"] for d in detached["libvirt_domain_block_stats_read_bytes_total"]
    ] == ["vdb"]


def test_a_record_naming_disks_without_their_counters_is_partial() -> None:
    # What libvirt returns with NOWAIT while another client holds the domain's job.
    partial = {k: v for k, v in stats(disks=2).items() if not k.endswith(".rd.bytes")}
    partial["block.count"] = 2
    full = {**stats(disks=2), "block.count": 2}
    agent = agent_for([[domain("u1", full, WEB)], [domain("u1", partial, WEB)]])
    assert _stale_names(agent) == {}
    assert _stale_names(agent) == {}


def test_a_domain_shut_off_ends_its_running_series() -> None:
    off = {"state.state": 5, "state.reason": 1}
    agent = agent_for([[domain("u1", stats(), WEB)], [domain("u1", off, WEB)]])
    _stale_names(agent)
    ended = _stale_names(agent)
    assert "libvirt_domain_info_cpu_time_seconds_total" in ended
    assert "libvirt_domain_block_stats_read_bytes_total" in ended


def test_a_finished_job_ends_its_job_series_and_a_missing_answer_ends_nothing() -> None:
    job = {"job.type": 2, "job.operation": 8, "job.memory_total": 64 << 20}
    idle = {"job.type": 0}
    agent = agent_for([
        [domain("u1", {**stats(), **idle}, WEB)],
        [domain("u1", {**stats(), **job}, WEB)],  # a dump starts
        [domain("u1", stats(), WEB)],  # no job info this cycle: nothing is judged
        [domain("u1", {**stats(), **job}, WEB)],
        [domain("u1", {**stats(), **idle}, WEB)],  # the dump is over
    ])  # fmt: skip
    assert _stale_names(agent) == {}
    assert _stale_names(agent) == {}
    assert _stale_names(agent) == {}  # the job series keep their values
    assert _stale_names(agent) == {}
    ended = _stale_names(agent)
    assert set(ended) == {"libvirt_domain_job_operation", "libvirt_domain_job_memory_total_bytes"}


def test_libvirt_down_marks_nothing_stale() -> None:
    class Down(FakeCollector):
        def collect(self) -> Snapshot:
            from pusher.collect import LibvirtUnavailable

            raise LibvirtUnavailable("down")

    agent = agent_for([[domain("u1", stats(), WEB)]])
    agent.collect_cycle()
    agent.collection.collector = Down([])  # type: ignore[assignment]
    cycle = agent.collect_cycle()
    assert not any(is_stale(v) for _, v in cycle.samples)
    up = [v for (name, _, _), v in cycle.samples if name == "libvirt_up"]
    assert up == [0.0]
    assert cycle.plans == []


def test_plan_values_are_in_base_units() -> None:
    snap = Snapshot(1, [domain("u1", stats(), WEB)], 0.0, 0)
    plan = plan_snapshot(snap, LABELS, EXT, {})["u1"].plan
    values = dict(zip([k[0] for k in plan.series], plan.values(stats()), strict=True))
    assert math.isclose(values["libvirt_domain_info_cpu_time_seconds_total"], 5.0)


def test_a_hanging_bulk_call_falls_back_and_keeps_the_stuck_domains_series() -> None:
    import threading
    import time as _time

    release = threading.Event()

    class Hanging(FakeCollector):
        def collect(self) -> Snapshot:
            release.wait(30)  # a QEMU monitor that does not answer
            return super().collect()

        def collect_each(self, timeout: float, skip: set[str]) -> tuple[Snapshot, set[str]]:
            self.ts += 15_000
            return Snapshot(self.ts, [domain("u1", stats(), WEB)], 0.0, 0), {"u2"} - skip

    agent = agent_for(
        [[domain("u1", stats(), WEB), domain("u2", stats(), DomainInfo())]], timeout="1s"
    )
    agent.collect_cycle()  # both answered once
    agent.collection.collector = Hanging([[], []])  # type: ignore[assignment]
    cfg_timeout = agent.collection.timeout
    try:
        for expected in (1.0, 2.0):
            start = _time.monotonic()
            cycle = agent.collect_cycle()
            assert _time.monotonic() - start < cfg_timeout + 0.5
            assert [k for k, v in cycle.samples if is_stale(v)] == []  # u2 is stuck, not gone
            timeouts = [
                (dict(shared)["uuid"], v)
                for (name, _, shared), v in cycle.samples
                if name == "libvirt_domain_stats_timeouts_total"
            ]
            assert timeouts == [("u2", expected)]
            assert [dict(p.shared)["uuid"] for p, _ in cycle.plans] == ["u1"]  # u1 exported
    finally:
        release.set()


def test_a_stuck_domain_that_goes_away_ends_its_timeouts_series() -> None:
    import threading

    release = threading.Event()

    class Hanging(FakeCollector):
        def collect(self) -> Snapshot:
            if not release.is_set():
                release.wait(30)
                return super().collect()  # the late answer of a hung call: ignored
            self.ts += 15_000
            return Snapshot(self.ts, [domain("u1", stats(), WEB)], 0.0, 0)  # u2 destroyed

        def collect_each(self, timeout: float, skip: set[str]) -> tuple[Snapshot, set[str]]:
            self.ts += 15_000
            return Snapshot(self.ts, [domain("u1", stats(), WEB)], 0.0, 0), {"u2"} - skip

    agent = agent_for(
        [[domain("u1", stats(), WEB), domain("u2", stats(), DomainInfo())]], timeout="1s"
    )
    agent.collect_cycle()
    agent.collection.collector = Hanging([[]])  # type: ignore[assignment]
    try:
        agent.collect_cycle()  # u2 stuck: counted
    finally:
        release.set()
    for f in agent.collection._pending:
        f.result(10)
    cycle = agent.collect_cycle()
    stale = {(name, dict(shared)["uuid"]) for (name, _, shared), v in cycle.samples if is_stale(v)}
    assert ("libvirt_domain_stats_timeouts_total", "u2") in stale
    assert ("libvirt_domain_state_code", "u2") in stale
    assert not {uuid for _, uuid in stale} - {"u2"}
    assert not [v for (n, _, _), v in agent.collect_cycle().samples if is_stale(v)]  # once


def test_a_fallback_that_hangs_too_ends_the_cycle_on_time_as_a_collection_error() -> None:
    """libvirtd itself not answering (or holding a domain while it is destroyed): the bulk
    call and the fallback's listing both hang; the cycle still ends, counting an error, and
    the next one does not start a second fallback beside the hung one."""
    import threading
    import time as _time

    release = threading.Event()
    calls: list[str] = []

    class Hung(FakeCollector):
        def collect(self) -> Snapshot:
            release.wait(30)
            return super().collect()

        def collect_each(self, timeout: float, skip: set[str]) -> tuple[Snapshot, set[str]]:
            calls.append("each")
            release.wait(30)  # listAllDomains waiting on libvirtd
            return Snapshot(self.ts, [], 0.0, 0), set()

    agent = agent_for([[domain("u1", stats(), WEB)]], timeout="1s")
    agent.collection.fallback_grace = 1.0  # FALLBACK_GRACE's 10 s, shortened for the test
    agent.collect_cycle()
    agent.collection.collector = Hung([[], []])  # type: ignore[assignment]
    try:
        for expected in (
            "libvirt did not answer the per-domain fallback within 1.5s",
            "the last per-domain fallback has not returned",
        ):
            start = _time.monotonic()
            cycle = agent.collect_cycle()
            took = _time.monotonic() - start
            assert took < 2.5, took
            up = [v for (name, _, _), v in cycle.samples if name == "libvirt_up"]
            assert up == [0.0]
            assert agent.collection.last_error == expected
        assert agent.collection.errors == 2
        assert calls == ["each"]  # the second cycle did not stack another fallback
    finally:
        release.set()


def test_a_fallback_slower_than_its_half_still_gives_the_cycle_its_snapshot() -> None:
    """libvirtd busy starting or reaping a guest answers the listing late: the fallback ends
    past its own half, yet within the grace, and the cycle keeps its data (no gap, no error)."""
    assert DeadlineCollector(None, 1.0).fallback_grace == 10.0  # type: ignore[arg-type]
    assert DeadlineCollector(None, 12.0).fallback_grace == 12.0  # type: ignore[arg-type]
    import threading
    import time as _time

    release = threading.Event()

    class Slow(FakeCollector):
        def collect(self) -> Snapshot:
            release.wait(30)
            return super().collect()

        def collect_each(self, timeout: float, skip: set[str]) -> tuple[Snapshot, set[str]]:
            # Past the half it was given and past half + timeout (1.5 s, once the bound: the
            # churn of real guests took longer), well within the grace.
            _time.sleep(2.0)
            return super().collect(), set()

    agent = agent_for([[domain("u1", stats(), WEB)]], timeout="1s")
    agent.collect_cycle()
    agent.collection.collector = Slow([[domain("u1", stats(), WEB)]])  # type: ignore[assignment]
    try:
        cycle = agent.collect_cycle()
        up = [v for (name, _, _), v in cycle.samples if name == "libvirt_up"]
        assert up == [1.0]
        assert agent.collection.errors == 0 and agent.collection.last_error == ""
        assert any("u1" in str(key) for key, _v in cycle.samples)  # the guest's series came
    finally:
        release.set()


# --- filters, dropped labels and label limits ---------------------------------------------

OPS = DomainInfo(nova=NovaInstance(name="db-1", project_name="ops", project_uuid="p-ops"))


def agent_with(tree: dict[str, object], snapshots: list[list[DomainStats]]) -> Pipeline:
    cfg = from_mapping({"nova": {"series_labels": list(LABELS)}, **tree}, hostname="h1")
    return Pipeline(cfg, FakeCollector(snapshots))


def _series(cycle: Cycle) -> list[tuple[str, dict[str, str]]]:
    return [(name, {**dict(shared), **dict(own)}) for (name, own, shared), _ in cycle.all_samples()]


def test_filtered_out_domains_produce_no_series_at_all() -> None:
    plain = domain("u3", stats(), DomainInfo(), name="plain-vm")  # no Nova metadata
    agent = agent_with(
        {"filter": {"projects": {"include": ["demo"]}}},
        [[domain("u1", stats(), WEB), domain("u2", stats(), OPS), plain]],
    )
    series = _series(agent.collect_cycle())
    uuids = {labels.get("uuid") for _, labels in series}
    assert uuids == {"u1", "u3", None}  # ops is excluded; plain-vm has no project to judge


def test_domain_name_filters_and_exclude_wins() -> None:
    agent = agent_with(
        {"filter": {"domains": {"include": ["instance-.*"]}, "projects": {"exclude": ["p-ops"]}}},
        [[domain("u1", stats(), WEB), domain("u2", stats(), OPS),
          domain("u3", stats(), DomainInfo(), name="plain-vm")]],
    )  # fmt: skip
    cycle = agent.collect_cycle()
    assert {labels.get("uuid") for _, labels in _series(cycle)} == {"u1", None}
    # The host series still count every domain libvirt returned.
    assert [v for (n, _, _), v in cycle.samples if n == "libvirt_domains"] == [3.0]


def test_dropped_labels_leave_every_series() -> None:
    info = DomainInfo(
        nova=NovaInstance(name="web-1", project_name="demo", user_name="alice"),
        device_labels=(("vda", (("volume_id", "vol-1"),)),),
    )
    st = {**stats(), "block.0.path": "/var/lib/nova/instances/u1/disk"}
    agent = agent_with(
        {"labels": {"drop": ["source_file", "project_name", "user_name"]}},
        [[domain("u1", st, info)]],
    )
    series = _series(agent.collect_cycle())
    for name, labels in series:
        assert not {"source_file", "project_name", "user_name"} & set(labels), name
    blocks = [lab for n, lab in series if n == "libvirt_domain_block_stats_read_bytes_total"]
    assert blocks == [{**blocks[0], "target_device": "vda", "volume_id": "vol-1"}]
    info_series = [lab for n, lab in series if n == "libvirt_domain_openstack_info"]
    assert info_series[0]["instance_name"] == "web-1"


def test_too_many_labels_drop_nova_series_labels_then_device_extras() -> None:
    info = DomainInfo(
        nova=NovaInstance(name="web-1", project_name="demo", flavor_name="m1", user_name="a"),
        device_labels=(("vda", (("volume_id", "vol-1"),)),),
    )
    st = {**stats(), "block.0.path": "/disk"}
    snap = Snapshot(1, [domain("u1", st, info)], 0.0, 0)
    series_labels = ("instance_name", "project_name", "flavor")
    limits = LabelLimits(max_names=9)
    before = limits.dropped
    # __name__ + 2 external + domain + uuid + 3 Nova + 3 block labels = 11
    ds = plan_snapshot(snap, series_labels, EXT, {}, limits=limits)["u1"]
    names = {k for k, _ in ds.plan.shared}
    assert names == {"cluster", "host", "domain", "uuid", "instance_name"}  # last ones first
    assert limits.dropped == before + 2
    limits.max_names = 6
    ds = plan_snapshot(snap, series_labels, EXT, {}, limits=limits)["u1"]
    assert {k for k, _ in ds.plan.shared} == {"cluster", "host", "domain", "uuid"}
    block = [own for name, own, _ in ds.plan.series if "block" in name]
    assert block == [(("target_device", "vda"),)]  # volume_id and source_file went too
    for name, own, shared in [*ds.plan.series, *ds.extra_keys()]:
        assert 1 + len({k for k, _ in own} | {k for k, _ in shared}) <= 6, name
    # flavor, project_name, instance_name; volume_id, source_file (no NIC: no port_id);
    # and three of the info series' own Nova labels: instance_name stays, the first of them.
    assert limits.dropped == before + 2 + 5 + 3
    assert [dict(own) for (_, own, _), _ in ds.extra] == [{"instance_name": "web-1"}]
    # Never the identity, the external labels or a device's name, even when nothing fits.
    limits.max_names = 2
    ds = plan_snapshot(snap, series_labels, EXT, {}, limits=limits)["u1"]
    assert {k for k, _ in ds.plan.shared} == {"cluster", "host", "domain", "uuid"}


def test_the_agent_applies_the_configured_limits() -> None:
    long = DomainInfo(nova=NovaInstance(name="x" * 500, project_name="demo"))
    agent = agent_with({"limits": {"max_label_value_length": 100}}, [[domain("u1", stats(), long)]])
    assert agent.planner.limits.max_value_bytes == 100
    for _, labels in _series(agent.collect_cycle()):
        assert all(len(v.encode()) <= 100 for v in labels.values())
    other = agent_with({}, [[domain("u1", stats(), WEB)]])
    other.collect_cycle()
    assert other.planner.limits.max_value_bytes == 2048  # each agent its own limits
    samples = own_samples([agent.planner.limits], EXT)
    counts = {n: v for (n, _, _), v in samples}
    assert counts["pusher_labels_truncated_total"] == agent.planner.limits.truncated >= 1
    assert counts["pusher_labels_dropped_total"] == float(agent.planner.limits.dropped)


# --- stats groups (collect.groups) --------------------------------------------------------


def test_is_partial_expects_only_the_groups_asked_for() -> None:
    from pusher.collect import is_partial

    running = {"state.state": 1, "cpu.time": 1, "balloon.current": 1, "vcpu.current": 1,
               "net.count": 0, "block.count": 1, "block.0.rd.reqs": 1}  # fmt: skip
    assert not is_partial(running)
    no_block = {k: v for k, v in running.items() if not k.startswith("block.")}
    assert is_partial(no_block)
    assert not is_partial(no_block, ("state", "cpu_total", "balloon", "vcpu", "interface"))
    named_only = {**no_block, "block.count": 2}
    assert is_partial(named_only)
    assert not is_partial({"state.state": 1}, ("state", "perf"))
    assert is_partial({"state.state": 1}, ("state", "cpu_total"))
    assert not is_partial({"state.state": 5}, ("state", "cpu_total"))


def test_the_collector_asks_libvirt_for_the_configured_groups() -> None:
    import libvirt

    from pusher.collect import STATS_GROUPS, Collector, stats_flags

    assert stats_flags(("state", "cpu_total", "balloon", "vcpu", "interface", "block")) == (
        STATS_GROUPS
    )
    asked: list[int] = []

    class Conn:
        def getAllDomainStats(self, stats: int, flags: int) -> list[object]:
            asked.append(stats)
            return []

    collector = Collector("test:///default", use_events=False)
    collector._connect = Conn  # type: ignore[method-assign]
    collector.collect()
    assert asked == [STATS_GROUPS]
    cfg = from_mapping({"collect": {"groups": ["state", "perf", "iothread", "memory",
                                               "dirtyrate"]}}, env={}, hostname="h")  # fmt: skip
    collector = Collector.from_config(cfg, use_events=False)  # the config's groups
    collector._connect = Conn  # type: ignore[method-assign]
    collector.collect()
    want = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_PERF
            | libvirt.VIR_DOMAIN_STATS_IOTHREAD | libvirt.VIR_DOMAIN_STATS_MEMORY
            | libvirt.VIR_DOMAIN_STATS_DIRTYRATE)  # fmt: skip
    assert asked[-1] == want
    assert collector.groups == ("state", "perf", "iothread", "memory", "dirtyrate")


def test_a_tenant_limit_mimir_named_cuts_labels_from_the_next_cycle() -> None:
    long = DomainInfo(nova=NovaInstance(name="x" * 500, project_name="demo"))
    agent = agent_with({}, [[domain("u1", stats(), long)] for _ in range(3)])
    first = agent.collect_cycle()
    assert any(len(lab.get("instance_name", "")) == 500 for _, lab in _series(first))
    assert not agent.planner.adopt_limit("label-value-too-long", 4096)  # not lower: ignored
    assert not agent.planner.adopt_limit("sample-out-of-order", 10)  # names no limit
    assert agent.planner.adopt_limit("label-value-too-long", 200)
    second = agent.collect_cycle()
    for (name, own, shared), value in second.all_samples():
        if not is_stale(value):
            labels = {**dict(shared), **dict(own)}
            assert all(len(v.encode()) <= 200 for v in labels.values()), name
    # The series with the long name ended: a stale marker each, once.
    stale = [lab for (n, own, shared), v in second.samples if is_stale(v)
             for lab in [{**dict(shared), **dict(own)}]]  # fmt: skip
    assert stale and all(len(s["instance_name"]) == 500 for s in stale)
    assert not [v for _, v in agent.collect_cycle().samples if is_stale(v)]
    readings = {(n, lab): v for n, lab, v in agent.planner.limits.readings()}
    assert readings[("pusher_label_limit", (("limit", "max_label_value_length"),))] == 200


def test_a_vcpu_no_longer_pinned_to_one_cpu_ends_its_series_and_a_missing_answer_nothing() -> None:
    vcpu = {"vcpu.0.state": 1}  # the record names the vCPU: it is still there
    pinned = {**vcpu, "placement.0.cpu": 3, "placement.0.affinity_cpus": 1,
              "placement.0.pinned_cpu": 3}  # fmt: skip
    free = {**vcpu, "placement.0.cpu": 1, "placement.0.affinity_cpus": 4}
    agent = agent_for([
        [domain("u1", {**stats(), **pinned}, WEB)],
        [domain("u1", {**stats(), **vcpu}, WEB)],  # no placement answer: nothing is judged
        [domain("u1", {**stats(), **pinned}, WEB)],
        [domain("u1", {**stats(), **free}, WEB)],  # unpinned
    ])  # fmt: skip
    assert _stale_names(agent) == {}
    assert _stale_names(agent) == {}
    assert _stale_names(agent) == {}
    assert _stale_names(agent) == {"libvirt_domain_vcpu_pinned_cpu": [
        {"host": "h1", "domain": "instance-u1", "uuid": "u1",
         "instance_name": "web-1", "project_name": "demo", "vcpu": "0"}
    ]}  # fmt: skip
