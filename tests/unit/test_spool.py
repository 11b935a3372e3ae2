"""pusher.spool: the SQLite queue of request bodies, on a real file system."""

from __future__ import annotations

import os
import random
import re
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pusher.encode import Request
from pusher.spool import DB_NAME, Spool, SpoolError
from pusher.spooldb import PAGE_SIZE, WAL_MIN, WAL_SHARE


def req(samples: int, ts_ms: int | None = None, size: int = 100) -> Request:
    """A request body whose bytes say which request it is."""
    ts = ts_ms if ts_ms is not None else samples
    body = f"{samples}:{ts}:".encode().ljust(size, b".")
    return Request(body, samples, ts)


@pytest.fixture
def spool_dir(tmp_path: Path) -> str:
    return str(tmp_path / "spool")


@pytest.fixture
def opened() -> Iterator[list[Spool]]:
    spools: list[Spool] = []
    yield spools
    for s in spools:
        s.close()


def open_spool(opened: list[Spool], directory: str, max_bytes: int = 10**7) -> Spool:
    spool = Spool(directory, max_bytes, fsync=False)
    opened.append(spool)
    return spool


def disk_full(spool: Spool) -> None:
    """Make SQLite answer every growth of the file with 'database or disk is full'."""
    (pages,) = spool._db.execute("PRAGMA page_count").fetchone()
    spool._db.execute(f"PRAGMA max_page_count = {pages}")


def disk_ok(spool: Spool) -> None:
    spool._db.execute("PRAGMA max_page_count = 1073741823")


def corrupt_files(directory: str) -> list[str]:
    """The damaged databases moved aside (not their -wal and -shm companions)."""
    pattern = re.compile(re.escape(DB_NAME) + r"\.corrupt-\d{8}T\d{6}-\d+(\.\d+)?")
    return [n for n in os.listdir(directory) if pattern.fullmatch(n)]


# --- order -------------------------------------------------------------------------------


def test_rows_come_back_in_the_order_they_were_put(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(10), req(20)])
    spool.put([req(30)])
    rows = spool.peek(1000)
    assert [r.samples for r in rows] == [10, 20, 30]
    assert [r.body for r in rows] == [req(10).body, req(20).body, req(30).body]
    assert [r.ts_ms for r in rows] == [10, 20, 30]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert all(r.id > 0 for r in rows)


def test_peek_does_not_remove(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(10)])
    assert spool.peek(100) == spool.peek(100)


def test_peek_respects_max_samples_but_returns_at_least_one_row(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(10), req(20), req(30)])
    assert [r.samples for r in spool.peek(30)] == [10, 20]
    assert [r.samples for r in spool.peek(29)] == [10]
    assert [r.samples for r in spool.peek(5)] == [10]  # larger than the limit, still returned
    assert [r.samples for r in spool.peek(60)] == [10, 20, 30]


def test_remove_acknowledges_from_the_front(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(1), req(2), req(3)])
    first = spool.peek(2)
    assert [r.samples for r in first] == [1]
    spool.remove(first)
    assert [r.samples for r in spool.peek(100)] == [2, 3]
    spool.remove(spool.peek(100))
    assert spool.peek(100) == []
    assert spool.stats()[0::2] == (0, None)


