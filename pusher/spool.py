"""The spool: every cycle is stored here before its first send, removed after a 2xx.

SQLite in WAL mode (`<buffer.path>/spool.db`, pusher/spooldb.py), one row per request, in
the order the cycles produced them; the row id is that order. A row holds a cycle record
(pusher/record.py: the series once per chain, then per cycle the values as differences,
a few bytes per hundred samples) from which the request body is built when the row is read,
or a request body as it goes on the wire (rows of an older agent, and cycles that waited in
memory). Invariants:

- rows leave from the front (acknowledged, or dropped and counted): a watermark in memory
  marks the acknowledged prefix, so nothing is read twice even while a delete cannot be made;
- every row carries a CRC32: a row that does not match, or whose record cannot be decoded,
  is dropped and counted;
- the file's pages in use (rows, dictionary, SQLite's own) stay within `max_bytes`: the
  oldest rows go first, counted as `spool_full`; between cycles the WAL counts too
  (`spooldb.settle` checkpoints it);
- with `fsync` on (the default), SQLite syncs the WAL at every cycle's commit
  (synchronous=FULL): a committed cycle survives `kill -9` and power loss, for one fsync per
  cycle (and a checkpoint now and then). Deleting delivered rows is not synced by itself.

When the disk is full or the file cannot be written, new cycles wait in memory as request
bodies (bounded; the oldest go first, counted as `spool_unwritable`) and move into the file
as soon as it takes writes again. Acknowledged rows are behind a watermark kept in memory
(`_acked`), so even when a full disk refuses to delete them they are never sent again; the
deletion is retried. A database that cannot be opened or fails its integrity check is moved
aside, what can still be read from it is copied into a new one, and the rest is counted as
`spool_corrupt`.

In the order below: `_Overflow` (the bodies waiting in memory), and `Spool`, which holds the
watermark, the lock, the connection and the record writer and reader.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from pusher import spooldb
from pusher.catalog import Reading, Sample, reading
from pusher.encode import Request
from pusher.record import FORMAT_BODY
from pusher.spooldb import DB_NAME, SpoolError, samples_of
from pusher.spoolrec import Plans, RecordStore, as_requests

__all__ = ["DB_NAME", "Row", "Spool", "SpoolError"]

log = logging.getLogger(__name__)

# Bodies kept in memory while the file refuses writes.
MEMORY_OVERFLOW_BYTES = 64 * 1024 * 1024


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


class _Queue:
    """The spool's state and the file's rows: the watermark, the claims, the overflow and
    the byte cap. `Spool` adds what goes in (requests, cycles) and what comes out.

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
        self._records = RecordStore()
        spooldb.prepare_directory(self.directory)
        self._db = spooldb.open_db(self.path, self.fsync, self._drops)
        self._settle()
        self._bytes, self._count, self._oldest_ts = self._totals()

    def _totals(self) -> tuple[int, int, int | None]:
        """(bytes: the file's pages in use, what the cap holds; requests; oldest ts)."""
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(ts_ms) FROM requests WHERE id > ?", (self._acked,)
        ).fetchone()
        return spooldb.used_bytes(self._db), int(count), oldest

    def _flush_overflow(self) -> None:
        """Move bodies waiting in memory into the file, oldest first, in one transaction."""
        if not self._overflow:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM requests WHERE id <= ?", (self._acked,))
            self._db.executemany(spooldb.INSERT, [
                (r.ts_ms, r.samples, spooldb.row_crc(r.ts_ms, r.samples, r.body, r.proto,
                 FORMAT_BODY, 0), r.body, r.proto, FORMAT_BODY, 0) for r in self._overflow
            ])  # fmt: skip
            # The bodies alone may be larger than the cap: then the oldest of them go too.
            dropped, _ = self._trim(2**63 - 1, None)
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._write_failed(e)
            return
        self._settle()
        self._count_full(dropped)
        self._overflow.clear()
        self._bytes, self._count, self._oldest_ts = self._totals()

    def _write_failed(self, e: sqlite3.Error) -> None:
        self._rollback()
        self._bytes, self._count, self._oldest_ts = self._totals_safe()
        now = time.monotonic()
        if now - self._last_write_error_log >= 60:
            self._last_write_error_log = now
            log.error("spool: cannot write %s (%s); holding %d request(s) in memory",
                      self.path, e, len(self._overflow) or 1)  # fmt: skip

    def _count_full(self, dropped: int) -> None:
        if dropped:
            self._drops["spool_full"] += dropped
            log.warning("spool full: dropped the oldest %d sample(s)", dropped)

    def _trim(self, before: int, writing: int | None) -> tuple[int, bool]:
        """Within the write transaction, after the insert: delete the oldest rows (those
        with an id below `before`) and the dictionary chains they leave unused until the
        file's pages in use fit the cap. Returns the samples that took, and whether it fits
        (not: what was just written is alone larger than the cap). `writing`: the chain the
        transaction writes to (None: the record writer's)."""
        dropped = 0
        while (over := spooldb.used_bytes(self._db) - self.max_bytes) > 0:
            freed, n = spooldb.delete_oldest(self._db, self._acked, over, before)
            if not freed:
                return dropped, False
            dropped += n
            self._records.collect(self._db, writing)
        return dropped, True

    def _settle(self, share: bool = True) -> None:
        """After a commit: keep the WAL within its bound (a checkpoint now and then)."""
        try:
            spooldb.settle(self._db, self.path, self.max_bytes, share)
        except sqlite3.Error as e:
            log.warning("spool: cannot checkpoint %s: %s", self.path, e)

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
        """Delete acknowledged rows, in one transaction. Not synced: a power cut may bring
        rows back that were delivered (sent again: receivers take an identical sample as a
        duplicate), never lose one; the next cycle's commit syncs the WAL, deletions too."""
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM requests WHERE id <= ?", (self._acked,))
            # Acknowledged out of order (the backfill lanes): gone, but behind the front.
            self._db.executemany("DELETE FROM requests WHERE id = ?", [(i,) for i in self._done])
            self._records.collect(self._db)
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            # A full disk can refuse even a delete; the watermark keeps the rows from being
            # sent again and the next removal tries once more.
            self._rollback()
            log.warning("spool: cannot delete delivered rows yet: %s", e)
            return
        finally:
            self._sync_mode()
        self._settle(share=False)

    def _sync_mode(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")


class Spool(_Queue):
    """The queue itself: the file's rows past an in-memory watermark, then the overflow."""

    def cached_series(self) -> int:
        """Series the record writer keeps; they follow the live series."""
        return self._records.cached_series()

    def put(self, requests: Sequence[Request]) -> None:
        """Store request bodies as they are (one transaction), making room by dropping the
        oldest."""
        if not requests:
            return
        with self._lock:
            self._overflow.add(requests)
            self._flush_overflow()
            self._cap_overflow()

    def put_cycle(
        self,
        ts_ms: int,
        plans: Plans,
        samples: Sequence[Sample],
        proto: int = 1,
        metadata: bool = False,
        max_samples: int = 2000,
    ) -> None:
        """Store one cycle as records of at most `max_samples` samples (one transaction),
        making room by dropping the oldest; its requests are built when they are read.
        While the file refuses writes, the cycle waits in memory as request bodies."""
        with self._lock:
            self._flush_overflow()
            cycle = (ts_ms, plans, samples, proto, metadata, max_samples)
            if not self._overflow and self._write_cycle(*cycle):
                return
            self._overflow.add(as_requests(*cycle))
            self._cap_overflow()

    def _write_cycle(
        self, ts_ms: int, plans: Plans, samples: Sequence[Sample], proto: int, metadata: bool,
        max_samples: int,
    ) -> bool:  # fmt: skip
        n = self._records.prepare(plans, samples, metadata, max_samples)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM requests WHERE id <= ?", (self._acked,))
            (newest,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()
            chain = self._records.insert(self._db, ts_ms, proto)
            dropped, fits = self._trim(newest + 1, chain)
            if not fits:  # the cycle alone is larger than the cap: it is what goes
                self._rollback()
                self._records.done(False)
                self._drops["spool_full"] += n
                return True
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._write_failed(e)
            self._records.done(False)
            return False
        self._records.done(True)
        self._settle()
        self._count_full(dropped)
        self._bytes, self._count, self._oldest_ts = self._totals()
        return True

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
        """The file's part of `peek`; a row failing its checksum, or whose record cannot be
        decoded, is dropped and counted."""
        rows: list[Row] = []
        total = 0
        try:
            cur = self._db.execute(
                f"SELECT {spooldb.ROW} FROM requests "
                "WHERE id > ? AND ts_ms >= ? AND ts_ms < ? ORDER BY id LIMIT 512",
                (self._acked, lo, hi),
            )
            for raw in cur:
                rid, samples = raw[0], samples_of(raw[2])
                if rid in self._claimed or rid in self._done:
                    continue
                if rows and total + samples > max_samples:
                    break
                row = self._row(raw) if spooldb.intact(raw) and samples == raw[2] else None
                if row is None:
                    if not rows:  # at the front: acknowledge it as dropped
                        self._acked = max(self._acked, rid)
                    else:
                        self._db.execute("DELETE FROM requests WHERE id = ?", (rid,))
                    self._drops["spool_corrupt"] += samples
                    continue
                rows.append(row)
                total += samples
        except sqlite3.Error as e:
            log.error("spool: cannot read %s: %s", self.path, e)
        return rows

    def _row(self, raw: tuple[object, ...]) -> Row | None:
        """A checked row as the sender takes it, a record's request built; None when the
        record cannot be decoded."""
        rid, ts_ms, samples, _, body, proto, fmt, chain = raw
        assert isinstance(rid, int) and isinstance(ts_ms, int) and isinstance(samples, int)
        assert isinstance(body, bytes) and isinstance(proto, int) and isinstance(chain, int)
        if fmt != FORMAT_BODY:
            built = self._records.body(self._db, rid, ts_ms, samples, body, proto, chain)
            if built is None:
                return None
            body = built
        return Row(rid, ts_ms, samples, body, proto)

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
