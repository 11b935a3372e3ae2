"""The collector under real trouble: a guest whose QEMU stops answering, libvirtd restarting."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agent import AgentProcess, wait_for, write_config
from guests import Guest
from receiver import Receiver

INTERVAL = 2.0
TIMEOUT = 1.0


def qemu_pid(name: str) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmdline
            and b"qemu-system" in cmdline[0]
            and f"guest={name},".encode() in b" ".join(cmdline)
        ):
            return int(entry)
    raise AssertionError(f"no QEMU process for {name}")


def _config(tmp_path: Path, receiver: Receiver) -> Path:
    collect = {"interval": f"{INTERVAL}s", "timeout": f"{TIMEOUT}s"}
    return write_config(tmp_path, receiver.write_url, collect=collect)


def _latest_ts(receiver: Receiver, metric: str, uuid: str) -> float:
    r = receiver.query(f'timestamp({metric}{{uuid="{uuid}"}})')
    return float(r[0]["value"][1]) if r else 0.0


def test_stuck_guest_never_stalls_the_cycle_and_is_counted(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    victim, others = guests[2], guests[:2]
    cpu = "libvirt_domain_info_cpu_time_seconds_total"
    config = _config(tmp_path, fresh_receiver)
    agent = AgentProcess(config, tmp_path / "agent.log")
    pid = qemu_pid(victim["name"])
    try:
        wait_for(lambda: _latest_ts(fresh_receiver, cpu, victim["uuid"]), 20, "first cycles")
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.time()
        time.sleep(4 * INTERVAL + 1)
        # The other guests went on being collected every interval.
        for g in others:
            assert _latest_ts(fresh_receiver, cpu, g["uuid"]) > time.time() - INTERVAL - 1.5
            n = fresh_receiver.query(f'count_over_time({cpu}{{uuid="{g["uuid"]}"}}[8s])')
            assert float(n[0]["value"][1]) >= 3
        # No cycle took longer than collect.timeout (plus the agent's own work).
        worst = fresh_receiver.query("max_over_time(pusher_collect_duration_seconds[8s])")
        assert float(worst[0]["value"][1]) < TIMEOUT + 0.5, worst
        print(f"longest cycle with one stuck guest: {float(worst[0]['value'][1]):.2f}s "
              f"(collect.timeout {TIMEOUT:g}s)")  # fmt: skip
        # The stuck guest is counted, and its series were not marked stale. If the agent's
        # call was the first to reach the stopped monitor, the guest is counted as timing
        # out; if another client's call got there first (it then holds the guest's job),
        # the agent's records for it are partial, and counted as such.
        stuck = fresh_receiver.query(
            f'libvirt_domain_stats_timeouts_total{{uuid="{victim["uuid"]}"}}'
        )
        kept = fresh_receiver.query("pusher_partial_records_kept_total")
        if stuck:
            assert float(stuck[0]["value"][1]) >= 2
            assert stuck[0]["metric"]["instance_name"] == victim["instance_name"]
            assert _latest_ts(fresh_receiver, cpu, victim["uuid"]) < stopped_at
        else:
            assert float(kept[0]["value"][1]) >= 2
        assert fresh_receiver.query(f'{cpu}{{uuid="{victim["uuid"]}"}}')  # still visible
        block = f'libvirt_domain_block_stats_read_requests_total{{uuid="{victim["uuid"]}"}}'
        assert fresh_receiver.query(block)  # not marked stale either
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed_at = time.time()
    try:
        wait_for(
            lambda: _latest_ts(fresh_receiver, cpu, victim["uuid"]) > resumed_at,
            30, "the guest's series to resume",
        )  # fmt: skip
    finally:
        assert agent.stop() == 0, agent.log()
    assert "Traceback" not in agent.log()


def test_libvirtd_restart_under_a_running_agent(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    config = _config(tmp_path, fresh_receiver)
    agent = AgentProcess(config, tmp_path / "agent.log")
    cpu = f'libvirt_domain_info_cpu_time_seconds_total{{uuid="{guests[0]["uuid"]}"}}'
    try:
        wait_for(lambda: fresh_receiver.query(cpu), 20, "first cycles")
        subprocess.run(["pkill", "-x", "libvirtd"], check=True)
        wait_for(lambda: fresh_receiver.query("libvirt_up == 0"), 20, "libvirt_up to go to 0")
        down_for_cycles = fresh_receiver.query("pusher_cycles_total")
        assert down_for_cycles  # the agent's own metrics go on while libvirt is away
        subprocess.run(["libvirtd", "-d"], check=True)
        restarted_at = time.time()
        wait_for(lambda: fresh_receiver.query("libvirt_up == 1"), 30, "libvirt_up back to 1")
        reconnected_after = time.time() - restarted_at
        wait_for(
            lambda: _latest_ts(fresh_receiver, "libvirt_domain_info_cpu_time_seconds_total",
                               guests[0]["uuid"]) > restarted_at,
            30, "guests' series to resume",
        )  # fmt: skip
    finally:
        subprocess.run(["sh", "-c", "pgrep -x libvirtd || libvirtd -d"], check=False)
        assert agent.stop() == 0, agent.log()
    log = agent.log()
    assert "Traceback" not in log
    assert "reconnecting" in log or "cannot connect" in log
    print(f"reconnected {reconnected_after:.1f}s after libvirtd came back")


def test_guest_busy_with_another_clients_job_is_partial_not_gone(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path, libvirt_uri: str
) -> None:
    victim = guests[1]
    block = f'libvirt_domain_block_stats_read_requests_total{{uuid="{victim["uuid"]}"}}'
    config = _config(tmp_path, fresh_receiver)
    agent = AgentProcess(config, tmp_path / "agent.log")
    pid = qemu_pid(victim["name"])
    holder = None
    try:
        wait_for(lambda: fresh_receiver.query(block), 20, "first cycles")
        # Another client's call gets stuck inside the guest's job; the agent's NOWAIT
        # calls then come back quickly with that guest's record lacking the monitor's groups.
        os.kill(pid, signal.SIGSTOP)
        holder = subprocess.Popen(["virsh", "-c", libvirt_uri, "domstats", victim["name"]],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(4 * INTERVAL)
        partial = fresh_receiver.query("pusher_partial_records_total")
        assert partial and float(partial[0]["value"][1]) >= 2
        # Asked again waiting for the job, which the stuck holder keeps: still partial.
        kept = fresh_receiver.query("pusher_partial_records_kept_total")
        assert float(kept[0]["value"][1]) >= 2
        # No stale marker: the block series is still there, with its last value.
        assert fresh_receiver.query(block)
        assert fresh_receiver.query(
            f'libvirt_domain_state_code{{uuid="{victim["uuid"]}"}}'
        )  # and what needs no job went on
    finally:
        os.kill(pid, signal.SIGCONT)
        if holder is not None:
            holder.wait(timeout=60)
        assert agent.stop() == 0, agent.log()
    assert "Traceback" not in agent.log()


def test_job_info_shows_a_running_dump_with_its_progress(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    """collect.job_info on: a real libvirt job (a memory-only dump into a FIFO read slowly,
    so it lasts seconds) shows as operation 8 with its progress; the idle guests as no job."""
    victim, others = guests[0], guests[1:]
    collect = {"interval": f"{INTERVAL}s", "timeout": f"{TIMEOUT}s", "job_info": True}
    agent = AgentProcess(
        write_config(tmp_path, fresh_receiver.write_url, collect=collect), tmp_path / "agent.log"
    )
    # libvirtd opens the dump's file: a directory it can reach, not the test's 0700 tmp_path.
    fifo_dir = Path(tempfile.mkdtemp(prefix="pusher-job-"))
    fifo_dir.chmod(0o755)
    fifo = fifo_dir / "dump"
    os.mkfifo(fifo, 0o666)
    stop_reading = threading.Event()

    def read_slowly() -> None:  # about 1 MiB per 0.2 s: a 64 MiB guest takes ~13 s
        with open(fifo, "rb") as f:
            while f.read(1 << 20) and not stop_reading.is_set():
                time.sleep(0.2)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    dump: subprocess.Popen[bytes] | None = None
    op = f'libvirt_domain_job_operation{{uuid="{victim["uuid"]}"}}'
    try:
        wait_for(lambda: fresh_receiver.query("libvirt_domain_job_type"), 20, "job series")
        for g in others:
            idle = fresh_receiver.query(f'libvirt_domain_job_type{{uuid="{g["uuid"]}"}}')
            assert float(idle[0]["value"][1]) == 0.0
        dump = subprocess.Popen(
            ["virsh", "-c", "qemu:///system", "dump", victim["name"], str(fifo),
             "--memory-only", "--live"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        seen = wait_for(lambda: fresh_receiver.query(f"{op} == 8"), 15, "the dump job")
        assert float(seen[0]["value"][1]) == 8.0
        total = fresh_receiver.query(
            f'libvirt_domain_job_memory_total_bytes{{uuid="{victim["uuid"]}"}}'
        )
        assert total and float(total[0]["value"][1]) >= 32 * 2**20  # the guest's RAM, in bytes
        elapsed = fresh_receiver.query(
            f'libvirt_domain_job_time_elapsed_seconds{{uuid="{victim["uuid"]}"}}'
        )
        assert elapsed and 0 <= float(elapsed[0]["value"][1]) < 60  # seconds, not ms
        errors = fresh_receiver.query("pusher_job_info_errors_total")
        assert errors and float(errors[0]["value"][1]) == 0.0
        assert float(fresh_receiver.query(f'libvirt_domain_job_type{{uuid="{victim["uuid"]}"}}')
                     [0]["value"][1]) == 2.0  # fmt: skip  # unbounded
    finally:
        stop_reading.set()  # the reader closes the FIFO: a dump still running fails at once
        if dump is None:  # release a reader still waiting in open() for a writer
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        else:
            try:
                dump.communicate(timeout=60)  # the dump fails on the closed FIFO and ends
            except subprocess.TimeoutExpired:
                dump.kill()
                dump.communicate()
        reader.join(60)
        shutil.rmtree(fifo_dir, ignore_errors=True)
        assert agent.stop() == 0, agent.log()
    assert "Traceback" not in agent.log()


# Every mode exits within collect.timeout + shutdown_grace (plus a second) whatever libvirt
# calls still hang; Python's own start and the first connection get the allowance below.
EXIT_TIMEOUT = 1.0
EXIT_GRACE = 2.0
START_ALLOWANCE = 2.0


def _stuck_config(tmp_path: Path, url: str) -> Path:
    collect = {"interval": "2s", "timeout": f"{EXIT_TIMEOUT:g}s"}
    return write_config(tmp_path, url, collect=collect, shutdown_grace=f"{EXIT_GRACE:g}s")


def _timed(args: list[str], limit: float) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=limit + 60)
    return time.monotonic() - start, done


def test_every_mode_exits_on_time_while_a_guest_is_stuck(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    victim = guests[1]
    pid = qemu_pid(victim["name"])
    limit = EXIT_TIMEOUT + EXIT_GRACE + 1.0 + START_ALLOWANCE
    config = _stuck_config(tmp_path, fresh_receiver.write_url)
    base = [sys.executable, "-m", "pusher", "-c", str(config)]
    os.kill(pid, signal.SIGSTOP)
    holder: subprocess.Popen[bytes] | None = None
    try:
        # A call of another client gets the stopped monitor first, as in production where
        # the guest is stuck before the agent asks (it then holds the guest's job).
        holder = subprocess.Popen(
            ["virsh", "-c", "qemu:///system", "domstats", victim["name"]],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        took_dry, dry = _timed([*base, "--dry-run"], limit)
        assert dry.returncode == 0, dry.stderr
        assert took_dry < limit, f"--dry-run took {took_dry:.1f}s"
        assert f'uuid="{guests[0]["uuid"]}"' in dry.stdout
        took_once, once = _timed([*base, "--once"], limit)
        assert once.returncode == 0, once.stderr
        assert took_once < limit, f"--once took {took_once:.1f}s"
        agent = AgentProcess(config, tmp_path / "agent.log")
        wait_for(lambda: fresh_receiver.query("libvirt_up"), 20, "the agent's first cycles")
        time.sleep(3)  # a few cycles with the stuck guest
        start = time.monotonic()
        status = agent.stop(timeout=limit + 30)
        took = time.monotonic() - start
        assert status == 0, agent.log()
        assert took < EXIT_TIMEOUT + EXIT_GRACE + 1.0, f"SIGTERM to exit took {took:.1f}s"
        print(f"exits with a stuck guest: --dry-run {took_dry:.2f}s, --once {took_once:.2f}s, "
              f"serve {took:.2f}s after SIGTERM")  # fmt: skip
        assert "Traceback" not in agent.log()
        assert (tmp_path / "spool" / "spool.db").exists()
    finally:
        os.kill(pid, signal.SIGCONT)
        if holder is not None:
            holder.wait(60)
