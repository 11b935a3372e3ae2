"""Cycle records: how the spool keeps a cycle in a few bytes, and gets its series back.

A cycle is a list of groups, each a `DomainPlan` (its series and their unit scales) with this
cycle's values. The spool keeps (docs/spool-format.md has the byte layout):

- a *dictionary* of groups, in chains: a chain starts with a base entry (every group of the
  cycle that started it, with that cycle's values as integer codes), and grows by addenda
  (groups that appeared later, without values). A chain lasts `CHAIN_CYCLES` cycles;
- per cycle one *record* per part of at most `max_samples` samples: the chain's group
  indices, and each value as the difference of its integer code from the base's code,
  the 8 bytes of the 64-bit differences stored byte plane by byte plane, then deflated.
  Idle counters, constant gauges and the same timestamp everywhere cost next to nothing.

A value's integer code is the libvirt number before unit conversion (`value / scale`),
used only when converting it back gives the very same float; other values (NaN stale
markers, fractions, negative values) are kept as their 8 bytes. So decoding gives back
every float bit for bit.

Pure: no I/O. `RecordWriter` turns cycles into dictionary entries and records (the spool
stores them and gives them their ids), `RecordReader` turns records back into groups and
values with the dictionary entries the spool hands it, and `Bodies` builds request bodies
from those with the wire encoders.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import operator
import struct
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from pusher.catalog import DomainPlan, LabelPairs, Sample, SeriesKey, families_of
from pusher.encode import Encoder, EncoderV2, metadata_bytes

__all__ = [
    "CHAIN_CYCLES",
    "FORMAT_BODY",
    "FORMAT_CYCLE",
    "Bodies",
    "Pending",
    "RecordError",
    "RecordReader",
    "RecordWriter",
    "code_values",
    "pack_entry",
    "pack_ints",
    "pack_row",
    "unpack_entry",
    "unpack_ints",
    "unpack_row",
]

FORMAT_BODY = 0  # a row holding a request body as it goes on the wire (every older spool's)
FORMAT_CYCLE = 1  # a row holding a cycle record (this module)
RECORD_VERSION = 1  # the first byte of every record and dictionary entry
CHAIN_CYCLES = 64  # cycles per chain: a base entry every 64 cycles (16 min at 15 s)
FLAG_METADATA = 1  # the record's request carries the metric metadata
_CODE_LIMIT = 2**62  # codes beyond this are escaped, so that differences fit in 64 bits
_DOUBLE = struct.Struct("<d")
_ONES = itertools.repeat(1.0)


class RecordError(ValueError):
    """A record or dictionary entry that cannot be decoded (damaged, or from a newer agent)."""


# --- bytes --------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(buf):
            raise RecordError("truncated varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)  # raw deflate: the row has its own CRC
    return c.compress(raw) + c.flush()


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data, -15)
    except zlib.error as e:
        raise RecordError(f"inflate: {e}") from None


def pack_ints(ints: Sequence[int]) -> bytes:
    """Signed 64-bit integers, little-endian, byte plane by byte plane: all the lowest
    bytes, then all the second bytes… Small numbers leave whole planes of zeros."""
    raw = array("q", ints).tobytes()
    return b"".join(raw[i::8] for i in range(8))


def unpack_ints(planes: bytes, n: int) -> list[int]:
    if len(planes) != 8 * n:
        raise RecordError(f"{len(planes)} bytes of values for {n} values")
    raw = bytearray(8 * n)
    for i in range(8):
        raw[i::8] = planes[i * n : (i + 1) * n]
    return array("q", raw).tolist()


# --- values -------------------------------------------------------------------------------


def code_values(
    values: Sequence[float], scales: Sequence[float]
) -> tuple[list[int], dict[int, float]]:
    """Each value as the integer whose product with its scale is that very float, or, for
    the values that have none (escapes, by position), 0 and the float itself."""
    try:
        codes = list(map(round, map(operator.truediv, values, scales)))
    except (ValueError, OverflowError, ZeroDivisionError):  # NaN, inf, a zero scale
        return _code_slowly(values, scales)
    # Found by C-level loops: the values the codes do not give back, -0.0 (a zero whose
    # sign would be lost), and codes too large for 64-bit differences.
    odd = set(itertools.compress(itertools.count(), map(operator.ne,
                                 map(operator.mul, codes, scales), values)))  # fmt: skip
    if min(map(math.copysign, _ONES, values), default=1.0) < 0:
        odd.update(i for i, v in enumerate(values) if v == 0 and math.copysign(1.0, v) < 0)
    if codes and (max(codes) >= _CODE_LIMIT or min(codes) <= -_CODE_LIMIT):
        odd.update(i for i, c in enumerate(codes) if not -_CODE_LIMIT < c < _CODE_LIMIT)
    escapes = {i: values[i] for i in sorted(odd)}
    for i in escapes:
        codes[i] = 0
    return codes, escapes


def _code_slowly(
    values: Sequence[float], scales: Sequence[float]
) -> tuple[list[int], dict[int, float]]:
    codes: list[int] = []
    escapes: dict[int, float] = {}
    for i, (v, s) in enumerate(zip(values, scales, strict=True)):
        code = None
        if math.isfinite(v) and s and (v or math.copysign(1.0, v) > 0):
            c = round(v / s)
            if c * s == v and -_CODE_LIMIT < c < _CODE_LIMIT:
                code = c
        if code is None:
            escapes[i] = v
            code = 0
        codes.append(code)
    return codes, escapes


# --- dictionary entries and records ---------------------------------------------------------


def pack_entry(plans: Sequence[DomainPlan], codes: Sequence[int] | None) -> bytes:
    """A dictionary entry: these groups' series and scales, and (a base entry) their codes."""
    label_sets: dict[LabelPairs, int] = {}

    def ref(labels: LabelPairs) -> int:
        return label_sets.setdefault(labels, len(label_sets))

    groups = [
        [[k[0], ref(k[1]), ref(k[2]), s] for k, s in zip(p.series, p.scales, strict=True)]
        for p in plans
    ]
    doc = {"l": [[list(pair) for pair in ls] for ls in label_sets], "g": groups}
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    values = pack_ints(codes) if codes is not None else b""
    raw = bytes((1 if codes is not None else 0,)) + _varint(len(text)) + text + values
    return bytes((RECORD_VERSION,)) + _deflate(raw)


