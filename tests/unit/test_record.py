"""pusher.record and the spool's cycle records: exact round trips, chains, damage, upgrade."""

from __future__ import annotations

import math
import os
import random
import shutil
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from pusher import spooldb
from pusher.catalog import DomainPlan, Sample
from pusher.encode import STALE_NAN, Encoder, EncoderV2, decode_v2, decompress
from pusher.pb import remote_write_v2_pb2 as v2
from pusher.pb.remote_write_pb2 import WriteRequest
from pusher.record import (
    RecordReader,
    RecordWriter,
    code_values,
    pack_ints,
    unpack_ints,
    unpack_row,
)
from pusher.spool import DB_NAME, Spool

OLD_SPOOL = Path(__file__).parent.parent / "data" / "spool-6c6caf1-outage.db"
EXTERNAL = (("cluster", "c1"),)


def bits(v: float) -> bytes:
    return struct.pack("<d", v)


def plan(uuid: str, n: int = 4, scale: float = 1e-9) -> DomainPlan:
    shared = (("cluster", "c1"), ("domain", f"instance-{uuid}"), ("uuid", uuid))
    series = tuple((f"libvirt_domain_m{i}_total", (("vcpu", str(i)),), shared) for i in range(n))
    return DomainPlan((), shared, (), (scale,) * n, series)


def raw_values(base: int, n: int = 4, scale: float = 1e-9) -> list[float]:
    return [(base + 1000 * i) * scale for i in range(n)]


def misc(up: float = 1.0) -> list[Sample]:
    return [(("libvirt_up", (), EXTERNAL), up), (("pusher_age_seconds", (), EXTERNAL), 0.125)]


@pytest.fixture
def opened() -> Iterator[list[Spool]]:
    spools: list[Spool] = []
    yield spools
    for s in spools:
        s.close()


def open_spool(opened: list[Spool], directory: Path, max_bytes: int = 10**7) -> Spool:
    spool = Spool(str(directory), max_bytes, fsync=False)
    opened.append(spool)
    return spool


def v1_series(body: bytes) -> list[tuple[tuple[tuple[str, str], ...], int, bytes]]:
    req = WriteRequest.FromString(decompress(body))
    return [(tuple((lab.name, lab.value) for lab in ts.labels), s.timestamp, bits(s.value))
            for ts in req.timeseries for s in ts.samples]  # fmt: skip


# --- values ------------------------------------------------------------------------------


