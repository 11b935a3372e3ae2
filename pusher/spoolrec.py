"""The spool's cycle records in its file: a cycle written as records and dictionary entries
within the spool's transaction, a record read back as the request it stands for, and the
dictionary's chains deleted once no row needs them.

The spool keeps the queue (watermark, claims, cap, overflow); this keeps what the rows of
format 1 mean (pusher/record.py has the format, docs/spool-format.md its bytes).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from pusher import spooldb
from pusher.catalog import DomainPlan, Sample, families_of
from pusher.encode import Encoder, EncoderV2, Request, metadata_bytes
from pusher.record import (
    FORMAT_CYCLE,
    Bodies,
    Pending,
    RecordError,
    RecordReader,
    RecordWriter,
    unpack_row,
)

__all__ = ["RecordStore"]

log = logging.getLogger(__name__)

Plans = Sequence[tuple[DomainPlan, Sequence[float]]]


class RecordStore:
    """Writer, reader and request builder of the records, over the spool's connection."""

    def __init__(self) -> None:
        self._writer = RecordWriter()
        self._reader = RecordReader()
        self._bodies = Bodies()
        self._floor = 0  # the dictionary's chains older than this one are gone
        self._pending: Pending | None = None
        self._chain = 0

    def cached_series(self) -> int:
        return self._writer.cached_series()

    def prepare(
        self, plans: Plans, samples: Sequence[Sample], metadata: bool, max_samples: int
    ) -> int:
        """Make the cycle's records, to `insert`: returns their samples."""
        self._pending = self._writer.prepare(plans, samples, metadata, max_samples)
        return sum(n for _, n in self._pending.rows)

    def insert(self, db: sqlite3.Connection, ts_ms: int, proto: int) -> int:
        """The prepared cycle into the file, within the caller's transaction; then `done`.
        Returns the chain it went to."""
        p = self._pending
        assert p is not None, "insert without prepare"
        chain = p.chain_id
        self.collect(db, chain)
        if p.entry is not None:
            chain = spooldb.insert_entry(db, chain, p.entry)
        db.executemany(spooldb.INSERT, [
            (ts_ms, n, spooldb.row_crc(ts_ms, n, body, proto, FORMAT_CYCLE, chain), body, proto,
             FORMAT_CYCLE, chain) for body, n in p.rows
        ])  # fmt: skip
        self._chain = chain
        return chain

    def done(self, stored: bool) -> None:
        """The transaction committed (`stored`) or not: in that case the next cycle starts a
        new chain, so that no record refers to an entry that is not in the file."""
        if stored:
            self._writer.commit(self._chain)
        else:
            self._writer.start_over()

    def collect(self, db: sqlite3.Connection, writing: int | None = None) -> None:
        """Delete the chains no row left needs, once the front has moved past them."""
        floor = spooldb.chain_floor(db, self._writer.chain_id if writing is None else writing)
        if floor > self._floor:
            db.execute("DELETE FROM dictionary WHERE chain < ?", (floor,))
            self._reader.forget_below(floor)
            self._floor = floor

    def body(
        self, db: sqlite3.Connection, rid: int, ts_ms: int, samples: int, record: bytes,
        proto: int, chain: int,
    ) -> bytes | None:  # fmt: skip
        """A record's request body; None when it cannot be decoded (damaged, or its
        dictionary entries damaged or gone)."""
        try:
            flags, refs, escapes, planes = unpack_row(record)
            if not self._reader.knows(chain, refs):
                entries = spooldb.chain_entries(db, chain)
                if entries is None:
                    raise RecordError(f"the dictionary of chain {chain} is damaged or gone")
                self._reader.load(chain, entries)
                if not self._reader.knows(chain, refs):
                    raise RecordError(f"groups missing from the dictionary of chain {chain}")
            groups = self._reader.decode(chain, refs, escapes, planes)
            if sum(len(v) for _, v in groups) != samples:
                raise RecordError("the record holds another number of samples than its row")
            return self._bodies.build(groups, ts_ms, proto, flags)
        except (RecordError, ValueError, KeyError, IndexError, OverflowError) as e:
            log.error("spool: row %d cannot be decoded (%s); dropped", rid, e)
            return None


def as_requests(
    ts_ms: int, plans: Plans, samples: Sequence[Sample], proto: int, metadata: bool,
    max_samples: int,
) -> list[Request]:  # fmt: skip
    """A cycle as request bodies (to wait in memory), as its records would give them."""
    encoder = EncoderV2(max_samples) if proto == 2 else Encoder(max_samples)
    meta = b""
    if metadata:
        names = {n for p, _ in plans for n in p.names} | {k[0] for k, _ in samples}
        meta = metadata_bytes(families_of(names))
    return encoder.encode(samples, ts_ms, meta, plans)