def unpack_entry(blob: bytes) -> tuple[list[DomainPlan], list[int] | None]:
    if blob[:1] != bytes((RECORD_VERSION,)):
        raise RecordError(f"dictionary entry of unknown version {blob[:1]!r}")
    raw = _inflate(blob[1:])
    if not raw:
        raise RecordError("empty dictionary entry")
    size, i = _read_varint(raw, 1)
    try:
        doc = json.loads(raw[i : i + size])
        sets = [tuple((str(n), str(v)) for n, v in ls) for ls in doc["l"]]
        plans = [_group_plan([((n, sets[o], sets[s]), float(sc)) for n, o, s, sc in g])
                 for g in doc["g"]]  # fmt: skip
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise RecordError(f"dictionary entry: {e!r}") from None
    if not raw[0]:
        return plans, None
    n = sum(len(p.series) for p in plans)
    return plans, unpack_ints(raw[i + size :], n)


def _group_plan(series: Sequence[tuple[SeriesKey, float]]) -> DomainPlan:
    """A group as a plan the wire encoders take (they read only `series`)."""
    return DomainPlan((), (), (), tuple(s for _, s in series), tuple(k for k, _ in series))


def pack_row(refs: Sequence[int], deltas: Sequence[int], escapes: dict[int, float],
             flags: int) -> bytes:  # fmt: skip
    head = bytearray((flags,))
    head += _varint(len(refs)) + b"".join(map(_varint, refs))
    head += _varint(len(escapes))
    for pos, value in escapes.items():
        head += _varint(pos) + _DOUBLE.pack(value)
    return bytes((RECORD_VERSION,)) + _deflate(bytes(head) + pack_ints(deltas))