def test_values_come_back_bit_for_bit_whatever_they_are() -> None:
    values = [12345 * 1e-9, 0.0, -0.0, -3.0, 0.1, math.inf, -math.inf, STALE_NAN, 2.0**70, 7.0]
    scales = [1e-9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    codes, escapes = code_values(values, scales)
    back = [c * s for c, s in zip(codes, scales, strict=True)]
    for i, v in escapes.items():
        back[i] = v
    assert [bits(v) for v in back] == [bits(v) for v in values]
    assert codes[0] == 12345 and 0 not in escapes and 1 not in escapes  # integers stay codes
    assert {2, 4, 5, 6, 7, 8, 9} <= set(escapes)  # -0.0, fractions, inf, NaN, huge, scale 0


def test_integers_pack_in_byte_planes_and_back() -> None:
    ints = [0, 1, -1, 2**62, -(2**62), 300, 0]
    planes = pack_ints(ints)
    assert unpack_ints(planes, len(ints)) == ints
    assert planes[len(ints) * 7 : len(ints) * 7 + 2] == b"\x00\x00"  # top bytes of 0 and 1


# --- writer and reader -------------------------------------------------------------------


def roundtrip(writer: RecordWriter, reader: RecordReader, entries: dict[int, list[bytes]],
              cycle: list[tuple[DomainPlan, list[float]]], samples: list[Sample],
              max_samples: int = 2000) -> list[tuple[DomainPlan, list[float]]]:  # fmt: skip
    pending = writer.prepare(cycle, samples, False, max_samples)
    chain = pending.chain_id or max(entries, default=0) + 1
    if pending.entry is not None:
        entries.setdefault(chain, []).append(pending.entry)
    writer.commit(chain)
    reader.load(chain, entries[chain])
    out = []
    for record, _ in pending.rows:
        _, refs, escapes, planes = unpack_row(record)
        out += reader.decode(chain, refs, escapes, planes)
    return out


def test_cycles_decode_exactly_across_new_groups_and_chains() -> None:
    writer, reader, entries = RecordWriter(chain_cycles=3), RecordReader(), {}
    a, b = plan("a"), plan("b", n=6, scale=1024.0)
    for i in range(8):
        cycle = [(a, raw_values(10**12 + i * 7_777))]
        if i >= 2:  # b appears mid-chain: an addendum to the chain's dictionary
            cycle.append((b, raw_values(5 * i, n=6, scale=1024.0)))
        got = roundtrip(writer, reader, entries, cycle, misc(STALE_NAN if i == 4 else 1.0))
        want = [*cycle, (None, [v for _, v in misc(STALE_NAN if i == 4 else 1.0)])]
        assert [[bits(v) for v in vs] for _, vs in got] == [[bits(v) for v in vs]
                                                              for _, vs in want]  # fmt: skip
        assert [g.series for g, _ in got[:-1]] == [p.series for p, _ in cycle]
    assert len(entries) == 3  # a new chain every 3 cycles
    assert len(entries[1]) == 2  # base, then b's addendum


def test_a_group_the_next_chain_has_again_is_read_as_the_same_plan() -> None:
    """So that the encoders' per-plan caches (the series' bytes) last across chains."""
    writer, reader, entries = RecordWriter(chain_cycles=2), RecordReader(), {}
    a = plan("a")
    seen = []
    for i in range(6):
        cycle = [(a, raw_values(i)), (plan("b", scale=float(i // 2 + 1)), raw_values(i))]
        seen.append([g for g, _ in roundtrip(writer, reader, entries, cycle, [])])
    assert len(entries) == 3
    assert all(s[0] is seen[0][0] for s in seen)  # a: the same series and scales throughout
    assert seen[0][1] is seen[1][1] and seen[1][1] is not seen[2][1]  # b's scales changed


def test_a_cycle_is_cut_into_records_of_at_most_max_samples_whole_groups() -> None:
    writer = RecordWriter()
    cycle = [(plan(str(i), n=4), raw_values(i)) for i in range(5)]
    pending = writer.prepare(cycle, [], False, 8)
    assert [n for _, n in pending.rows] == [8, 8, 4]


# --- in the spool ------------------------------------------------------------------------


def test_requests_built_from_records_are_those_the_encoders_make(tmp_path, opened) -> None:
    spool = open_spool(opened, tmp_path / "s")
    cycle = [(plan("a"), raw_values(10**12)), (plan("b"), raw_values(7))]
    spool.put_cycle(1_000, cycle, misc(), 1)
    spool.put_cycle(2_000, cycle, misc(), 2)
    v1, v2 = spool.peek(10**6)
    (want1,) = Encoder(2000).encode(misc(), 1_000, b"", cycle)
    assert sorted(v1_series(v1.body)) == sorted(v1_series(want1.body))
    want2 = [r.body for r in EncoderV2(2000).encode(misc(), 2_000, b"", cycle)]
    got = decode_v2(decompress(v2.body))
    assert sorted(got) == sorted(s for b in want2 for s in decode_v2(decompress(b)))
    assert (v1.proto, v2.proto, v1.samples, v2.samples) == (1, 2, 10, 10)


def test_a_records_2_0_request_carries_metadata_only_when_it_was_due(tmp_path, opened) -> None:
    spool = open_spool(opened, tmp_path / "s")
    cycle = [(plan("a"), raw_values(10**12))]
    spool.put_cycle(1_000, cycle, misc(), 2, True)
    spool.put_cycle(2_000, cycle, misc(), 2, False)
    due, plain = spool.peek(10**6)

    def meta(body: bytes) -> list[tuple[int, str, str]]:
        req = v2.Request.FromString(decompress(body))
        m = [ts.metadata for ts in req.timeseries]
        return [(x.type, req.symbols[x.help_ref], req.symbols[x.unit_ref]) for x in m]

    want = EncoderV2(2000).encode(misc(), 1_000, b"\x01", cycle)
    assert meta(due.body) == [t for r in want for t in meta(r.body)]
    assert any(t[0] for t in meta(due.body))  # the catalog's series (libvirt_up) are typed
    assert meta(plain.body) == [(0, "", "")] * 6


def test_records_survive_reopen_in_order_after_older_bodies(tmp_path, opened) -> None:
    directory = tmp_path / "s"
    spool = Spool(str(directory), 10**7, fsync=True)
    a = plan("a")
    for i in range(5):
        spool.put_cycle(1_000 * (i + 1), [(a, raw_values(i))], misc(), 1)
    spool.remove(spool.peek(1))
    spool.close()
    again = open_spool(opened, directory)
    again.put_cycle(9_000, [(a, raw_values(9))], misc(), 1)  # a new chain after the restart
    rows = again.peek(10**6)
    assert [r.ts_ms for r in rows] == [2_000, 3_000, 4_000, 5_000, 9_000]
    assert [b for _, _, b in v1_series(rows[-1].body)][:4] == [bits(v) for v in raw_values(9)]
    again.remove(rows)
    assert again.stats() == (0, again.stats()[1], None)
    again.close()
    chains = sqlite3.connect(directory / DB_NAME).execute("SELECT COUNT(*) FROM dictionary")
    assert chains.fetchone() == (1,)  # the first chain went with its rows


def test_the_cap_drops_the_oldest_cycles_and_counts_them(tmp_path, opened) -> None:
    spool = open_spool(opened, tmp_path / "s", max_bytes=16_000)  # the file's pages in use
    rng = random.Random(5)
    for i in range(60):
        values = [float(rng.getrandbits(48)) for _ in range(40)]  # noise: ~6 bytes a value
        spool.put_cycle(1_000 * (i + 1), [(plan("a", 40, 1.0), values)], [], 1)
    rows = spool.peek(10**6)
    assert rows[-1].ts_ms == 60_000 and rows[0].ts_ms > 1_000
    assert spool.take_drops() == {"spool_full": 40 * (60 - len(rows))}
    assert spool.stats()[1] <= 16_000


@pytest.mark.parametrize("cap", [10**7, 24_000])
def test_between_cycles_the_wal_stays_within_its_bound_and_the_cap(tmp_path, opened, cap) -> None:
    spool = open_spool(opened, tmp_path / "s", max_bytes=cap)
    path = tmp_path / "s" / DB_NAME
    rng = random.Random(3)
    for i in range(120):
        values = [float(rng.getrandbits(20)) for _ in range(60)]
        spool.put_cycle(1_000 * (i + 1), [(plan("a", 60, 1.0), values)], [], 1)
        wal = Path(f"{path}-wal").stat().st_size
        assert wal <= max(spooldb.WAL_MIN, path.stat().st_size // spooldb.WAL_SHARE)
        assert spool.stats()[1] + wal <= cap
    assert oct(Path(f"{path}-shm").stat().st_mode & 0o777) == oct(0o600)  # the WAL's index


def test_a_damaged_record_or_dictionary_loses_its_rows_counted(tmp_path, opened) -> None:
    directory = tmp_path / "s"
    spool = Spool(str(directory), 10**7, fsync=False)
    for i in range(3):
        spool.put_cycle(1_000 * (i + 1), [(plan("a"), raw_values(i))], misc(), 1)
    spool.close()
    db = sqlite3.connect(directory / DB_NAME)
    with db:
        db.execute("UPDATE requests SET body = X'01ff' WHERE id = 2")
    db.close()
    again = open_spool(opened, directory)
    assert [r.ts_ms for r in again.peek(10**6)] == [1_000, 3_000]
    assert again.take_drops() == {"spool_corrupt": 6}
    again.close()
    db = sqlite3.connect(directory / DB_NAME)
    with db:
        db.execute("UPDATE dictionary SET entry = X'0100'")
    db.close()
    third = open_spool(opened, directory)
    assert third.peek(10**6) == []
    assert third.take_drops() == {"spool_corrupt": 12}


def test_a_truncated_file_of_records_keeps_what_it_can_read(tmp_path, opened) -> None:
    directory = tmp_path / "s"
    spool = Spool(str(directory), 10**8, fsync=False)
    for i in range(40):
        spool.put_cycle(1_000 + i, [(plan(str(g), 30), raw_values(i * 10**9 + g, 30))
                                    for g in range(10)], misc(), 1)  # fmt: skip
    spool.close()
    path = directory / DB_NAME
    os.truncate(path, path.stat().st_size * 2 // 3)
    again = open_spool(opened, directory)
    kept = [r.ts_ms for r in again.peek(10**7)]
    assert kept == sorted(kept) and set(kept) <= set(range(1_000, 1_040))
    assert sum(again.take_drops().values()) == 302 * (40 - len(kept))


def test_a_spool_of_the_previous_version_gives_its_bodies_unchanged_then_cycles(
    tmp_path, opened
) -> None:
    directory = tmp_path / "s"
    directory.mkdir(mode=0o700)
    shutil.copyfile(OLD_SPOOL, directory / DB_NAME)
    old = sqlite3.connect(f"file:{OLD_SPOOL}?mode=ro&immutable=1", uri=True)
    bodies = old.execute("SELECT body, proto, ts_ms FROM requests ORDER BY id").fetchall()
    old.close()
    spool = open_spool(opened, directory)
    spool.put_cycle(bodies[-1][2] + 1_000, [(plan("a"), raw_values(1))], misc(), 2)
    rows = spool.peek(10**7)
    assert [(r.body, r.proto, r.ts_ms) for r in rows[:-1]] == bodies
    assert rows[-1].ts_ms == bodies[-1][2] + 1_000 and rows[-1].proto == 2
    assert spool.take_drops() == {}


def test_escapes_in_any_group_and_part_come_back_bit_for_bit() -> None:
    a, b, c = plan("a", 5), plan("b", 5), plan("c", 3, 0.0)
    writer, reader = RecordWriter(), RecordReader()
    cycles = [
        [(a, [1e-9, 2e-9, 0.5e-10, 4e-9, -0.0]), (b, [STALE_NAN, 1e-9, math.inf, 3e-9, 1.5]),
         (c, [1.0, 2.0, math.nan])],
        [(a, [2e-9, 2e-9, 3e-9, -0.0, 4e-9]), (b, [1e-9, STALE_NAN, 2e-9, -math.inf, 2.5e-9]),
         (c, [0.0, -0.0, 3.0])],
    ]  # fmt: skip
    entries: list[bytes] = []
    for cycle in cycles:
        pending = writer.prepare(cycle, [], False, 4)  # a part per group
        entries += [pending.entry] if pending.entry else []
        writer.commit(1)
        reader.load(1, entries)
        got = []
        for body, _ in pending.rows:
            _, refs, escapes, planes = unpack_row(body)
            got += [v for _, values in reader.decode(1, refs, escapes, planes) for v in values]
        assert [bits(v) for v in got] == [bits(v) for _, values in cycle for v in values]
