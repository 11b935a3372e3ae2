"""The spool: every request body is stored here before its first send, removed after a 2xx.

SQLite in WAL mode (`<buffer.path>/spool.db`), one row per request body, in the order the
cycles produced them; the row id is that order. Invariants:

- rows leave from the front (acknowledged, or dropped and counted): a watermark in memory
  marks the acknowledged prefix, so nothing is read twice even while a delete cannot be made;
- every body carries a CRC32: a row whose body does not match is dropped and counted;
- the bodies add up to at most `max_bytes`: the oldest go first, counted as `spool_full`;
- with `fsync` on (the default), SQLite syncs the WAL at every commit (synchronous=FULL): a
  committed cycle survives `kill -9` and power loss, for one fsync per cycle.

When the disk is full or the file cannot be written, new bodies wait in memory (bounded; the
oldest go first, counted as `spool_unwritable`) and move into the file as soon as it takes
writes again. Acknowledged rows are behind a watermark kept in memory (`_acked`), so even
when a full disk refuses to delete them they are never sent again; the deletion is retried.
A database that cannot be opened or fails its integrity check is moved aside,
what can still be read from it is copied into a new one, and the rest is counted as
`spool_corrupt`.

In the order below: `_Overflow` (the bodies waiting in memory), the functions that open,
check and salvage the database, the one that makes room in it, and `Spool`, which holds the
watermark, the lock and the connection.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from pusher.catalog import Reading, reading
from pusher.encode import Request

__all__ = ["Row", "Spool", "SpoolError"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms   INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    crc     INTEGER NOT NULL,
    body    BLOB    NOT NULL,
    proto   INTEGER NOT NULL DEFAULT 1  -- the body's remote-write version: 1 or 2
)
"""
DB_NAME = "spool.db"
_INSERT = "INSERT INTO requests (ts_ms, samples, crc, body, proto) VALUES (?, ?, ?, ?, ?)"
# Bodies kept in memory while the file refuses writes.
MEMORY_OVERFLOW_BYTES = 64 * 1024 * 1024


class SpoolError(Exception):
    """The spool directory is unusable (not creatable, unsafe permissions)."""


@dataclass(frozen=True)
class Row:
    id: int  # negative for bodies waiting in memory
    ts_ms: int
    samples: int
    body: bytes
    proto: int = 1


class _Overflow:
    """Bodies waiting in memory while the file refuses writes, oldest first.

    Its own piece because it lives by other rules than the file: negative ids (handed out
    here, so they never meet a file row's), and a byte total and a bound of its own
    (`MEMORY_OVERFLOW_BYTES`). It counts nothing itself: what it drops it hands back, and
    the spool decides under which reason. Not locked: the spool's lock guards it.
    """

    def __init__(self) -> None:
        self._rows: collections.deque[Row] = collections.deque()
        self.bytes = 0
        self._next_id = -1

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)

    def add(self, requests: Sequence[Request]) -> None:
        rows = []
        for r in requests:
            rows.append(Row(self._next_id, r.ts_ms, r.samples, r.body, r.proto))
            self._next_id -= 1
        self._rows.extend(rows)
        self.bytes += sum(len(r.body) for r in rows)

    def oldest_ts(self) -> int | None:
        return self._rows[0].ts_ms if self._rows else None

    def clear(self) -> None:
        """Everything moved into the file."""
        self._rows.clear()
        self.bytes = 0

    def drop_oldest(self, limit: int) -> list[Row]:
        """Drop the oldest bodies until at most `limit` bytes remain; returns them."""
        dropped = []
        while self._rows and self.bytes > limit:
            row = self._rows.popleft()
            self.bytes -= len(row.body)
            dropped.append(row)
        return dropped

    def discard(self, ids: set[int]) -> None:
        """Forget acknowledged bodies, wherever they are in the line."""
        kept = [r for r in self._rows if r.id not in ids]
        self._rows = collections.deque(kept)
        self.bytes = sum(len(r.body) for r in kept)

    def peek(self, max_samples: int, lo: int, hi: int, claimed: set[int]) -> list[Row]:
        """The memory's part of `Spool.peek`, by the same rules."""
        rows: list[Row] = []
        total = 0
        for row in self._rows:
            if row.id in claimed or not lo <= row.ts_ms < hi:
                continue
            if rows and total + row.samples > max_samples:
                break
            rows.append(row)
            total += row.samples
        return rows