def unpack_row(blob: bytes) -> tuple[int, list[int], dict[int, float], bytes]:
    """(flags, group indices, escapes, the differences' planes) of a record."""
    if blob[:1] != bytes((RECORD_VERSION,)):
        raise RecordError(f"record of unknown version {blob[:1]!r}")
    raw = _inflate(blob[1:])
    if not raw:
        raise RecordError("empty record")
    n, i = _read_varint(raw, 1)
    refs = []
    for _ in range(n):
        r, i = _read_varint(raw, i)
        refs.append(r)
    n, i = _read_varint(raw, i)
    escapes = {}
    for _ in range(n):
        pos, i = _read_varint(raw, i)
        if i + 8 > len(raw):
            raise RecordError("truncated escape")
        escapes[pos] = _DOUBLE.unpack_from(raw, i)[0]
        i += 8
    return raw[0], refs, escapes, raw[i:]


# --- writing ------------------------------------------------------------------------------


@dataclass
class _Chain:
    """The writer's side of a chain: its groups and their base codes."""

    id: int = 0  # the base entry's id, once the spool stored it
    plans: list[DomainPlan] = field(default_factory=list)
    base: list[list[int]] = field(default_factory=list)
    by_plan: dict[int, tuple[DomainPlan, int]] = field(default_factory=dict)  # id(plan)
    by_series: dict[tuple[SeriesKey, ...], int] = field(default_factory=dict)
    cycles: int = 0

    def index(self, plan: DomainPlan, new: list[DomainPlan]) -> int:
        hit = self.by_plan.get(id(plan))
        if hit is not None and hit[0] is plan:
            return hit[1]
        idx = self.by_series.get(plan.series)
        if idx is None or self.plans[idx].scales != plan.scales:
            idx = self.add(plan, new)
        self.by_plan[id(plan)] = (plan, idx)  # keeps `plan` alive: its id stays its own
        return idx

    def add(self, plan: DomainPlan, new: list[DomainPlan]) -> int:
        idx = len(self.plans)
        self.plans.append(plan)
        self.base.append([0] * len(plan.series))
        self.by_series[plan.series] = idx
        new.append(plan)
        return idx


@dataclass(frozen=True)
class Pending:
    """One cycle, ready to store: a dictionary entry (None when the chain knows every group),
    whether that entry starts a new chain, and the records with their sample counts."""

    entry: bytes | None
    new_chain: bool
    rows: list[tuple[bytes, int]]
    chain_id: int  # 0 for a new chain: the id its entry will get


class RecordWriter:
    """Cycles -> `Pending`s. `prepare` may add groups to the chain; the spool then calls
    `commit` once the cycle is stored, or `start_over` when it could not be (the next cycle
    starts a new chain, so no record ever refers to an entry that was not stored)."""

    def __init__(self, chain_cycles: int = CHAIN_CYCLES) -> None:
        self.chain_cycles = chain_cycles
        self._chain = _Chain()
        self._used: list[int] = []  # the groups of the last cycle

    @property
    def chain_id(self) -> int:
        """The chain the next cycle is added to (0: none yet, or a new one starts)."""
        return self._chain.id

    def start_over(self) -> None:
        self._chain = _Chain()

    def cached_series(self) -> int:
        """Series of the groups the last cycle used: they follow the live series."""
        return sum(len(self._chain.plans[i].series) for i in self._used
                   if i < len(self._chain.plans))  # fmt: skip

    def forget(self, keys: object) -> None:
        """Nothing to do: a chain's groups go with the chain."""

    def prepare(
        self,
        plans: Sequence[tuple[DomainPlan, Sequence[float]]],
        samples: Sequence[Sample],
        metadata: bool,
        max_samples: int,
    ) -> Pending:
        chain = self._chain
        if not chain.id or chain.cycles >= self.chain_cycles:
            chain = self._chain = _Chain()
        new: list[DomainPlan] = []
        groups = [(chain.index(p, new), v) for p, v in plans if p.series]
        if samples:
            keys = tuple(k for k, _ in samples)
            idx = chain.by_series.get(keys)
            if idx is None:
                idx = chain.add(_group_plan([(k, 1.0) for k in keys]), new)
            groups.append((idx, [v for _, v in samples]))
        coded = _code_groups(chain, groups)
        if not chain.id:  # a new chain: this cycle's codes are its base
            for i, codes, _ in coded:
                chain.base[i] = codes
        flags = FLAG_METADATA if metadata else 0
        rows = [(pack_row(*_row(chain, part), flags), sum(len(c) for _, c, _ in part))
                for part in _parts(coded, max_samples)]  # fmt: skip
        entry = None
        if not chain.id:
            entry = pack_entry(chain.plans, [c for b in chain.base for c in b])
        elif new:
            entry = pack_entry(new, None)
        self._used = [i for i, _ in groups]
        return Pending(entry, not chain.id, rows, chain.id)

    def commit(self, chain_id: int) -> None:
        self._chain.id = chain_id
        self._chain.cycles += 1


