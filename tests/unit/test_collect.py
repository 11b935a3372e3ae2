"""pusher.collect's job info (collect.job_info) on stand-in domains: merging, late answers,
refusals and the shared deadline."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import libvirt
import pytest

from pusher.collect import Collector, DaemonPool
from pusher.nova import DomainInfo


class Dom:
    """A stand-in for virDomain: its UUID and a jobStats that answers, fails or hangs."""

    def __init__(self, uuid: str, answer: Any = None, gate: threading.Event | None = None):
        self.uuid, self.answer, self.gate, self.calls = uuid, answer, gate, 0

    def UUIDString(self) -> str:
        return self.uuid

    def name(self) -> str:
        return f"instance-{self.uuid}"

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if isinstance(self.answer, Exception):
            raise self.answer
        return dict(self.answer or {"type": 0})


def refusal(code: int) -> libvirt.libvirtError:
    e = libvirt.libvirtError("refused")
    e.err = (code, 0, "refused", 0, "", None, None, 0, 0)
    return e


RUNNING = {"state.state": 1, "cpu.time": 1}


@pytest.fixture
def collector() -> Any:
    c = Collector("test:///default", use_events=False, partial_wait=0.3, job_info=True)
    yield c
    c.close()


def cycle(c: Collector, records: list[tuple[Dom, dict[str, Any]]]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + c.partial_wait
    futures = c._follow_ups.ask_jobs(records)
    return [stats for _, stats in c._follow_ups.add_jobs(records, futures, deadline)]


def test_job_keys_are_merged_for_live_domains_only(collector: Collector) -> None:
    busy = Dom("u1", {"type": 2, "operation": 8, "memory_total": 1 << 26})
    off = Dom("u2")
    out = cycle(collector, [(busy, dict(RUNNING)), (off, {"state.state": 5})])
    assert out[0] == {**RUNNING, "job.type": 2, "job.operation": 8, "job.memory_total": 1 << 26}
    assert out[1] == {"state.state": 5} and off.calls == 0


def test_a_late_answer_keeps_the_last_one_and_the_cycle_keeps_its_deadline(
    collector: Collector,
) -> None:
    gate = threading.Event()
    dom = Dom("u1", {"type": 2, "operation": 5})
    assert cycle(collector, [(dom, dict(RUNNING))])[0]["job.operation"] == 5
    dom.gate, dom.answer = gate, {"type": 0}
    start = time.monotonic()
    out = cycle(collector, [(dom, dict(RUNNING))])
    assert time.monotonic() - start < collector.partial_wait + 0.2
    assert out[0]["job.operation"] == 5  # the last answer, not a gap
    # Still in flight: not asked again; once it answers, its answer is used.
    cycle(collector, [(dom, dict(RUNNING))])
    assert dom.calls == 2
    gate.set()
    time.sleep(0.1)
    dom.gate = None
    assert cycle(collector, [(dom, dict(RUNNING))])[0]["job.type"] == 0


def test_refusals_are_not_errors_but_failures_are_counted(collector: Collector) -> None:
    incoming = Dom("u1", refusal(libvirt.VIR_ERR_OPERATION_INVALID))
    broken = Dom("u2", refusal(libvirt.VIR_ERR_INTERNAL_ERROR))
    out = cycle(collector, [(incoming, dict(RUNNING)), (broken, dict(RUNNING))])
    assert out == [RUNNING, RUNNING]
    counts = {name: value for name, _, value in collector.readings()}
    assert counts["pusher_job_info_errors_total"] == 1


def test_domains_the_filters_leave_out_get_no_job_calls(collector: Collector) -> None:
    kept, left_out, unread = Dom("u1"), Dom("u2"), Dom("u3")
    collector.exported = lambda name, nova: name != "instance-u2"
    for dom in (kept, left_out):  # their XML was read; u3's not yet: it counts as exported
        collector._domains._cache[dom.uuid] = (time.time(), DomainInfo())
    cycle(collector, [(d, dict(RUNNING)) for d in (kept, left_out, unread)])
    assert (kept.calls, left_out.calls, unread.calls) == (1, 0, 1)


def test_a_call_that_never_returns_does_not_keep_the_process_from_exiting() -> None:
    # A stuck QEMU monitor holds a libvirt call for as long as the guest is stuck.
    code = (
        "import threading\n"
        "from pusher.collect import DaemonPool\n"
        "pool = DaemonPool(2, 'libvirt')\n"
        "hung = pool.submit(threading.Event().wait)\n"
        "queued = [pool.submit(threading.Event().wait) for _ in range(3)]\n"
        "pool.shutdown()\n"
        "assert all(f.cancelled() for f in queued[1:]), queued\n"
        "print('done')\n"
    )
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "done"), done.stderr
    assert time.monotonic() - start < 10


def test_the_pool_runs_calls_and_hands_back_results_and_errors() -> None:
    pool = DaemonPool(2, "test")
    try:
        assert pool.submit(sum, [1, 2]).result(5) == 3
        with pytest.raises(ZeroDivisionError):
            pool.submit(divmod, 1, 0).result(5)
    finally:
        pool.shutdown()


class XmlDom:
    """A domain whose XML read fails as libvirt answers for one undefined meanwhile."""

    def __init__(self, error: libvirt.libvirtError) -> None:
        self.error = error

    def UUIDString(self) -> str:
        return "u-gone"

    def XMLDesc(self, flags: int = 0) -> str:
        raise self.error


def test_a_domain_undefined_since_its_stats_call_is_left_out_not_stripped_of_nova() -> None:
    from pusher.collect import DomainInfoCache

    cache = DomainInfoCache(refresh_interval=3600)
    gone = XmlDom(refusal(libvirt.VIR_ERR_NO_DOMAIN))
    assert cache.info(gone, "u-gone", 1.0) == (None, 1)
    # Another error is no sign that it is gone: exported, without what could not be read.
    assert cache.info(XmlDom(refusal(libvirt.VIR_ERR_INTERNAL_ERROR)), "u-gone", 1.0) == (
        DomainInfo(),
        1,
    )