def test_stats_count_requests_bytes_and_the_oldest_timestamp(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    requests, empty, oldest = spool.stats()  # bytes: the file's pages in use
    assert (requests, oldest) == (0, None) and 0 < empty <= 8 * PAGE_SIZE
    spool.put([req(5, ts_ms=1_000, size=3_000), req(6, ts_ms=2_000, size=5_000)])
    requests, used, oldest = spool.stats()
    assert (requests, oldest) == (2, 1_000)
    assert empty + 8_000 <= used <= empty + 8_000 + 4 * PAGE_SIZE


def test_empty_put_is_a_no_op(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([])
    assert spool.stats()[0::2] == (0, None)


def test_rows_survive_close_and_reopen_in_the_same_order(spool_dir, opened) -> None:
    spool = Spool(spool_dir, 10**7, fsync=True)
    spool.put([req(1), req(2)])
    spool.remove(spool.peek(1))
    spool.put([req(3), req(4)])
    before = spool.peek(1000)
    spool.close()
    again = open_spool(opened, spool_dir)
    after = again.peek(1000)
    assert after == before
    assert [r.samples for r in after] == [2, 3, 4]
    assert again.take_drops() == {}
    again.put([req(5)])
    assert [r.samples for r in again.peek(1000)] == [2, 3, 4, 5]


# --- the byte cap ------------------------------------------------------------------------


# The cap holds the file's pages in use (PAGE_SIZE each): an empty spool takes a few, a
# body of 3,000 bytes about three more.
CAP = 24 * PAGE_SIZE


def test_cap_drops_the_oldest_and_counts_their_samples(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir, max_bytes=CAP)
    for samples in range(1, 11):
        spool.put([req(samples, size=3_000)])
    kept = [r.samples for r in spool.peek(1000)]
    assert 3 <= len(kept) < 10 and kept == list(range(11 - len(kept), 11))  # the newest
    assert spool.stats()[0] == len(kept) and spool.stats()[1] <= CAP
    assert spool.take_drops() == {"spool_full": sum(range(1, 11 - len(kept)))}
    assert spool.take_drops() == {}  # read and reset


def test_cap_applies_within_one_cycle_too(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir, max_bytes=CAP)
    spool.put([req(s, size=3_000) for s in range(1, 11)])
    kept = [r.samples for r in spool.peek(1000)]
    assert 3 <= len(kept) < 10 and kept == list(range(11 - len(kept), 11))
    assert spool.take_drops() == {"spool_full": sum(range(1, 11 - len(kept)))}


def test_bodies_within_the_cap_are_all_kept(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir, max_bytes=CAP)
    spool.put([req(s, size=3_000) for s in (1, 2, 3)])
    assert [r.samples for r in spool.peek(1000)] == [1, 2, 3]
    assert spool.take_drops() == {}


# --- checksums and damaged files ---------------------------------------------------------


def tamper(directory: str, row_id: int) -> None:
    db = sqlite3.connect(os.path.join(directory, DB_NAME))
    with db:
        db.execute("UPDATE requests SET body = ? WHERE id = ?", (b"tampered" * 10, row_id))
    db.close()


def test_row_altered_on_disk_is_dropped_on_open_and_counted(spool_dir, opened) -> None:
    spool = Spool(spool_dir, 10**7, fsync=False)
    spool.put([req(10), req(20), req(30)])
    ids = [r.id for r in spool.peek(100)]
    spool.close()
    tamper(spool_dir, ids[1])
    again = open_spool(opened, spool_dir)
    assert [r.samples for r in again.peek(100)] == [10, 30]
    assert again.take_drops() == {"spool_corrupt": 20}


def test_a_dropped_corrupt_row_is_counted_only_once(spool_dir, opened) -> None:
    spool = Spool(spool_dir, 10**7, fsync=False)
    spool.put([req(10), req(20), req(30)])
    ids = [r.id for r in spool.peek(100)]
    spool.close()
    tamper(spool_dir, ids[1])
    second = Spool(spool_dir, 10**7, fsync=False)
    assert second.take_drops() == {"spool_corrupt": 20}
    second.close()
    third = open_spool(opened, spool_dir)
    assert third.take_drops() == {}


def test_another_process_reads_the_spool_while_it_is_open(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(10), req(20)])
    code = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], timeout=0);"
        "print(*db.execute('SELECT COUNT(*), SUM(samples) FROM requests').fetchone())"
    )
    path = os.path.join(spool_dir, DB_NAME)
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
    assert (out.returncode, out.stdout.split()) == (0, ["2", "30"]), out.stderr
    spool.put([req(5)])  # and the agent goes on writing afterwards
    assert [r.samples for r in spool.peek(100)] == [10, 20, 5]