_Coded = tuple[int, list[int], dict[int, float]]  # group index, codes, escapes


def _code_groups(chain: _Chain, groups: list[tuple[int, Sequence[float]]]) -> list[_Coded]:
    """Every group's codes and escapes, found by one `code_values` over the whole cycle."""
    flat = itertools.chain.from_iterable
    codes, escapes = code_values(list(flat(v for _, v in groups)),
                                 list(flat(chain.plans[i].scales for i, _ in groups)))  # fmt: skip
    out: list[_Coded] = []
    start = 0
    odd = sorted(escapes)
    for i, values in groups:
        end = start + len(values)
        esc = {p - start: escapes[p] for p in odd[bisect.bisect_left(odd, start):
               bisect.bisect_left(odd, end)]}  # fmt: skip
        out.append((i, codes[start:end], esc))
        start = end
    return out


def _parts(coded: list[_Coded], max_samples: int) -> list[list[_Coded]]:
    """Whole groups, in order, at most `max_samples` samples a part (a bigger group alone)."""
    parts: list[list[_Coded]] = [[]]
    n = 0
    for g in coded:
        if parts[-1] and n + len(g[1]) > max_samples:
            parts.append([])
            n = 0
        parts[-1].append(g)
        n += len(g[1])
    return parts


def _row(chain: _Chain, part: list[_Coded]) -> tuple[list[int], list[int], dict[int, float]]:
    refs: list[int] = []
    deltas: list[int] = []
    escapes: dict[int, float] = {}
    for idx, codes, esc in part:
        refs.append(idx)
        start = len(deltas)
        deltas += map(operator.sub, codes, chain.base[idx])
        for pos, value in esc.items():
            deltas[start + pos] = 0
            escapes[start + pos] = value
    return refs, deltas, escapes


# --- reading ------------------------------------------------------------------------------


_Layout = tuple[list[DomainPlan], list[int], list[float]]  # groups, base codes, scales


@dataclass
class _ReadChain:
    plans: list[DomainPlan] = field(default_factory=list)
    base: list[list[int]] = field(default_factory=list)
    # group indices of a record -> its groups, and their base codes and scales end to end:
    # the records of a chain's cycles mostly share a few of these
    layouts: dict[tuple[int, ...], _Layout] = field(default_factory=dict)

    def layout(self, refs: Sequence[int]) -> _Layout:
        key = tuple(refs)
        hit = self.layouts.get(key)
        if hit is None:
            plans = [self.plans[r] for r in refs]
            base = [c for r in refs for c in self.base[r]]
            hit = (plans, base, [s for p in plans for s in p.scales])
            if len(self.layouts) < 4096:
                self.layouts[key] = hit
        return hit