# --- opening and recovery
#
# Functions rather than Spool methods: they run once, before the spool has any state but the
# path, and what they count goes into the `drops` counter they are handed.


def _prepare_directory(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.stat(directory)
    except OSError as e:
        raise SpoolError(f"buffer.path {directory}: {e.strerror}") from None
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SpoolError(
            f"buffer.path {directory} is writable by group or others; "
            "refusing to keep data there (chmod 700 it)"
        )


def _connect(path: str, fsync: bool) -> sqlite3.Connection:
    # Create the file 0600 before SQLite does: its -wal and -shm files take its mode.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    db.execute(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    if "proto" not in columns:  # a spool written before 2.0 bodies existed
        db.execute("ALTER TABLE requests ADD COLUMN proto INTEGER NOT NULL DEFAULT 1")
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return db


def _open(path: str, fsync: bool, drops: collections.Counter[str]) -> sqlite3.Connection:
    """Open the database and check it; a damaged one is moved aside and salvaged."""
    db: sqlite3.Connection | None = None
    try:
        db = _connect(path, fsync)
        result = db.execute("PRAGMA quick_check").fetchone()[0]
        if result == "ok":
            _check_rows(db, drops)
            return db
        problem = f"integrity check: {result}"
    except sqlite3.DatabaseError as e:
        problem = str(e)
    if db is not None:
        db.close()
    return _recover(path, fsync, problem, drops)


def _intact(body: object, crc: object) -> bool:
    """Whether a row's body matches its CRC. A damaged page can hand back any type (NULL, a
    string) in any column: such a row fails the check instead of crashing the reader."""
    return isinstance(body, bytes) and isinstance(crc, int) and zlib.crc32(body) == crc


def _samples(value: object) -> int:
    """A row's sample count, or 0 when damage left something else in the column."""
    return value if isinstance(value, int) and value >= 0 else 0


def _check_rows(db: sqlite3.Connection, drops: collections.Counter[str]) -> None:
    """Drop rows whose body fails its CRC, counting their samples."""
    bad: list[tuple[int, int]] = []
    for rid, samples, crc, body in db.execute(
        "SELECT id, samples, crc, body FROM requests ORDER BY id"
    ):
        if not _intact(body, crc):
            bad.append((rid, _samples(samples)))
    if bad:
        db.executemany("DELETE FROM requests WHERE id = ?", [(r,) for r, _ in bad])
        drops["spool_corrupt"] += sum(s for _, s in bad)
        log.error("spool: %d request(s) failed their checksum and were dropped", len(bad))


def _aside_path(path: str) -> str:
    """A name for the damaged database that no earlier one took."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    n = 1
    while os.path.exists(aside if n == 1 else f"{aside}.{n}"):
        n += 1
    return aside if n == 1 else f"{aside}.{n}"


def _recover(
    path: str, fsync: bool, problem: str, drops: collections.Counter[str]
) -> sqlite3.Connection:
    aside = _aside_path(path)
    log.error("spool %s is damaged (%s); moving it to %s and salvaging", path, problem, aside)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    db = _connect(path, fsync)
    kept, lost = _salvage(aside, db, drops)
    log.error("spool: salvaged %d request(s); %d unreadable", kept, lost)
    return db


def _salvage(
    old_path: str, new: sqlite3.Connection, drops: collections.Counter[str]
) -> tuple[int, int]:
    """Copy every readable, checksum-valid row of a damaged database into `new`."""
    try:
        old = sqlite3.connect(f"file:{old_path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.DatabaseError:
        return 0, 0
    # A truncated file's header promises more pages than there are, and SQLite then
    # refuses every query; with the schema treated as writable it reads what is there.
    with contextlib.suppress(sqlite3.DatabaseError):
        old.execute("PRAGMA writable_schema=ON")
    proto = _proto_column(old)
    with old:
        kept_samples, lost, unreadable = _copy_rows(old, new, proto, drops)
    if unreadable and kept_samples:
        # How many samples an unreadable row held is unknown: count the average row.
        avg = sum(kept_samples) // len(kept_samples)
        drops["spool_corrupt"] += avg * unreadable
    old.close()
    return len(kept_samples), lost + unreadable


def _proto_column(old: sqlite3.Connection) -> str:
    """What to select for a row's version: its column, or 1 in a spool from before 2.0."""
    try:
        columns = {r[1] for r in old.execute("PRAGMA table_info(requests)")}
    except sqlite3.DatabaseError:
        columns = set()
    return "proto" if "proto" in columns else "1"


def _copy_rows(
    old: sqlite3.Connection, new: sqlite3.Connection, proto: str, drops: collections.Counter[str]
) -> tuple[list[int], int, int]:
    """Copy rows one at a time in id order, stepping over those that cannot be read.

    Returns the samples of each row kept, the rows that failed their checksum (counted in
    `drops`) and the rows that could not be read (counted by the caller).
    """
    kept_samples: list[int] = []
    lost = unreadable = 0
    after = -1
    bound = _max_id(old)
    while after < bound:
        try:
            row = old.execute(
                f"SELECT id, ts_ms, samples, crc, body, {proto} FROM requests "
                "WHERE id > ? ORDER BY id LIMIT 1",
                (after,),
            ).fetchone()
        except sqlite3.DatabaseError:
            after += 1  # step over a row we cannot read
            unreadable += 1
            continue
        if row is None:
            break
        rid, ts_ms, samples, crc, body, version = row
        if _intact(body, crc) and _samples(samples) == samples and isinstance(ts_ms, int):
            new.execute(_INSERT, (ts_ms, samples, crc, body, version))
            kept_samples.append(samples)
        else:
            lost += 1
            drops["spool_corrupt"] += _samples(samples)
        after = rid
    return kept_samples, lost, unreadable


def _max_id(db: sqlite3.Connection) -> int:
    for query in (
        "SELECT seq FROM sqlite_sequence WHERE name = 'requests'",
        "SELECT MAX(id) FROM requests",
    ):
        try:
            row = db.execute(query).fetchone()
            if row and row[0] is not None:
                return int(row[0])
        except sqlite3.DatabaseError:
            continue
    return 0


# --- the file's rows


def _delete_oldest(db: sqlite3.Connection, acked: int, over: int) -> tuple[int, int]:
    """Delete the oldest rows past the watermark `acked` until `over` bytes are freed, or
    none are left; returns (bytes freed, samples dropped).

    Apart from `Spool._make_room` so that the spool decides what the shortfall means (the
    cycle itself is too big) and how the drop is counted; this only picks and deletes.
    """
    freed = dropped = 0
    cur = db.execute(
        "SELECT id, samples, LENGTH(body) FROM requests WHERE id > ? ORDER BY id",
        (acked,),
    )
    last_id = None
    for rid, samples, size in cur:
        if freed >= over:
            break
        freed += size
        dropped += samples
        last_id = rid
    if last_id is not None:
        db.execute("DELETE FROM requests WHERE id <= ?", (last_id,))
    return freed, dropped


class Spool:
    """The queue itself: the file's rows past an in-memory watermark, then the overflow.

    One lock guards its state and the connection: the sending lanes share one spool.
    """

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.clock = clock
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.path = os.path.join(directory, DB_NAME)
        self._lock = threading.Lock()
        self._overflow = _Overflow()
        self._acked = 0  # rows with an id up to this one are delivered or dropped
        self._done: set[int] = set()  # acknowledged rows beyond the watermark
        self._claimed: set[int] = set()  # rows a sending lane holds
        self._last_write_error_log = float("-inf")
        # reason -> samples dropped (read and reset by `take_drops`)
        self._drops: collections.Counter[str] = collections.Counter()
        _prepare_directory(self.directory)
        self._db = _open(self.path, self.fsync, self._drops)
        self._bytes, self._count, self._oldest_ts = self._totals()

    def _totals(self) -> tuple[int, int, int | None]:
        total, count, oldest = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*), MIN(ts_ms) FROM requests "
            "WHERE id > ?",
            (self._acked,),
        ).fetchone()
        return int(total), int(count), oldest

    # --- writing

    def put(self, requests: Sequence[Request]) -> None:
        """Store one cycle's requests (one transaction), making room by dropping the oldest."""
        if not requests:
            return
        with self._lock:
            self._overflow.add(requests)
            self._flush_overflow()
            self._cap_overflow()

    def _flush_overflow(self) -> None:
        """Move bodies waiting in memory into the file, oldest first, in one transaction."""
        if not self._overflow:
            return
        incoming = self._overflow.bytes
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM requests WHERE id <= ?", (self._acked,))
            dropped = self._make_room(incoming)
            for row in self._overflow:
                self._db.execute(
                    _INSERT, (row.ts_ms, row.samples, zlib.crc32(row.body), row.body, row.proto)
                )
            self._db.execute("COMMIT")
            if dropped:
                self._drops["spool_full"] += dropped
                log.warning("spool full: dropped the oldest %d sample(s)", dropped)
        except sqlite3.Error as e:
            self._rollback()
            self._bytes, self._count, self._oldest_ts = self._totals_safe()
            now = time.monotonic()
            if now - self._last_write_error_log >= 60:
                self._last_write_error_log = now
                log.error("spool: cannot write %s (%s); holding %d request(s) in memory",
                          self.path, e, len(self._overflow))  # fmt: skip
            return
        self._overflow.clear()
        self._bytes, self._count, self._oldest_ts = self._totals()

    def _advance_watermark(self) -> None:
        """Move the watermark over every acknowledged row at the front."""
        try:
            while True:
                row = self._db.execute(
                    "SELECT id FROM requests WHERE id > ? ORDER BY id LIMIT 1", (self._acked,)
                ).fetchone()
                if row is None:
                    self._acked = max(self._acked, *self._done, 0)
                    break
                if row[0] not in self._done:
                    break
                self._acked = row[0]
        except sqlite3.Error as e:
            log.warning("spool: cannot read %s: %s", self.path, e)
        self._done = {i for i in self._done if i > self._acked}

    def _delete_acked(self) -> None:
        try:
            self._db.execute("DELETE FROM requests WHERE id <= ?", (self._acked,))
            # Acknowledged out of order (the backfill lanes): gone, but behind the front.
            self._db.executemany("DELETE FROM requests WHERE id = ?", [(i,) for i in self._done])
        except sqlite3.Error as e:
            # A full disk can refuse even a delete; the watermark keeps the rows from being
            # sent again and the next removal tries once more.
            log.warning("spool: cannot delete delivered rows yet: %s", e)

    def _make_room(self, incoming: int) -> int:
        """Delete the oldest rows so `incoming` bytes fit; returns the samples that took."""
        over = self._bytes + incoming - self.max_bytes
        if over <= 0:
            return 0
        freed, dropped = _delete_oldest(self._db, self._acked, over)
        if freed < over:
            # The cycle alone is larger than the cap: keep as much of it as fits.
            for row in self._overflow.drop_oldest(self.max_bytes):
                self._drops["spool_full"] += row.samples
        return dropped

    def _cap_overflow(self) -> None:
        limit = min(MEMORY_OVERFLOW_BYTES, self.max_bytes)
        for row in self._overflow.drop_oldest(limit):
            self._drops["spool_unwritable"] += row.samples

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def _totals_safe(self) -> tuple[int, int, int | None]:
        try:
            return self._totals()
        except sqlite3.Error:
            return self._bytes, self._count, self._oldest_ts

    # --- reading and acknowledging

    def peek(
        self,
        max_samples: int,
        since_ms: int | None = None,
        before_ms: int | None = None,
        claim: bool = False,
    ) -> list[Row]:
        """The oldest rows not claimed, in order, up to `max_samples` samples in all (at
        least one row), optionally only those with `since_ms <= ts < before_ms`.

        With `claim`, the rows are held until `remove` or `release`, so two sending lanes
        never get the same row.
        """
        lo = since_ms if since_ms is not None else -(2**63)
        hi = before_ms if before_ms is not None else 2**63 - 1
        with self._lock:
            self._flush_overflow()
            rows = self._peek_file(max_samples, lo, hi)
            if not rows:  # the bodies in memory come after every row in the file
                rows = self._overflow.peek(max_samples, lo, hi, self._claimed)
            if claim:
                self._claimed.update(r.id for r in rows)
            return rows

    def _peek_file(self, max_samples: int, lo: int, hi: int) -> list[Row]:
        """The file's part of `peek`; a row failing its checksum is dropped and counted."""
        rows: list[Row] = []
        total = 0
        try:
            cur = self._db.execute(
                "SELECT id, ts_ms, samples, crc, body, proto FROM requests "
                "WHERE id > ? AND ts_ms >= ? AND ts_ms < ? ORDER BY id LIMIT 512",
                (self._acked, lo, hi),
            )
            for rid, ts_ms, samples, crc, body, version in cur:
                if rid in self._claimed or rid in self._done:
                    continue
                if rows and total + _samples(samples) > max_samples:
                    break
                if not _intact(body, crc) or _samples(samples) != samples:
                    samples = _samples(samples)
                    if not rows:  # at the front: acknowledge it as dropped
                        self._acked = max(self._acked, rid)
                    else:
                        self._db.execute("DELETE FROM requests WHERE id = ?", (rid,))
                    self._drops["spool_corrupt"] += samples
                    continue
                rows.append(Row(rid, ts_ms, samples, body, version))
                total += samples
        except sqlite3.Error as e:
            log.error("spool: cannot read %s: %s", self.path, e)
        return rows

    def release(self, rows: Iterable[Row]) -> None:
        """Give claimed rows back unsent (a lane stopped before it was done with them)."""
        with self._lock:
            self._claimed.difference_update(r.id for r in rows)

    def remove(self, rows: Iterable[Row]) -> None:
        """Acknowledge rows: they were delivered, or dropped and counted by the caller."""
        ids = [r.id for r in rows]
        with self._lock:
            self._claimed.difference_update(ids)
            on_disk = [i for i in ids if i >= 0]
            if on_disk:
                self._done.update(on_disk)
                self._advance_watermark()
                self._delete_acked()
                self._bytes, self._count, self._oldest_ts = self._totals_safe()
            gone = {i for i in ids if i < 0}
            if gone:
                self._overflow.discard(gone)

    def take_drops(self) -> dict[str, int]:
        """Samples the spool itself dropped since the last call, by reason."""
        with self._lock:
            drops = dict(self._drops)
            self._drops.clear()
            return drops

    # --- state

    def stats(self) -> tuple[int, int, int | None]:
        """(requests, bytes, oldest sample timestamp in ms or None) across file and memory."""
        with self._lock:
            oldest = self._oldest_ts
            if oldest is None:
                oldest = self._overflow.oldest_ts()
            return (
                self._count + len(self._overflow),
                self._bytes + self._overflow.bytes,
                oldest,
            )

    def readings(self) -> list[Reading]:
        """Its size and age; the samples it dropped are counted where they are taken
        (`take_drops`), with delivery's."""
        requests, nbytes, oldest = self.stats()
        age = max(0.0, self.clock() - oldest / 1000) if oldest is not None else 0.0
        return [
            reading("pusher_spool_bytes", nbytes),
            reading("pusher_spool_requests", requests),
            reading("pusher_spool_oldest_sample_age_seconds", age),
        ]

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