def test_a_reader_holding_a_snapshot_neither_blocks_nor_breaks_writes(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir, max_bytes=10**7)
    reader = sqlite3.connect(os.path.join(spool_dir, DB_NAME), isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM requests").fetchone()  # holds a read snapshot
        started = time.monotonic()
        for i in range(40):  # the WAL outgrows its share: checkpoints are tried, and wait not
            spool.put([req(1 + i, size=4_000)])
        assert time.monotonic() - started < 2
        assert reader.execute("SELECT COUNT(*) FROM requests").fetchone() == (0,)
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert len(spool.peek(10**6)) == 40
    spool.put([req(99)])  # the next commit's checkpoint goes through
    wal = os.path.getsize(os.path.join(spool_dir, DB_NAME + "-wal"))
    assert wal <= max(WAL_MIN, os.path.getsize(os.path.join(spool_dir, DB_NAME)) // WAL_SHARE)


def test_row_altered_while_open_is_dropped_by_peek_and_counted(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(10), req(20), req(30)])
    ids = [r.id for r in spool.peek(100)]
    tamper(spool_dir, ids[0])
    assert [r.samples for r in spool.peek(100)] == [20, 30]
    assert spool.take_drops() == {"spool_corrupt": 10}


def fill(directory: str, rows: int = 20, samples: int = 10) -> None:
    spool = Spool(directory, 10**8, fsync=False)
    spool.put([Request(bytes([i]) * 3000, samples, 1_000 + i) for i in range(rows)])
    spool.close()


def assert_usable(spool: Spool) -> None:
    spool.put([req(7)])
    assert spool.peek(1000)[-1].body == req(7).body


def test_garbage_spool_file_is_moved_aside_and_a_new_one_used(spool_dir, opened) -> None:
    os.makedirs(spool_dir, mode=0o700)
    Path(spool_dir, DB_NAME).write_bytes(random.Random(7).randbytes(16384))
    spool = open_spool(opened, spool_dir)
    assert len(corrupt_files(spool_dir)) == 1
    assert spool.peek(100) == []
    assert_usable(spool)
    # Nothing readable, so nothing known to count.
    assert spool.take_drops() == {}


def test_truncated_spool_file_is_moved_aside_and_the_spool_opens(spool_dir, opened) -> None:
    fill(spool_dir)
    path = os.path.join(spool_dir, DB_NAME)
    os.truncate(path, os.path.getsize(path) // 2)
    spool = open_spool(opened, spool_dir)
    assert len(corrupt_files(spool_dir)) == 1
    assert_usable(spool)


def test_truncated_spool_file_keeps_its_readable_rows(spool_dir, opened) -> None:
    fill(spool_dir)
    path = os.path.join(spool_dir, DB_NAME)
    os.truncate(path, os.path.getsize(path) // 2)
    spool = open_spool(opened, spool_dir)
    kept = [r.ts_ms for r in spool.peek(10**6)]
    assert kept, "no readable row was kept"
    assert kept == list(range(1_000, 1_000 + len(kept)))  # the front survives, in order
    assert spool.take_drops() == {"spool_corrupt": 10 * (20 - len(kept))}


def test_garbage_pages_inside_the_file_lose_only_their_rows(spool_dir, opened) -> None:
    fill(spool_dir)
    path = os.path.join(spool_dir, DB_NAME)
    with open(path, "r+b") as f:
        f.seek(4096 * 15)
        f.write(random.Random(3).randbytes(4096 * 3))
    spool = open_spool(opened, spool_dir)
    assert len(corrupt_files(spool_dir)) == 1
    kept = [r.ts_ms for r in spool.peek(10**6)]
    assert 0 < len(kept) < 20
    assert kept == sorted(kept)
    assert set(kept) <= set(range(1_000, 1_020))
    assert spool.take_drops() == {"spool_corrupt": 10 * (20 - len(kept))}
    assert_usable(spool)


def test_salvage_counts_a_checksum_failure_once(spool_dir, opened) -> None:
    fill(spool_dir)
    tamper(spool_dir, 2)  # the row of ts 1_001
    path = os.path.join(spool_dir, DB_NAME)
    with open(path, "r+b") as f:
        f.seek(4096 * 15)
        f.write(random.Random(3).randbytes(4096 * 3))
    spool = open_spool(opened, spool_dir)
    kept = [r.ts_ms for r in spool.peek(10**6)]
    assert 1_001 not in kept
    assert 0 < len(kept) < 19
    assert spool.take_drops() == {"spool_corrupt": 10 * (20 - len(kept))}


@pytest.mark.parametrize(
    ("column", "value", "counted"),
    [("body", "text where bytes were", 10), ("crc", "x", 10), ("samples", "ten", 0)],
)
def test_a_column_of_the_wrong_type_is_a_damaged_row_not_a_crash(
    spool_dir, opened, column: str, value: object, counted: int
) -> None:
    # A damaged page can read back as any SQLite type; opening must still work, and the row
    # is dropped as damaged (its samples counted when the count itself is readable).
    fill(spool_dir, rows=3)
    db = sqlite3.connect(os.path.join(spool_dir, DB_NAME))
    with db:
        db.execute(f"UPDATE requests SET {column} = ? WHERE id = 2", (value,))
    db.close()
    spool = open_spool(opened, spool_dir)
    assert [r.ts_ms for r in spool.peek(10**6)] == [1_000, 1_002]
    assert spool.take_drops() == {"spool_corrupt": counted}
    assert_usable(spool)


# --- permissions -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o770, 0o720, 0o707, 0o702, 0o777])
def test_group_or_world_writable_directory_is_refused(tmp_path, mode: int) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(SpoolError, match="writable by group or others"):
        Spool(str(directory), 10**6)


def test_a_directory_that_cannot_be_created_is_a_spool_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError):
        Spool(str(blocker / "spool"), 10**6)
    with pytest.raises(SpoolError):
        Spool(str(blocker), 10**6)


def test_a_readable_but_not_writable_by_others_directory_is_accepted(tmp_path, opened) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    directory.chmod(0o755)
    open_spool(opened, str(directory)).put([req(1)])


def test_directory_is_created_0700_and_the_database_0600(spool_dir, opened) -> None:
    old = os.umask(0o022)
    try:
        spool = open_spool(opened, os.path.join(spool_dir, "nested"))
        spool.put([req(1)])
    finally:
        os.umask(old)
    directory = os.path.join(spool_dir, "nested")
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(directory, DB_NAME)).st_mode) == 0o600


