"""Finished jobs (`pusher.jobs`): job-completed events read, counted per domain, and turned
into counters by the planner, with their lifecycle when a domain goes away."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from pusher import catalog
from pusher.collect import Collector, DomainStats, Snapshot
from pusher.encode import is_stale
from pusher.filters import DomainFilter
from pusher.jobs import JOB_METRICS, JobSeries, JobTally, JobTotals, parse_job
from pusher.nova import DomainInfo, NovaInstance
from pusher.series import Cycle, Planner

# What libvirt 9.0's QEMU driver puts in the event's parameters (qemuDomainJobDataToParams):
# a live migration (outgoing), a memory-only dump (the 9.0 driver sends no event for dumps;
# others may), a save (as measured here: `virsh save`), and a backup that failed.
MIGRATION = {
    "operation": 5, "time_elapsed": 2345, "time_elapsed_net": 2300, "downtime": 40,
    "setup_time": 3, "data_total": 300_000_000, "data_processed": 280_000_000,
    "data_remaining": 0, "memory_total": 268_435_456, "memory_processed": 270_000_000,
    "memory_remaining": 0, "memory_bps": 120_000_000, "memory_constant": 1000,
    "memory_normal": 60_000, "memory_normal_bytes": 245_760_000, "memory_dirty_rate": 0,
    "memory_iteration": 2, "memory_postcopy_requests": 0, "memory_page_size": 4096,
    "disk_total": 10_000_000, "disk_processed": 10_000_000, "disk_remaining": 0,
}  # fmt: skip
DUMP = {"operation": 8, "time_elapsed": 1500, "memory_total": 67_108_864,
        "memory_processed": 67_108_864, "memory_remaining": 0}  # fmt: skip
SAVE = {
    "operation": 2, "time_elapsed": 52, "downtime": 45, "setup_time": 5,
    "data_total": 67764224, "data_processed": 922913, "data_remaining": 0,
    "memory_total": 67764224, "memory_processed": 922913, "memory_remaining": 0,
    "memory_constant": 16355, "memory_normal": 189, "memory_normal_bytes": 774144,
    "memory_dirty_rate": 0, "memory_iteration": 2, "memory_postcopy_requests": 0,
    "memory_page_size": 4096,
}  # fmt: skip
FAILED_BACKUP = {"operation": 9, "time_elapsed": 800, "disk_total": 1 << 26,
                 "disk_processed": 1 << 20, "disk_remaining": (1 << 26) - (1 << 20),
                 "success": False, "errmsg": "No space left on device"}  # fmt: skip


# --- one event's parameters ------------------------------------------------------------------


def test_a_migration_counts_its_seconds_and_all_the_data_it_moved() -> None:
    assert parse_job(MIGRATION) == (("migration_out", "completed"), 2.345, 280_000_000.0)


def test_a_dump_counts_the_memory_it_wrote() -> None:
    assert parse_job(DUMP) == (("dump", "completed"), 1.5, 67_108_864.0)


def test_a_save_counts_the_memory_it_wrote_as_a_migration_does() -> None:
    assert parse_job(SAVE) == (("save", "completed"), 0.052, 922913.0)


def test_a_backup_that_failed_counts_as_failed_with_the_disk_data_it_moved() -> None:
    assert parse_job(FAILED_BACKUP) == (("backup", "failed"), 0.8, float(1 << 20))
    ok = {**FAILED_BACKUP, "success": True}
    del ok["errmsg"]
    assert parse_job(ok)[0] == ("backup", "completed")


def test_a_cancelled_backup_counts_as_cancelled() -> None:
    # As libvirt 9.0 reports a push backup aborted with `virsh domjobabort` (measured).
    aborted = {"operation": 9, "time_elapsed": 1807, "disk_total": 2147483648,
               "disk_processed": 538968064, "disk_remaining": 1608515584, "success": False,
               "errmsg": "Operation canceled"}  # fmt: skip
    assert parse_job(aborted) == (("backup", "cancelled"), 1.807, 538968064.0)
    # A pull backup ends with an abort too: libvirt calls it a success.
    pulled = {"operation": 9, "time_elapsed": 2107, "disk_temp_used": 0,
              "disk_temp_total": 1073741824, "success": True,
              "errmsg": "Operation canceled"}  # fmt: skip
    assert parse_job(pulled) == (("backup", "completed"), 2.107, 0.0)


@pytest.mark.parametrize(
    ("job_type", "result"), [(3, "completed"), (4, "failed"), (5, "cancelled")]
)
def test_the_job_type_when_given_names_the_result(job_type: int, result: str) -> None:
    # virDomainJobType: 3 completed, 4 failed, 5 cancelled; it wins over `success`.
    assert parse_job({**DUMP, "type": job_type, "success": True})[0] == ("dump", result)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, (("unknown", "completed"), 0.0, 0.0)),
        ([("operation", 5)], (("unknown", "completed"), 0.0, 0.0)),
        ("operation=5", (("unknown", "completed"), 0.0, 0.0)),
        ({}, (("unknown", "completed"), 0.0, 0.0)),
        ({"operation": 42}, (("unknown", "completed"), 0.0, 0.0)),  # a newer libvirt's
        ({"operation": "5"}, (("unknown", "completed"), 0.0, 0.0)),
        ({"operation": True, "time_elapsed": True}, (("unknown", "completed"), 0.0, 0.0)),
        ({"operation": 2, "time_elapsed": -5, "data_processed": -1},
         (("save", "completed"), 0.0, 0.0)),
        ({"operation": 2, "time_elapsed": math.nan, "data_processed": math.inf},
         (("save", "completed"), 0.0, 0.0)),
        ({"operation": 4, "time_elapsed": "12", "memory_processed": "7", "disk_processed": 3},
         (("migration_in", "completed"), 0.0, 3.0)),
        ({"operation": 8, "type": "failed", "success": "no"}, (("dump", "completed"), 0.0, 0.0)),
        ({"operation": 8, "type": 99}, (("dump", "completed"), 0.0, 0.0)),
        ({"operation": 9, "success": 0}, (("backup", "failed"), 0.0, 0.0)),
        ({1: 2, None: 3}, (("unknown", "completed"), 0.0, 0.0)),
    ],
)  # fmt: skip
def test_odd_or_missing_parameters_never_fail(params: object, expected: object) -> None:
    assert parse_job(params) == expected


def test_the_largest_figures_libvirt_can_give_are_taken_as_they_are() -> None:
    top = 2**64 - 1  # unsigned long long
    key, seconds, moved = parse_job({"operation": 5, "time_elapsed": top, "data_processed": top})
    assert key == ("migration_out", "completed")
    assert seconds == pytest.approx(top / 1000) and moved == float(top)


# --- the tally ---------------------------------------------------------------------------------


class Dom:
    def __init__(self, uuid: str, name: str = "") -> None:
        self.uuid, self._name = uuid, name or f"instance-{uuid}"

    def UUIDString(self) -> str:
        return self.uuid

    def name(self) -> str:
        return self._name


class BrokenDom:
    def UUIDString(self) -> str:
        raise RuntimeError("the domain went away")


def test_events_add_up_per_domain_operation_and_result() -> None:
    tally = JobTally()
    for params in (MIGRATION, MIGRATION, DUMP, FAILED_BACKUP):
        tally.on_job_completed(None, Dom("u1"), params, None)
    tally.on_job_completed(None, Dom("u2", "renamed"), DUMP, None)
    totals = tally.totals()
    assert totals["u1"].name == "instance-u1" and totals["u2"].name == "renamed"
    assert totals["u1"].totals == {
        ("migration_out", "completed"): JobTotals(2, 4.69, 560_000_000.0),
        ("dump", "completed"): JobTotals(1, 1.5, 67_108_864.0),
        ("backup", "failed"): JobTotals(1, 0.8, float(1 << 20)),
    }
    assert totals["u2"].totals == {("dump", "completed"): JobTotals(1, 1.5, 67_108_864.0)}


def test_an_event_that_cannot_be_read_is_not_counted_and_raises_nothing() -> None:
    tally = JobTally()
    tally.on_job_completed(None, BrokenDom(), MIGRATION, None)
    tally.on_job_completed(None, Dom("u1"), object(), None)  # counted, as unknown
    assert list(tally.totals()) == ["u1"]
    assert tally.totals()["u1"].totals == {("unknown", "completed"): JobTotals(1, 0.0, 0.0)}


def test_the_copy_does_not_change_with_later_events() -> None:
    tally = JobTally()
    tally.add("u1", "i-1", DUMP)
    before = tally.totals()
    tally.add("u1", "i-1", DUMP)
    assert before["u1"].totals[("dump", "completed")].count == 1
    assert tally.totals()["u1"].totals[("dump", "completed")].count == 2


def test_a_domain_in_libvirt_is_kept_and_a_gone_one_forgotten_after_the_linger() -> None:
    tally = JobTally(linger=3)
    tally.add("here", "i-1", DUMP)
    tally.add("gone", "i-2", MIGRATION)
    for _ in range(3):
        tally.retain({"here"})
    assert set(tally.totals()) == {"here", "gone"}
    tally.retain({"here"})
    assert set(tally.totals()) == {"here"}
    for _ in range(100):
        tally.retain({"here"})
    assert tally.totals()["here"].totals[("dump", "completed")].count == 1


def test_an_event_restarts_the_linger_of_a_gone_domain() -> None:
    tally = JobTally(linger=2)
    tally.add("gone", "i-2", MIGRATION)
    tally.retain(set())
    tally.retain(set())
    tally.add("gone", "i-2", MIGRATION)  # another incoming migration that failed
    tally.retain(set())
    tally.retain(set())
    assert tally.totals()["gone"].totals[("migration_out", "completed")].count == 2


def test_events_from_another_thread_are_all_counted() -> None:
    tally = JobTally()
    seen: list[int] = []

    def fire() -> None:
        for _ in range(2000):
            tally.on_job_completed(None, Dom("u1"), DUMP, None)

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        totals = tally.totals()
        tally.retain({"u1"})
        if "u1" in totals:
            seen.append(totals["u1"].totals[("dump", "completed")].count)
    for t in threads:
        t.join()
    assert seen == sorted(seen)  # every copy is a consistent, growing count
    assert tally.totals()["u1"].totals[("dump", "completed")].count == 8000


def test_the_collector_hands_the_totals_over_and_ages_them_by_what_libvirt_lists() -> None:
    c = Collector("test:///default", use_events=False)
    try:
        c.jobs.linger = 1
        c.jobs.add("6695eb01-f6a4-8304-79aa-97f2502e193f", "test", DUMP)  # the test driver's
        c.jobs.add("gone-uuid", "instance-gone", MIGRATION)
        first = c.collect().finished_jobs
        assert set(first) == {"6695eb01-f6a4-8304-79aa-97f2502e193f", "gone-uuid"}
        assert set(c.collect().finished_jobs) == {"6695eb01-f6a4-8304-79aa-97f2502e193f"}
    finally:
        c.close()


# --- the counters -------------------------------------------------------------------------------

WEB = DomainInfo(nova=NovaInstance(name="web-1", project_name="demo"))
EXT = (("cluster", "c1"),)


def snapshot(ts: int, uuids: list[str], tally: JobTally, info: DomainInfo = WEB) -> Snapshot:
    domains = [DomainStats(f"instance-{u}", u, {"state.state": 1}, info) for u in uuids]
    return Snapshot(ts, domains, 0.0, 0, finished_jobs=tally.totals())


def jobs(cycle: Cycle) -> dict[tuple[str, str, str, str], float]:
    """(metric, uuid, operation, result) -> value, of the finished-job series (stale: NaN)."""
    return {
        (name, dict(shared)["uuid"], dict(own)["operation"], dict(own)["result"]): value
        for (name, own, shared), value in cycle.samples
        if name in JOB_METRICS
    }


def test_a_counter_shows_zero_first_then_its_totals_and_only_grows() -> None:
    planner, tally = Planner(("instance_name",), EXT), JobTally()
    first = jobs(planner.cycle(snapshot(1000, ["u1"], tally), frozenset(), 0))
    assert first == {}  # no job yet: no series
    tally.add("u1", "instance-u1", MIGRATION)
    zero = jobs(planner.cycle(snapshot(2000, ["u1"], tally), frozenset(), 0))
    assert zero == {(n, "u1", "migration_out", "completed"): 0.0 for n in JOB_METRICS}
    got = jobs(planner.cycle(snapshot(3000, ["u1"], tally), frozenset(), 0))
    assert got == {
        ("libvirt_domain_jobs_finished_total", "u1", "migration_out", "completed"): 1.0,
        ("libvirt_domain_jobs_finished_seconds_total", "u1", "migration_out", "completed"): 2.345,
        ("libvirt_domain_jobs_finished_bytes_total", "u1", "migration_out", "completed"): 2.8e8,
    }
    tally.add("u1", "instance-u1", MIGRATION)
    tally.add("u1", "instance-u1", DUMP)
    more = jobs(planner.cycle(snapshot(4000, ["u1"], tally), frozenset(), 0))
    assert more[("libvirt_domain_jobs_finished_total", "u1", "migration_out", "completed")] == 2
    assert more[("libvirt_domain_jobs_finished_total", "u1", "dump", "completed")] == 0  # new
    assert all(not math.isnan(v) for v in more.values())


def test_the_series_carry_the_domains_labels_and_operation_and_result() -> None:
    planner, tally = Planner(("instance_name", "project_name"), EXT), JobTally()
    tally.add("u1", "instance-u1", FAILED_BACKUP)
    cycle = planner.cycle(snapshot(1000, ["u1"], tally), frozenset(), 0)
    key = next(k for k, _ in cycle.samples if k[0] == "libvirt_domain_jobs_finished_total")
    assert dict(catalog.series_labels(key)) == {
        "__name__": "libvirt_domain_jobs_finished_total", "cluster": "c1",
        "domain": "instance-u1", "uuid": "u1", "instance_name": "web-1",
        "project_name": "demo", "operation": "backup", "result": "failed",
    }  # fmt: skip
    assert {m.labels for m in catalog.CATALOG if m.name in JOB_METRICS} == {("operation", "result")}


def run_until_forgotten(planner: Planner, tally: JobTally, here: list[str]) -> list[Cycle]:
    """Cycles as the agent runs them (the tally aged after each collection) until the tally
    forgot every gone domain."""
    cycles = []
    for ts in range(10_000, 10_000 + 1000 * (tally.linger + 3), 1000):
        tally.retain(set(here))
        cycles.append(planner.cycle(snapshot(ts, here, tally), frozenset(), 0))
    return cycles


def test_a_domain_migrated_away_is_counted_with_its_last_labels_then_its_series_end() -> None:
    planner, tally = Planner(("instance_name",), EXT), JobTally(linger=4)
    planner.cycle(snapshot(1000, ["u1", "u2"], tally), frozenset(), 0)
    tally.add("u1", "instance-u1", MIGRATION)  # then Nova undefines it on the source
    cycles = run_until_forgotten(planner, tally, ["u2"])
    name = "libvirt_domain_jobs_finished_total"
    values = [jobs(c).get((name, "u1", "migration_out", "completed")) for c in cycles]
    labels = {
        dict(shared).get("instance_name")
        for c in cycles for (n, _, shared), _ in c.samples if n == name
    }  # fmt: skip
    assert labels == {"web-1"}  # the labels it had before it left
    assert values[:4] == [0.0, 1.0, 1.0, 1.0]  # 4 cycles after its event
    assert is_stale(values[4])  # then it ends, once
    assert values[5:] == [None] * len(values[5:])
    assert not any(k[0] in JOB_METRICS for c in cycles[5:] for k in c.ended)
    stale = {k for k in cycles[4].ended if k[0] in JOB_METRICS}
    assert len(stale) == 3


def test_a_domain_never_seen_gets_its_identity_labels_unless_filters_are_set() -> None:
    for admits, expected in ((None, True), (DomainFilter.of(("demo",)).admits, False)):
        planner, tally = Planner((), EXT, admits=admits), JobTally()
        tally.add("u9", "instance-u9", {"operation": 4, "type": 4})  # incoming, failed
        cycle = planner.cycle(snapshot(1000, [], tally), frozenset(), 0)
        got = [shared for (n, _, shared), _ in cycle.samples if n in JOB_METRICS]
        if expected:
            assert set(got) == {(("cluster", "c1"), ("domain", "instance-u9"), ("uuid", "u9"))}
        else:
            assert got == []


def test_a_domain_the_filters_leave_out_has_no_job_series() -> None:
    ops = DomainInfo(nova=NovaInstance(name="db-1", project_name="ops"))
    planner = Planner((), EXT, admits=DomainFilter.of(("demo",)).admits)
    tally = JobTally()
    tally.add("u1", "instance-u1", DUMP)
    for ts in (1000, 2000):
        assert jobs(planner.cycle(snapshot(ts, ["u1"], tally, ops), frozenset(), 0)) == {}


def test_a_cycle_without_libvirt_ends_nothing() -> None:
    planner, tally = Planner((), EXT), JobTally()
    tally.add("u1", "instance-u1", DUMP)
    planner.cycle(snapshot(1000, ["u1"], tally), frozenset(), 0)
    planner.cycle(snapshot(2000, ["u1"], tally), frozenset(), 0)
    down = planner.cycle(None, frozenset(), 3000)
    assert not down.ended and not jobs(down)
    back = jobs(planner.cycle(snapshot(4000, ["u1"], tally), frozenset(), 0))
    assert back[("libvirt_domain_jobs_finished_total", "u1", "dump", "completed")] == 1.0


def test_a_domain_that_comes_back_after_being_forgotten_starts_from_zero() -> None:
    series, tally = JobSeries(), JobTally(linger=0)
    labels: dict[str, Any] = {"u1": (("uuid", "u1"),)}
    tally.add("u1", "instance-u1", DUMP)
    for _ in range(2):
        series.cycle(tally.totals(), labels, (), lambda u, n: None)
    tally.retain(set())  # gone and forgotten
    _, ended = series.cycle(tally.totals(), {}, (), lambda u, n: None)
    assert len(ended) == 3
    tally.add("u1", "instance-u1", DUMP)  # back, with a new job
    out, _ = series.cycle(tally.totals(), labels, (), lambda u, n: None)
    assert [v for _, v in out] == [0.0, 0.0, 0.0]
    out, _ = series.cycle(tally.totals(), labels, (), lambda u, n: None)
    assert out[0][1] == 1.0


def test_the_docs_say_where_the_finished_job_series_come_from() -> None:
    lines = [x for x in catalog.markdown().splitlines() if "jobs_finished" in x]
    assert len(lines) == 3 and all("job-completed event" in x for x in lines)
