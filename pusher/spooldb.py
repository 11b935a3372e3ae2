"""The spool's SQLite file: schema, opening, checks, salvage, and the row-level statements.

Functions rather than `Spool` methods: most run once, before the spool has any state but
the path, and what they count goes into the `drops` counter they are handed.

Two tables (docs/spool-format.md has every column):

- `requests`: the queue, one row per request in the order the cycles produced them. A row
  holds a request body as it goes on the wire (`format` 0: every row an older agent wrote,
  and cycles that waited in memory while the disk refused writes) or a cycle record
  (`format` 1, pusher/record.py) from which the body is built when it is sent;
- `dictionary`: the series of the cycle records, in chains (`chain` = the id of the chain's
  base entry). An entry goes once no row of its chain is left and the writer has moved on.

Every row and entry carries a CRC32; for format 1 rows and the entries it covers the other
columns too, so a flipped chain, timestamp or count is caught like a flipped body byte.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
import stat
import struct
import time
import zlib

from pusher.record import FORMAT_BODY

__all__ = [
    "DB_NAME",
    "SpoolError",
    "delete_oldest",
    "open_db",
    "prepare_directory",
    "row_crc",
    "settle",
    "used_bytes",
]

log = logging.getLogger(__name__)

DB_NAME = "spool.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms   INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    crc     INTEGER NOT NULL,
    body    BLOB    NOT NULL,
    proto   INTEGER NOT NULL DEFAULT 1,  -- the request's remote-write version: 1 or 2
    format  INTEGER NOT NULL DEFAULT 0,  -- 0: a request body; 1: a cycle record
    chain   INTEGER NOT NULL DEFAULT 0   -- format 1: its chain in `dictionary`
);
CREATE TABLE IF NOT EXISTS dictionary (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    chain   INTEGER NOT NULL,  -- the id of the chain's base entry (its own, for a base)
    crc     INTEGER NOT NULL,
    entry   BLOB    NOT NULL
);
"""
_COLUMNS = (  # added to a spool written by an older agent
    ("proto", "INTEGER NOT NULL DEFAULT 1"),
    ("format", "INTEGER NOT NULL DEFAULT 0"),
    ("chain", "INTEGER NOT NULL DEFAULT 0"),
)
INSERT = (
    "INSERT INTO requests (ts_ms, samples, crc, body, proto, format, chain) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
ROW = "id, ts_ms, samples, crc, body, proto, format, chain"  # what `intact` checks
_HEADER = struct.Struct("<BBqqq")
# Small pages: a cycle's record is a few hundred bytes, and a commit rewrites whole pages.
PAGE_SIZE = 1024
_CHAIN = struct.Struct("<q")
# The WAL between cycles: checkpointed into the file and truncated (`settle`) once it holds
# more than a quarter of the file's bytes, at least WAL_MIN and at most WAL_MAX. A larger
# WAL is fewer checkpoints (each one fsync more); a smaller one, less disk. Measured
# trade-off in docs/spool-format.md.
WAL_SHARE = 4
WAL_MIN = 8 * 1024
WAL_MAX = 4 * 1024 * 1024


class SpoolError(Exception):
    """The spool directory is unusable (not creatable, unsafe permissions)."""


def row_crc(ts_ms: int, samples: int, body: bytes, proto: int, fmt: int, chain: int) -> int:
    """A row's CRC32: of the body alone for a format 0 row (as older agents wrote it), of
    every column for a record."""
    if fmt == FORMAT_BODY:
        return zlib.crc32(body)
    return zlib.crc32(body, zlib.crc32(_HEADER.pack(fmt, proto, chain, ts_ms, samples)))


def entry_crc(chain: int, entry: bytes) -> int:
    return zlib.crc32(entry, zlib.crc32(_CHAIN.pack(chain)))


def intact(row: tuple[object, ...]) -> bool:
    """Whether a row (`ROW`'s columns) matches its CRC. A damaged page can hand back any
    type (NULL, a string) in any column: such a row fails the check instead of crashing."""
    _, ts_ms, samples, crc, body, proto, fmt, chain = row
    if not (isinstance(body, bytes) and isinstance(crc, int) and isinstance(ts_ms, int)):
        return False
    if not (isinstance(samples, int) and isinstance(proto, int) and isinstance(fmt, int)):
        return False
    if not isinstance(chain, int) or not -(2**63) <= ts_ms < 2**63 or fmt not in (0, 1):
        return False
    return row_crc(ts_ms, samples, body, proto & 0xFF, fmt, chain) == crc


def samples_of(value: object) -> int:
    """A row's sample count, or 0 when damage left something else in the column."""
    return value if isinstance(value, int) and value >= 0 else 0


def prepare_directory(directory: str) -> None:
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
    # Create the file 0600 before SQLite does: its -wal file takes its mode.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
    try:
        _configure(db, fsync)
    except sqlite3.Error:
        db.close()  # it may hold the file's lock: salvage reads the file next
        raise
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return db


def _configure(db: sqlite3.Connection, fsync: bool) -> None:
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect on a new file only
    # Normal locking: other processes (an operator's sqlite3, a monitoring probe) can read
    # the spool while the agent runs. SQLite keeps the WAL's index in a -shm file beside
    # it, created with the database file's mode (0600).
    # A write-ahead log: one fsync per commit (a rollback journal takes two), and a
    # checkpoint now and then (`settle`); SQLite's own checkpoints only past WAL_MAX.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_MAX // PAGE_SIZE}")
    db.execute(f"PRAGMA journal_size_limit={WAL_MAX}")
    db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    db.executescript(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    for name, decl in _COLUMNS:
        if name not in columns:  # a spool of an older agent: its rows keep their meaning
            db.execute(f"ALTER TABLE requests ADD COLUMN {name} {decl}")


def settle(db: sqlite3.Connection, path: str, cap: int, share: bool = True) -> None:
    """After a commit: checkpoint the WAL into the file and truncate it once it outgrows
    its share of the file (the directory stays within 1.25 times the file, + WAL_MIN), or
    once it and the file's pages in use add up to more than the cap.

    Without `share` (after deleting delivered rows), only the cap counts: a drain's many
    small commits would otherwise checkpoint, two fsyncs each, every few requests; the next
    cycle's commit brings the WAL back within its share, and SQLite's own checkpoint keeps
    it under WAL_MAX meanwhile."""
    try:
        wal = os.path.getsize(path + "-wal")
        size = os.path.getsize(path)
    except OSError:
        return
    over_cap = size + wal > cap and used_bytes(db) + wal > cap  # the file's size is >= used
    over_share = share and wal > max(WAL_MIN, min(WAL_MAX, size // WAL_SHARE))
    if over_cap or over_share:
        # Without waiting: a reader in another process may hold a snapshot the checkpoint
        # needs; then the WAL stays (still bounded by WAL_MAX) and the next commit tries again.
        (timeout,) = db.execute("PRAGMA busy_timeout").fetchone()
        db.execute("PRAGMA busy_timeout=0")
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            db.execute(f"PRAGMA busy_timeout={int(timeout)}")


def open_db(path: str, fsync: bool, drops: collections.Counter[str]) -> sqlite3.Connection:
    """Open the database and check it; a damaged one is moved aside and salvaged."""
    db: sqlite3.Connection | None = None
    try:
        db = _connect(path, fsync)
        result = db.execute("PRAGMA quick_check").fetchone()[0]
        if result == "ok":
            _check_rows(db, drops)
            _check_entries(db)
            return db
        problem = f"integrity check: {result}"
    except sqlite3.DatabaseError as e:
        problem = str(e)
    if db is not None:
        db.close()
    return _recover(path, fsync, problem, drops)


def _check_rows(db: sqlite3.Connection, drops: collections.Counter[str]) -> None:
    """Drop rows that fail their CRC, counting their samples."""
    bad: list[tuple[int, int]] = []
    for row in db.execute(f"SELECT {ROW} FROM requests ORDER BY id"):
        if not intact(row):
            bad.append((row[0], samples_of(row[2])))
    if bad:
        db.executemany("DELETE FROM requests WHERE id = ?", [(r,) for r, _ in bad])
        drops["spool_corrupt"] += sum(s for _, s in bad)
        log.error("spool: %d request(s) failed their checksum and were dropped", len(bad))


def _entry_intact(chain: object, crc: object, entry: object) -> bool:
    return (
        isinstance(chain, int) and isinstance(crc, int) and isinstance(entry, bytes)
        and entry_crc(chain, entry) == crc
    )  # fmt: skip


def _check_entries(db: sqlite3.Connection) -> None:
    """Drop dictionary entries that fail their CRC. The rows that need them fail when they
    are read, and are counted then."""
    bad = [(i,) for i, chain, crc, entry in db.execute("SELECT id, chain, crc, entry FROM "
           "dictionary") if not _entry_intact(chain, crc, entry)]  # fmt: skip
    if bad:
        db.executemany("DELETE FROM dictionary WHERE id = ?", bad)
        log.error("spool: %d dictionary entr(y/ies) failed their checksum", len(bad))


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
    columns = _row_columns(old)
    with old:
        _copy_entries(old, new)
        kept_samples, lost, unreadable = _copy_rows(old, new, columns, drops)
    if unreadable and kept_samples:
        # How many samples an unreadable row held is unknown: count the average row.
        avg = sum(kept_samples) // len(kept_samples)
        drops["spool_corrupt"] += avg * unreadable
    old.close()
    return len(kept_samples), lost + unreadable


def _row_columns(old: sqlite3.Connection) -> str:
    """What to select for a row: its columns, with their defaults for those an older agent's
    spool lacks."""
    try:
        have = {r[1] for r in old.execute("PRAGMA table_info(requests)")}
    except sqlite3.DatabaseError:
        have = set()
    defaults = {"proto": "1", "format": "0", "chain": "0"}
    return ", ".join(c if c in have or c not in defaults else defaults[c]
                     for c in ROW.split(", "))  # fmt: skip


def _copy_entries(old: sqlite3.Connection, new: sqlite3.Connection) -> None:
    """The dictionary entries that can be read, with their ids (the rows refer to them)."""
    after = -1
    bound = _max_id(old, "dictionary")
    while after < bound:
        try:
            row = old.execute("SELECT id, chain, crc, entry FROM dictionary WHERE id > ? "
                              "ORDER BY id LIMIT 1", (after,)).fetchone()  # fmt: skip
        except sqlite3.DatabaseError:
            after += 1  # step over what cannot be read
            continue
        if row is None:
            return
        if _entry_intact(row[1], row[2], row[3]):
            new.execute("INSERT INTO dictionary (id, chain, crc, entry) VALUES (?, ?, ?, ?)", row)
        after = row[0]


def _copy_rows(
    old: sqlite3.Connection, new: sqlite3.Connection, columns: str,
    drops: collections.Counter[str],
) -> tuple[list[int], int, int]:  # fmt: skip
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
                f"SELECT {columns} FROM requests WHERE id > ? ORDER BY id LIMIT 1", (after,)
            ).fetchone()
        except sqlite3.DatabaseError:
            after += 1  # step over a row we cannot read
            unreadable += 1
            continue
        if row is None:
            break
        rid, ts_ms, samples, crc, body, proto, fmt, chain = row
        if intact(row) and samples_of(samples) == samples:
            new.execute(INSERT, (ts_ms, samples, crc, body, proto, fmt, chain))
            kept_samples.append(samples)
        else:
            lost += 1
            drops["spool_corrupt"] += samples_of(samples)
        after = rid
    return kept_samples, lost, unreadable


def _max_id(db: sqlite3.Connection, table: str = "requests") -> int:
    for query in (
        f"SELECT seq FROM sqlite_sequence WHERE name = '{table}'",
        f"SELECT MAX(id) FROM {table}",
    ):
        try:
            row = db.execute(query).fetchone()
            if row and row[0] is not None:
                return int(row[0])
        except sqlite3.DatabaseError:
            continue
    return 0


# --- the file's rows


def used_bytes(db: sqlite3.Connection) -> int:
    """The bytes of the file's pages in use (its free pages are taken before it grows)."""
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    (size,) = db.execute("PRAGMA page_size").fetchone()
    return int(pages - free) * int(size)


def delete_oldest(db: sqlite3.Connection, acked: int, over: int, before: int) -> tuple[int, int]:
    """Delete the oldest rows past the watermark `acked` and older than `before`, about
    `over` bytes of them (at least one), or none when none are left; returns (bytes of the
    rows deleted, samples dropped).

    Apart from `Spool._trim`, which measures what the deletion freed and decides what a
    shortfall means (the cycle itself is too big); this only picks and deletes.
    """
    freed = dropped = 0
    cur = db.execute(
        "SELECT id, samples, LENGTH(body) FROM requests WHERE id > ? AND id < ? ORDER BY id",
        (acked, before),
    )
    last_id = None
    for rid, samples, size in cur:
        if freed >= over:
            break
        freed += samples_of(size) or 1
        dropped += samples_of(samples)
        last_id = rid
    if last_id is not None:
        db.execute("DELETE FROM requests WHERE id > ? AND id <= ?", (acked, last_id))
    return freed, dropped


def chain_floor(db: sqlite3.Connection, writing: int) -> int:
    """The oldest chain still needed: that of the oldest record left, or the one the writer
    is adding to (0: none), whichever is older."""
    row = db.execute("SELECT chain FROM requests WHERE format = 1 ORDER BY id LIMIT 1").fetchone()
    floors = [c for c in (row[0] if row else 0, writing) if c]
    return min(floors) if floors else 2**62


def insert_entry(db: sqlite3.Connection, chain: int, entry: bytes) -> int:
    """Store a dictionary entry; `chain` 0 starts a new chain with this entry as its base.
    Returns the chain's id."""
    if chain:
        db.execute("INSERT INTO dictionary (chain, crc, entry) VALUES (?, ?, ?)",
                   (chain, entry_crc(chain, entry), entry))  # fmt: skip
        return chain
    cur = db.execute("INSERT INTO dictionary (chain, crc, entry) VALUES (-1, 0, ?)", (entry,))
    new = int(cur.lastrowid or 0)
    db.execute("UPDATE dictionary SET chain = ?, crc = ? WHERE id = ?",
               (new, entry_crc(new, entry), new))  # fmt: skip
    return new


def chain_entries(db: sqlite3.Connection, chain: int) -> list[bytes] | None:
    """A chain's entries, base first; None when one fails its CRC or the base is missing."""
    rows = db.execute("SELECT id, chain, crc, entry FROM dictionary WHERE chain = ? ORDER BY id",
                      (chain,)).fetchall()  # fmt: skip
    if not rows or rows[0][0] != chain:
        return None
    if not all(_entry_intact(c, crc, e) for _, c, crc, e in rows):
        return None
    return [e for _, _, _, e in rows]