def test_every_spool_file_is_0600(spool_dir, opened) -> None:
    old = os.umask(0o022)
    try:
        spool = open_spool(opened, spool_dir)
        spool.put([req(1)])
    finally:
        os.umask(old)
    names = sorted(os.listdir(spool_dir))
    assert {DB_NAME + "-wal", DB_NAME + "-shm"} <= set(names)
    modes = {n: oct(stat.S_IMODE(os.stat(os.path.join(spool_dir, n)).st_mode)) for n in names}
    assert modes == dict.fromkeys(names, oct(0o600))


# --- a disk that refuses writes ----------------------------------------------------------


def test_unwritable_file_holds_bodies_in_memory_behind_the_file_rows(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(1), req(2)])
    disk_full(spool)
    spool.put([req(3, size=20_000)])  # does not raise
    spool.put([req(4, size=20_000)])
    requests, nbytes, oldest = spool.stats()  # the file's pages, and the bodies in memory
    assert (requests, oldest) == (4, 1) and nbytes >= 40_200

    first = spool.peek(1000)
    assert [(r.samples, r.id > 0) for r in first] == [(1, True), (2, True)]
    spool.remove(first)

    held = spool.peek(1000)
    assert [(r.samples, r.id < 0) for r in held] == [(3, True), (4, True)]
    assert [r.body for r in held] == [req(3, size=20_000).body, req(4, size=20_000).body]
    assert spool.take_drops() == {}


def test_bodies_held_in_memory_move_into_the_file_once_it_takes_writes(spool_dir) -> None:
    spool = Spool(spool_dir, 10**7, fsync=False)
    spool.put([req(1)])
    disk_full(spool)
    spool.put([req(2, size=20_000), req(3, size=20_000)])
    assert all(r.id > 0 for r in spool.peek(1000))  # only the file's row so far
    disk_ok(spool)
    spool.put([req(4)])
    rows = spool.peek(1000)
    assert [r.samples for r in rows] == [1, 2, 3, 4]
    assert all(r.id > 0 for r in rows)
    spool.close()

    reopened = Spool(spool_dir, 10**7, fsync=False)
    try:
        assert [r.samples for r in reopened.peek(1000)] == [1, 2, 3, 4]
    finally:
        reopened.close()


def test_bodies_held_in_memory_can_be_acknowledged(spool_dir, opened) -> None:
    spool = open_spool(opened, spool_dir)
    disk_full(spool)
    spool.put([req(5, size=20_000), req(6, size=20_000)])
    held = spool.peek(5)
    assert [(r.samples, r.id < 0) for r in held] == [(5, True)]
    spool.remove(held)
    assert [r.samples for r in spool.peek(100)] == [6]
    spool.remove(spool.peek(100))
    assert spool.stats()[0::2] == (0, None)


def test_claimed_rows_go_to_one_lane_only_until_released(opened, spool_dir) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(10, ts_ms=1000), req(10, ts_ms=2000), req(10, ts_ms=3000)])
    first = spool.peek(10, claim=True)
    second = spool.peek(10, claim=True)
    assert [r.ts_ms for r in first] == [1000]
    assert [r.ts_ms for r in second] == [2000]
    spool.release(first)
    assert [r.ts_ms for r in spool.peek(10, claim=True)] == [1000]


def test_time_window_selects_fresh_and_backlog_rows(opened, spool_dir) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(10, ts_ms=1000), req(10, ts_ms=2000), req(10, ts_ms=3000)])
    assert [r.ts_ms for r in spool.peek(100, since_ms=2000)] == [2000, 3000]
    assert [r.ts_ms for r in spool.peek(100, before_ms=2000)] == [1000]


def test_rows_acknowledged_out_of_order_are_gone_and_the_front_follows(opened, spool_dir) -> None:
    spool = open_spool(opened, spool_dir)
    spool.put([req(10, ts_ms=t) for t in (1000, 2000, 3000)])
    newest = spool.peek(100, since_ms=3000, claim=True)
    spool.remove(newest)  # the fresh lane delivered the newest first
    assert [r.ts_ms for r in spool.peek(100)] == [1000, 2000]
    spool.remove(spool.peek(100))
    assert spool.peek(100) == []
    assert spool.stats()[0] == 0
    spool.close()
    reopened = open_spool(opened, spool_dir)
    assert reopened.peek(100) == []
    assert reopened.take_drops() == {}
