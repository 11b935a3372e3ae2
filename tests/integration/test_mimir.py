"""Against the real Grafana Mimir: tenants, both protocols, an outage of minutes with the agent
killed in it, out-of-order windows, too-old samples, tenant limits and size limits.

The agent runs as a real process on the real guests and pushes to a real Mimir (tests/mimir.py;
skipped with a line saying how to get the binary when `MIMIR_BIN` is not set). Every check is
a query of Mimir's own API, with the tenant header.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent import AgentProcess, run_once, stop_cleanly, wait_for, write_config
from guests import Guest
from mimir import Mimir

from pusher.config import RemoteWriteConfig
from pusher.encode import Encoder
from pusher.sender import Sender
from pusher.spool import Spool

INTERVAL = 1.0
CPU = "libvirt_domain_info_cpu_time_seconds_total"
FAST_RETRY = {"min_backoff": "50ms", "max_backoff": "1s", "timeout": "5s"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mimir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mimir]:
    """One Mimir for the tests that need no limits of their own: each uses its own tenant."""
    m = Mimir(tmp_path_factory.mktemp("mimir"), overrides={})
    yield m
    m.stop()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def config(tmp_path: Path, m: Mimir, name: str, **sections: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rw = {"tenant": name, **FAST_RETRY, **sections.pop("remote_write", {})}
    sections.setdefault("collect", {"interval": f"{INTERVAL:g}s"})
    return write_config(tmp_path, m.push_url, remote_write=rw, **sections)


def holes(samples: list[tuple[float, float]], step: float = INTERVAL) -> list[tuple[float, float]]:
    """(before, after) of every missing cycle. A cycle's timestamp is taken when its stats
    are read, up to half a step late when a guest is slow: only a gap of two steps or more
    is a missing cycle."""
    ts = [t for t, _ in samples]
    return [(a, b) for a, b in itertools.pairwise(ts) if b - a > 1.9 * step]


def caught_up(m: Mimir, name: str) -> bool:
    """The newest cycle is in, and it saw no backlog older than a few cycles."""
    newest = m.value("max(timestamp(libvirt_up))", name)
    age = m.value("max(pusher_spool_oldest_sample_age_seconds)", name, default=1e9)
    return newest > time.time() - 5 * INTERVAL and age < 5 * INTERVAL


def rejected_or_dropped(m: Mimir, name: str) -> dict[str, float]:
    out = {}
    for metric in ("pusher_samples_dropped_total", "pusher_rejected_request_samples_total"):
        for r in m.query(f"{metric} > 0", name):
            out[f"{metric}/{r['metric']['reason']}"] = float(r["value"][1])
    return out


# --- tenants ------------------------------------------------------------------------------


def test_data_lands_in_its_tenant_only(guests: list[Guest], mimir: Mimir, tmp_path: Path) -> None:
    mine, other = tenant(), tenant()
    done = run_once(config(tmp_path, mimir, mine), "--once")
    assert done.returncode == 0, done.stderr
    for g in guests:
        found = wait_for(lambda g=g: mimir.query(f'{CPU}{{uuid="{g["uuid"]}"}}', mine), 30,
                         f"{g['name']} in Mimir")  # fmt: skip
        assert found[0]["metric"]["instance_name"] == g["instance_name"]
        assert found[0]["metric"]["cluster"] == "test-cluster"
    assert mimir.query(CPU, other) == []


def test_no_tenant_is_refused_401_no_org_id_and_held(mimir: Mimir) -> None:
    sender = Sender(RemoteWriteConfig(url=mimir.push_url, timeout=5.0))
    try:
        requests_ = Encoder(100).encode([(("m", (), (("a", "b"),)), 1.0)], int(time.time() * 1000))
        outcome = sender.send(requests_[0].body)
    finally:
        sender.close()
    assert (outcome.kind, outcome.code) == ("hold", "401")
    assert "no org id" in outcome.message


def test_an_identical_resend_is_accepted_and_another_value_is_not(mimir: Mimir) -> None:
    # The agent resends a request whose answer it never got (a timeout after Mimir stored
    # it): that must be accepted silently, not refused as a duplicate.
    name = tenant()
    sender = Sender(RemoteWriteConfig(url=mimir.push_url, tenant=name, timeout=5.0))
    now = int(time.time() * 1000)
    key = ("resent", (), (("cluster", "c"),))
    try:
        first, again = (sender.send(Encoder(10).encode([(key, 1.0)], now)[0].body) for _ in "12")
        other = sender.send(Encoder(10).encode([(key, 2.0)], now)[0].body)
    finally:
        sender.close()
    assert (first.kind, again.kind) == ("ok", "ok")
    assert (other.kind, other.reason) == ("reject", "sample-duplicate-timestamp")
    assert mimir.value("resent", name) == 1.0


# --- protocols ----------------------------------------------------------------------------

WIRE_BYTES: dict[str, float] = {}  # protocol -> wire bytes per sample, in this run


@pytest.mark.parametrize("protocol", ["v1", "v2", "auto"])
def test_each_protocol_delivers_every_guest(
    guests: list[Guest], mimir: Mimir, tmp_path: Path, protocol: str
) -> None:
    name = tenant()
    cfg = config(tmp_path, mimir, name, remote_write={"protocol": protocol})
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        wait_for(lambda: mimir.value("max(pusher_samples_sent_total)", name) > 2000, 60,
                 "a few cycles sent")  # fmt: skip
    finally:
        stop_cleanly(agent)
    for g in guests:
        assert mimir.query(f'{CPU}{{uuid="{g["uuid"]}"}}', name), g["name"]
    sent = mimir.value("max(pusher_samples_sent_total)", name)
    wire = mimir.value("max(pusher_request_bytes_total)", name)
    WIRE_BYTES[protocol] = wire / sent
    print(f"protocol {protocol}: {wire / sent:.2f} wire bytes per sample "
          f"({sent:.0f} samples, {len(guests)} real guests)")  # fmt: skip
    assert rejected_or_dropped(mimir, name) == {}
    # Mimir 3.0.3 takes 2.0: `auto` never fell back, and remembered nothing.
    assert not (tmp_path / "spool" / "protocol").exists()
    if protocol == "auto" and "v1" in WIRE_BYTES:  # measured in this run, on these guests
        assert WIRE_BYTES["auto"] < 0.8 * WIRE_BYTES["v1"], WIRE_BYTES


# --- an outage of minutes, the agent killed in it -------------------------------------------


OUTAGE_S = float(os.environ.get("PUSHER_TEST_MIMIR_OUTAGE_S", "120"))


def test_mimir_down_for_minutes_with_the_agent_killed_loses_only_the_dead_seconds(
    guests: list[Guest], tmp_path: Path
) -> None:
    m = Mimir(tmp_path / "mimir")
    name = tenant()
    cfg = config(tmp_path, m, name)
    first = AgentProcess(cfg, tmp_path / "agent1.log")
    second: AgentProcess | None = None
    try:
        wait_for(lambda: m.query("libvirt_up", name), 30, "the first cycles")
        start = time.time()
        m.stop()
        time.sleep(OUTAGE_S / 2)
        killed_at = time.time()
        first.kill()
        time.sleep(2)
        restarted_at = time.time()
        second = AgentProcess(cfg, tmp_path / "agent2.log")
        time.sleep(OUTAGE_S / 2)
        m.start()  # the same data directory and ports
        wait_for(lambda: caught_up(m, name), 120, "the backlog to drain")
        time.sleep(2 * INTERVAL)  # one more cycle carries the final counters
        end = time.time()
        window = end - start + 5
        # Every cycle carries libvirt_up: a cycle missing there is a cycle lost.
        cycles = m.range_values("libvirt_up", name, window, end)
        gaps = holes([c for c in cycles if c[0] >= start - 1])
        # The only hole is the time no agent ran (plus the new process's start and tick).
        assert len(gaps) <= 1, gaps
        for a, b in gaps:
            assert a >= killed_at - 1.5 and b <= restarted_at + 4, (gaps, killed_at)
        for g in guests:  # (a guest that is slow to answer may miss a cycle: not a loss)
            series = m.range_values(f'{CPU}{{uuid="{g["uuid"]}"}}', name, window, end)
            assert series[0][0] < start and series[-1][0] > end - 4
            assert len(series) >= 0.9 * len(cycles)
        assert rejected_or_dropped(m, name) == {}
        requests = {r["metric"]["code"]: float(r["value"][1])
                    for r in m.query("pusher_requests_total", name)}  # fmt: skip
        assert set(requests) <= {"200", "error", "500", "503"}, requests  # no 400 at all
        print(
            f"Mimir down {OUTAGE_S:.0f} s, agent killed {killed_at - start:.0f} s into it and "
            f"restarted 2 s later: one hole of at most {restarted_at - killed_at + 4:.0f} s"
        )
    finally:
        first.kill()
        if second is not None:
            stop_cleanly(second)
        m.stop()


# --- out-of-order and too old -------------------------------------------------------------


def _outage_with_backfill(tmp_path: Path, m: Mimir, name: str) -> None:
    # Small requests: the backlog takes many, so fresh cycles go out while it drains.
    rw = {"order": "backfill", "max_samples_per_send": 100}
    agent = AgentProcess(config(tmp_path, m, name, remote_write=rw), tmp_path / "agent.log")
    try:
        wait_for(lambda: m.query("libvirt_up", name), 30, "the first cycles")
        m.stop()
        time.sleep(20)
        m.start()
        wait_for(lambda: caught_up(m, name), 60, "the backlog to drain")
        time.sleep(2 * INTERVAL)
    finally:
        stop_cleanly(agent)


def test_backfill_with_an_out_of_order_window_loses_nothing(
    guests: list[Guest], tmp_path: Path
) -> None:
    name = tenant()
    # (No ingestion throttle here: Mimir's Retry-After grows with each 429 of a request, and
    # a tenant throttled near the node's own rate keeps the backlog crawling for minutes.)
    m = Mimir(tmp_path / "mimir", overrides={name: {"out_of_order_time_window": "1h"}})
    try:
        _outage_with_backfill(tmp_path, m, name)
        assert holes(m.range_values("libvirt_up", name, 60)) == []
        for g in guests:
            assert m.query(f'{CPU}{{uuid="{g["uuid"]}"}}', name)
        assert rejected_or_dropped(m, name) == {}
    finally:
        m.stop()


def test_backfill_without_a_window_is_refused_as_out_of_order_and_counted(
    mimir: Mimir, tmp_path: Path
) -> None:
    # As the docs say: backfill needs the tenant's out-of-order window; without it, a backlog
    # that arrives behind fresher samples of its series is refused, and counted as rejected.
    # Made certain here: the fresher sample is in Mimir before the backlog is sent.
    name = tenant()
    ts_ms = _spool_an_old_cycle(tmp_path / "spool", 30)
    sender = Sender(RemoteWriteConfig(url=mimir.push_url, tenant=name, timeout=5.0))
    try:
        fresh = Encoder(10).encode([(OLD_KEY, 2.0)], int(time.time() * 1000))[0]
        assert sender.send(fresh.body).kind == "ok"
    finally:
        sender.close()
    cfg = config(tmp_path, mimir, name, libvirt={"uri": "test:///default"},
                 remote_write={"order": "backfill"})  # fmt: skip
    done = run_once(cfg, "--once")
    assert done.returncode == 1, done.stderr  # not everything was delivered
    assert "(400 sample-out-of-order)" in done.stderr
    assert "samples in rejected requests: {'sample-out-of-order': 1}" in done.stderr
    assert mimir.query("old_sample", name, at=ts_ms / 1000 + 1) == []
    assert mimir.query("libvirt_up", name)  # the fresh cycle went in


OLD_KEY = ("old_sample", (), (("cluster", "test-cluster"),))


def _spool_an_old_cycle(spool_dir: Path, age_s: float) -> int:
    """A cycle of one series, `age_s` old, in the spool as a previous run would leave it."""
    ts_ms = int((time.time() - age_s) * 1000)
    spool = Spool(str(spool_dir), 10**8)
    spool.put(Encoder(100).encode([(OLD_KEY, 1.0)], ts_ms))
    spool.close()
    return ts_ms


@pytest.mark.parametrize(
    ("max_age", "window", "expected"),
    [("1h", None, "dropped"),  # the agent's own horizon: never sent
     ("3h", None, "rejected"),  # Mimir's: more than an hour behind the tenant's newest
     ("3h", "3h", "stored")],  # the tenant's out-of-order window takes it
)  # fmt: skip
def test_a_sample_two_hours_old(
    tmp_path: Path, mimir: Mimir, max_age: str, window: str | None, expected: str
) -> None:
    name = tenant()
    if window:
        mimir.set_overrides({name: {"out_of_order_time_window": window}})
        time.sleep(3)  # read again within a second or two
    # Fresh data first: Mimir judges "too old" against the newest sample it has.
    fresh = run_once(config(tmp_path / "fresh", mimir, name,
                            libvirt={"uri": "test:///default"}), "--once")  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    ts_ms = _spool_an_old_cycle(tmp_path / "spool", 2 * 3600)
    cfg = config(tmp_path, mimir, name, libvirt={"uri": "test:///default"},
                 remote_write={"max_sample_age": max_age})  # fmt: skip
    done = run_once(cfg, "--once")
    stored = mimir.query("old_sample", name, at=ts_ms / 1000 + 1)
    if expected == "stored":
        assert done.returncode == 0 and stored, done.stderr
    elif expected == "dropped":
        assert done.returncode == 1 and not stored
        assert "dropped 1 sample(s) older than remote_write.max_sample_age" in done.stderr
    else:
        # Mimir kept the fresh cycle sent in the same request, and refused the old sample.
        assert done.returncode == 1 and not stored
        assert "(400 sample-timestamp-too-old)" in done.stderr
        assert mimir.query("libvirt_up", name)


# --- limits -------------------------------------------------------------------------------


def test_a_tenant_label_limit_is_learned_and_the_series_arrive_cut(
    guests: list[Guest], tmp_path: Path
) -> None:
    name = tenant()
    m = Mimir(tmp_path / "mimir", overrides={name: {"max_label_value_length": 100}})
    site = "s" * 150  # fits the agent's configured limit (2048), not the tenant's (100)
    cfg = config(tmp_path, m, name, external_labels={"cluster": "test-cluster", "site": site})
    try:
        agent = AgentProcess(cfg, tmp_path / "agent.log")
        try:
            wait_for(lambda: m.query(f'{CPU}{{site="{"s" * 100}"}}', name), 30,
                     "series with the label cut to the tenant's limit")  # fmt: skip
            limit = m.value('max(pusher_label_limit{limit="max_label_value_length"})', name)
            assert limit == 100
        finally:
            log = stop_cleanly(agent)
        assert "limits.max_label_value_length" in log  # said once, with the key to set
        assert log.count("keeping to 100 from now on") == 1
        assert m.query(f'{CPU}{{site="{site}"}}', name) == []  # never stored uncut
        for g in guests:
            assert m.query(f'{CPU}{{uuid="{g["uuid"]}"}}', name)
    finally:
        m.stop()


def test_a_request_over_mimirs_message_size_is_split_not_lost(
    guests: list[Guest], tmp_path: Path
) -> None:
    name = tenant()
    # Smaller than one cycle of the three guests: every request must be cut to fit.
    m = Mimir(tmp_path / "mimir", extra={"distributor": {"max_recv_msg_size": 12_000}})
    cfg = config(tmp_path, m, name, remote_write={"max_samples_per_send": 5000})
    try:
        done = run_once(cfg, "--once", timeout=120)
        # Exit 0: every sample delivered, none dropped or rejected.
        assert done.returncode == 0, done.stderr
        assert "receiver answered 400; splitting a request" in done.stderr
        for g in guests:
            assert m.query(f'{CPU}{{uuid="{g["uuid"]}"}}', name), g["name"]
    finally:
        m.stop()


# --- the dev stack's Mimir config ---------------------------------------------------------


def test_the_dev_stacks_mimir_config_runs_on_the_version_it_pins(tmp_path: Path) -> None:
    pinned = yaml.safe_load((REPO / "compose" / "dev.yml").read_text())
    assert pinned["services"]["mimir"]["image"] == "grafana/mimir:3.0.3"
    text = (REPO / "compose" / "mimir.yaml").read_text()
    text = text.replace("/data/", f"{tmp_path}/data/").replace("/etc/mimir/", f"{tmp_path}/etc/")
    (tmp_path / "etc" / "rules" / "openstack").mkdir(parents=True)
    (tmp_path / "etc" / "rules" / "openstack" / "libvirt-pusher.yml").write_text(
        (REPO / "deploy" / "alerts.yml").read_text()
    )
    cfg = yaml.safe_load(text)
    from mimir import free_port

    cfg["server"].update(http_listen_address="127.0.0.1", grpc_listen_address="127.0.0.1",
                         http_listen_port=free_port(), grpc_listen_port=free_port())  # fmt: skip
    cfg["memberlist"] = {"bind_addr": ["127.0.0.1"], "bind_port": free_port()}
    cfg["frontend"] = {"address": "127.0.0.1"}
    path = tmp_path / "mimir.yaml"
    path.write_text(yaml.safe_dump(cfg))
    m = Mimir.from_config(path, tmp_path)
    try:
        name = "openstack"
        done = run_once(config(tmp_path / "agent", m, name,
                               libvirt={"uri": "test:///default"}), "--once")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: m.query("libvirt_up", name), 30, "the push in Mimir")
    finally:
        m.stop(signal.SIGTERM)