class RecordReader:
    """Records -> groups and values, with the chains' dictionary entries loaded on demand."""

    def __init__(self) -> None:
        self._chains: dict[int, _ReadChain] = {}
        # The groups of the last chain loaded, by their series and scales: a group the next
        # chain has again is the same object, so the encoders' per-plan caches (the series'
        # bytes) carry over from chain to chain instead of being built anew every 64 cycles.
        self._groups: dict[tuple[tuple[SeriesKey, ...], tuple[float, ...]], DomainPlan] = {}

    def load(self, chain_id: int, entries: Sequence[bytes]) -> None:
        """A chain's entries, base first, in the order they were written."""
        chain = _ReadChain()
        groups: dict[tuple[tuple[SeriesKey, ...], tuple[float, ...]], DomainPlan] = {}
        for n, blob in enumerate(entries):
            plans, codes = unpack_entry(blob)
            if (codes is not None) != (n == 0):
                raise RecordError("a chain must start with its one base entry")
            values = iter(codes or ())
            for p in plans:
                key = (p.series, p.scales)
                p = groups[key] = self._groups.get(key, p)
                chain.plans.append(p)
                size = len(p.series)
                chain.base.append(list(itertools.islice(values, size)) if codes else [0] * size)
        self._chains[chain_id] = chain
        self._groups = groups

    def knows(self, chain_id: int, refs: Sequence[int]) -> bool:
        chain = self._chains.get(chain_id)
        return chain is not None and all(r < len(chain.plans) for r in refs)

    def forget_below(self, chain_id: int) -> None:
        for c in [c for c in self._chains if c < chain_id]:
            del self._chains[c]

    def decode(
        self, chain_id: int, refs: Sequence[int], escapes: dict[int, float], planes: bytes
    ) -> list[tuple[DomainPlan, list[float]]]:
        plans, base, scales = self._chains[chain_id].layout(refs)
        codes = map(operator.add, unpack_ints(planes, len(base)), base)
        values = list(map(operator.mul, codes, scales))
        for pos, value in escapes.items():
            if pos >= len(values):
                raise RecordError("escape beyond the record's values")
            values[pos] = value
        out = []
        start = 0
        for p in plans:
            end = start + len(p.series)
            out.append((p, values[start:end]))
            start = end
        return out


class Bodies:
    """Groups and values -> one request body in either protocol, with encoders whose caches
    (the series' bytes) live as long as the reader's groups."""

    def __init__(self) -> None:
        self._v1 = Encoder(2**31)
        self._v2: dict[tuple[int, ...], EncoderV2] = {}
        # 1.0 metadata by the groups of a record (held here, so their ids stay theirs)
        self._metadata: dict[tuple[int, ...], tuple[tuple[DomainPlan, ...], bytes]] = {}

    def _metadata_of(self, groups: Sequence[tuple[DomainPlan, list[float]]]) -> bytes:
        plans = tuple(p for p, _ in groups)
        key = tuple(map(id, plans))
        hit = self._metadata.get(key)
        if hit is None:
            if len(self._metadata) >= 64:
                self._metadata.clear()
            names = {n for p in plans for n in p.names}
            hit = self._metadata[key] = (plans, metadata_bytes(families_of(names)))
        return hit[1]

    def build(self, groups: Sequence[tuple[DomainPlan, list[float]]], ts_ms: int,
              proto: int, flags: int) -> bytes:  # fmt: skip
        if proto == 2:
            key = tuple(id(p) for p, _ in groups)
            encoder = self._v2.get(key)
            if encoder is None:
                if len(self._v2) >= 64:
                    self._v2.clear()
                encoder = self._v2[key] = EncoderV2(2**31)
            due = b"\x01" if flags & FLAG_METADATA else b""  # 2.0 interns it per series
            (request,) = encoder.encode((), ts_ms, due, groups)
            return request.body
        metadata = self._metadata_of(groups) if flags & FLAG_METADATA else b""
        (request,) = self._v1.encode((), ts_ms, metadata, groups)
        return request.body
