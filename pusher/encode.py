"""Samples -> remote-write 1.0 and 2.0 request bodies, those bodies cut in halves or merged
(for delivery), and -> text exposition for --dry-run.

The wire encoder writes the protobuf bytes of `prometheus.WriteRequest` (proto/remote_write.proto)
itself: a series' label bytes depend only on its labels, so they are built once and cached,
and each cycle only appends the 8-byte value and the timestamp. The tests check the bytes
against the classes generated from `proto/` (`pusher/pb`), which also decode 2.0 bodies when
a receiver turns out to take only 1.0.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import struct
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import snappy

from pusher.catalog import CATALOG, DomainPlan, Metric, Sample, SeriesKey, series_labels

__all__ = [
    "STALE_NAN",
    "Encoder",
    "EncoderV2",
    "Request",
    "compress",
    "count_series",
    "decompress",
    "exposition",
    "is_stale",
    "merge_bodies",
    "metadata_bytes",
    "split_body",
    "split_request",
    "v2_to_v1",
]

# Prometheus's staleness marker: a NaN with this exact bit pattern, used for nothing else.
STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
_DOUBLE = struct.Struct("<d")
# Remote-write MetricMetadata.MetricType numbers (the same in 1.0 and 2.0).
_TYPE_NUMBER = {"counter": 1, "gauge": 2}
_BY_NAME = {m.name: m for m in CATALOG}


def is_stale(value: float) -> bool:
    return bool(_DOUBLE.pack(value) == _DOUBLE.pack(STALE_NAN))


_SMALL = [bytes((i,)) for i in range(128)]  # the varints of one byte, made once


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64  # int64 fields encode negatives as ten-byte two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_bytes(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (tag already shifted with wire type 2)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


@functools.lru_cache(maxsize=65536)
def _pair_bytes(pair: tuple[str, str]) -> bytes:
    """A label's bytes (TimeSeries.labels = 1). Cached: a domain's series share most of
    their labels, and building a new chain's heads (pusher/record.py) meets them again."""
    inner = _field_bytes(0x0A, pair[0].encode()) + _field_bytes(0x12, pair[1].encode())
    return _field_bytes(0x0A, inner)


def _label_bytes(labels: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(map(_pair_bytes, labels))


def _sample_bytes(value: float, ts_ms: int) -> bytes:
    """Sample message bytes; like protobuf's own encoder, zero-valued fields are left out."""
    out = b""
    packed = _DOUBLE.pack(value)
    if packed != b"\x00" * 8:
        out += b"\x09" + packed  # Sample.value = 1, fixed64
    if ts_ms:
        out += b"\x10" + _varint(ts_ms)  # Sample.timestamp = 2, varint
    return out


def metadata_bytes(metrics: Iterable[Metric]) -> bytes:
    """WriteRequest.metadata entries (field 3) for these metric families."""
    out = bytearray()
    for m in metrics:
        inner = bytearray()
        inner += b"\x08" + _varint(_TYPE_NUMBER[m.type])
        inner += _field_bytes(0x12, m.name.encode())
        inner += _field_bytes(0x22, m.help.encode())
        if m.unit:
            inner += _field_bytes(0x2A, m.unit.encode())
        out += _field_bytes(0x1A, bytes(inner))
    return bytes(out)


def compress(raw: bytes) -> bytes:
    """Snappy block format, as remote-write requires (never the framed format)."""
    return bytes(snappy.compress(raw))


def decompress(body: bytes) -> bytes:
    return bytes(snappy.uncompress(body))


@dataclass(frozen=True)
class Request:
    """One encoded request: its snappy body, what it carries, and its protocol (1 or 2)."""

    body: bytes
    samples: int
    ts_ms: int
    proto: int = 1


def _splice(heads: list[bytes], ts_value: bytes, values: Sequence[float]) -> list[bytes]:
    """[head, ts_value, value] for every series, ready to join: built by slice assignment,
    with no bytes object made per sample but the packed value."""
    parts = [ts_value] * (3 * len(heads))
    parts[0::3] = heads
    parts[2::3] = list(map(_DOUBLE.pack, values))
    return parts


def _series_struct(
    head_lens: Iterable[int], ts_len: int, prefix: int | None = None
) -> struct.Struct:
    """The bytes of a request's series, after `prefix` bytes (a 2.0 symbol table): each
    series' head, the shared timestamp and its value, packed by one C call from the floats,
    with no bytes object made per sample. Built once per layout of heads."""
    item = f"{ts_len}sd"
    fmt = "".join(f"{h}s{item}" for h in head_lens)
    return struct.Struct(f"<{fmt}" if prefix is None else f"<{prefix}s{fmt}")


def _pack(packer: struct.Struct, heads: list[bytes], ts_value: bytes,
          values: Sequence[float], *prefix: bytes) -> bytes:  # fmt: skip
    """`_splice`, packed by the layout's `_series_struct`."""
    parts: list[object] = [ts_value] * (3 * len(heads))
    parts[0::3] = heads
    parts[2::3] = values  # as many as heads, or ValueError
    return packer.pack(*prefix, *parts)


class Encoder:
    """Turns one cycle's samples into request bodies of at most `max_samples` samples each.

    A series is written as its "head" (every byte of its TimeSeries before the Sample's
    fields: length, labels, the Sample's tag and length), then the Sample with its timestamp
    first and its value last: `10 <ts varint> 09` is the same bytes for every sample of a
    cycle, so a body is the join of cached heads, one shared object and 8-byte values, with
    no bytes built per sample. (Protobuf parsers accept fields in any order; the tests check
    that the generated classes decode exactly the series written.) Heads depend only on the
    labels and on the timestamp's varint length (the same for centuries), so they are built
    once: per plan for domain series, whose plans live as long as the domain's keys and
    labels do, and per series key for the few others. `forget` drops heads of series gone.
    """

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._heads: dict[SeriesKey, bytes] = {}
        self._plan_heads: weakref.WeakKeyDictionary[DomainPlan, tuple[int, list[bytes]]] = (
            weakref.WeakKeyDictionary()
        )
        self._ts_len = -1
        # packers of whole requests by their plans (compared by identity, and kept alive)
        self._packers: dict[tuple[DomainPlan, ...], struct.Struct] = {}

    def forget(self, keys: Iterable[SeriesKey]) -> None:
        for k in keys:
            self._heads.pop(k, None)

    def cached_series(self) -> int:
        return len(self._heads) + sum(len(h) for _, h in self._plan_heads.values())

    @staticmethod
    def _head(key: SeriesKey, sample_len: int) -> bytes:
        labels = _label_bytes(series_labels(key))
        inner_len = len(labels) + 1 + len(_varint(sample_len)) + sample_len
        return b"\x0a" + _varint(inner_len) + labels + b"\x12" + _varint(sample_len)

    def _key_heads(self, keys: Iterable[SeriesKey]) -> list[bytes]:
        heads = self._heads
        out = []
        for key in keys:
            h = heads.get(key)
            if h is None:
                h = heads[key] = self._head(key, self._ts_len + 8)
            out.append(h)
        return out

    def plan_heads(self, plan: DomainPlan) -> list[bytes]:
        cached = self._plan_heads.get(plan)
        if cached is None or cached[0] != self._ts_len:
            cached = (self._ts_len, [self._head(k, self._ts_len + 8) for k in plan.series])
            self._plan_heads[plan] = cached
        return cached[1]

    def _packer(
        self, plans: Sequence[tuple[DomainPlan, Sequence[float]]], heads: list[bytes]
    ) -> struct.Struct:
        key = tuple(p for p, _ in plans)
        packer = self._packers.get(key)
        if packer is None:
            if len(self._packers) >= 64:
                self._packers.clear()
            packer = self._packers[key] = _series_struct(map(len, heads), self._ts_len)
        return packer

    def encode(
        self,
        samples: Sequence[Sample],
        ts_ms: int,
        metadata: bytes = b"",
        plans: Sequence[tuple[DomainPlan, Sequence[float]]] = (),
    ) -> list[Request]:
        """One cycle, all taken at `ts_ms` -> compressed request bodies, in order.

        `plans` are (plan, values) of domains; `samples` the other series. `metadata`
        (from `metadata_bytes`) rides in the first request.
        """
        # Sample.timestamp (field 2, varint; protobuf leaves 0 out), then the value's tag.
        ts_value = (b"\x10" + _varint(ts_ms) if ts_ms else b"") + b"\x09"
        if len(ts_value) != self._ts_len:  # the varint grew: every head's length changes
            self._heads.clear()
            self._plan_heads.clear()
            self._packers.clear()
            self._ts_len = len(ts_value)
        heads: list[bytes] = []
        values: list[float] = []
        for plan, plan_values in plans:
            heads += self.plan_heads(plan)
            values += plan_values
        if samples:
            heads += self._key_heads(key for key, _ in samples)
            values += [v for _, v in samples]
        n = len(heads)
        step = self.max_samples
        if not samples and 0 < n <= step:  # one request of plans (a spooled cycle's row)
            raw = _pack(self._packer(plans, heads), heads, ts_value, values) + metadata
            return [Request(compress(raw), n, ts_ms)]
        parts = _splice(heads, ts_value, values)
        requests: list[Request] = []
        for start in range(0, max(n, 1), step):
            raw = b"".join(parts[3 * start : 3 * (start + step)])
            if start == 0:
                raw += metadata
            if raw:
                requests.append(Request(compress(raw), min(step, n - start), ts_ms))
        return requests


def label_strings(key: SeriesKey) -> tuple[str, ...]:
    """A series' label names and values, in label order: name, value, name, value…"""
    return tuple(itertools.chain.from_iterable(series_labels(key)))


_PLAN_STRINGS: weakref.WeakKeyDictionary[DomainPlan, list[tuple[str, ...]]] = (
    weakref.WeakKeyDictionary()
)


def plan_strings(plan: DomainPlan) -> list[tuple[str, ...]]:
    """`label_strings` of a plan's series, kept as long as the plan lives."""
    cached = _PLAN_STRINGS.get(plan)
    if cached is None:
        cached = _PLAN_STRINGS[plan] = [label_strings(k) for k in plan.series]
    return cached


_NO_META: tuple[bytes, tuple[str, ...]] = (b"", ())


@functools.lru_cache(maxsize=1024)
def _series_meta(name: str) -> tuple[bytes, tuple[str, ...]]:
    """A 2.0 series' metadata: its type's bytes, and the strings it refers to (help, and
    unit if any); none for a metric outside the catalog."""
    metric = _BY_NAME.get(name)
    if metric is None:
        return _NO_META
    strings = (metric.help, metric.unit) if metric.unit else (metric.help,)
    return b"\x08" + _varint(_TYPE_NUMBER[metric.type]), strings


# a 2.0 request's layout: its symbol table, its series' heads, and their packer
_Skeleton = tuple[bytes, list[bytes], struct.Struct]


class EncoderV2:
    """Remote-Write 2.0 (`io.prometheus.write.v2.Request`): each request carries a table of
    its strings (`symbols`, symbols[0] = ""), and each series refers to its label names and
    values, and to its metric's help and unit, by index into it; the type rides with every
    series as metadata. Label sets shared by a domain's 50-odd series are written once per
    request instead of once per sample.

    A request's symbol table depends on which series it holds. The domain series are cut
    into requests in plan order, so while the domains' plans stay the same (the usual
    cycle), so do the requests' layouts: those "skeletons" (symbol table, and each series'
    head up to its Sample) are cached and a cycle only splices in the timestamp and values.
    The few other series (the agent's own, stale markers, info) go in a last request built
    afresh. Like the 1.0 encoder, a Sample is written timestamp first.
    """

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        # Skeletons without the series' metadata (most cycles) and with it (once a
        # `remote_write.metadata_interval`), each kept while the plans stay the same.
        self._layout: tuple[tuple[DomainPlan, ...], int] | None = None
        self._skeletons: list[_Skeleton] = []
        self._meta_layout: tuple[tuple[DomainPlan, ...], int] | None = None
        self._meta_skeletons: list[_Skeleton] = []

    def cached_series(self) -> int:
        """Series in the skeletons of the current plans (kept twice: with and without the
        metadata; counted once)."""
        counts = [sum(len(h) for _, h, _ in sk) for sk in (self._skeletons, self._meta_skeletons)]
        return max(counts)

    def _plan_skeletons(
        self,
        plans: Sequence[tuple[DomainPlan, Sequence[float]]],
        sample_len: int,
        with_metadata: bool,
    ) -> list[_Skeleton]:
        layout = (tuple(p for p, _ in plans), sample_len)
        if layout == (self._meta_layout if with_metadata else self._layout):
            return self._meta_skeletons if with_metadata else self._skeletons
        series = [k for p, _ in plans for k in p.series]
        strings = [t for p, _ in plans for t in plan_strings(p)]
        step = self.max_samples
        skeletons = []
        for i in range(0, len(series), step):
            table, heads = self._skeleton(series[i : i + step], sample_len, with_metadata,
                                          strings[i : i + step])  # fmt: skip
            packer = _series_struct(map(len, heads), sample_len - 8, len(table))
            skeletons.append((table, heads, packer))
        # The other variant stays if it was built for these plans (metadata comes and goes
        # on the same plans); built for others, it goes, with the plans it holds.
        if with_metadata:
            self._meta_layout, self._meta_skeletons = layout, skeletons
            if self._layout != layout:
                self._layout, self._skeletons = None, []
        else:
            self._layout, self._skeletons = layout, skeletons
            if self._meta_layout != layout:
                self._meta_layout, self._meta_skeletons = None, []
        return skeletons

    def forget(self, keys: Iterable[SeriesKey]) -> None:
        """Nothing to do: skeletons are rebuilt whenever the plans change."""

    @staticmethod
    def _skeleton(
        series: Sequence[SeriesKey],
        sample_len: int,
        with_metadata: bool = True,
        strings: Sequence[tuple[str, ...]] | None = None,
    ) -> tuple[bytes, list[bytes]]:
        """A request's symbol table and its series' heads. `strings` are the series' label
        names and values (`label_strings`), when the caller has them already."""
        if strings is None:
            strings = [label_strings(k) for k in series]
        metas = [_series_meta(k[0]) if with_metadata else _NO_META for k in series]
        # Symbols in order of first use, as interning them one by one would number them.
        symbols = dict.fromkeys(itertools.chain(("",), *map(operator.add, strings,
                                                             (m[1] for m in metas))))  # fmt: skip
        ref = dict(zip(symbols, map(_varint, range(len(symbols))), strict=True)).__getitem__
        heads = []
        sample_field = b"\x12" + _varint(sample_len)
        for labels, (type_bytes, meta_strings) in zip(strings, metas, strict=True):
            refs = b"".join(map(ref, labels))
            inner = b"\x0a" + _varint(len(refs)) + refs
            if type_bytes:
                meta = type_bytes + b"\x18" + ref(meta_strings[0])
                if len(meta_strings) > 1:
                    meta += b"\x20" + ref(meta_strings[1])
                inner += b"\x2a" + _varint(len(meta)) + meta
            total = len(inner) + len(sample_field) + sample_len
            heads.append(b"\x2a" + _varint(total) + inner + sample_field)
        table = b"".join(_field_bytes(0x22, s.encode()) for s in symbols)
        return table, heads

    def encode(
        self,
        samples: Sequence[Sample],
        ts_ms: int,
        metadata: bytes = b"",
        plans: Sequence[tuple[DomainPlan, Sequence[float]]] = (),
    ) -> list[Request]:
        """One cycle -> compressed 2.0 request bodies, in order. Each series carries its
        metadata (type, and help and unit interned) in the cycles where `metadata` is given
        (the 1.0 metadata's bytes, due once a `remote_write.metadata_interval`): help texts
        are long, and would otherwise dominate a small node's requests."""
        ts_value = (b"\x10" + _varint(ts_ms) if ts_ms else b"") + b"\x09"
        sample_len = len(ts_value) + 8
        with_metadata = bool(metadata)
        skeletons = self._plan_skeletons(plans, sample_len, with_metadata)
        values: list[float] = []
        for _, plan_values in plans:
            values += plan_values
        requests: list[Request] = []
        start = 0
        for table, heads, packer in skeletons:
            n = len(heads)
            raw = _pack(packer, heads, ts_value, values[start : start + n], table)
            requests.append(Request(compress(raw), n, ts_ms, 2))
            start += n
        for i in range(0, len(samples), self.max_samples):
            chunk = samples[i : i + self.max_samples]
            table, heads = self._skeleton([k for k, _ in chunk], sample_len, with_metadata)
            parts = _splice(heads, ts_value, [v for _, v in chunk])
            requests.append(Request(compress(table + b"".join(parts)), len(chunk), ts_ms, 2))
        return requests


# --- taking requests apart and putting them together (delivery's 413 split and merging) -----

_V1_SERIES_TAG = b"\x0a"  # WriteRequest.timeseries = 1


def split_request(raw: bytes) -> list[bytes]:
    """An uncompressed request's top-level fields, each as its own bytes, in order."""
    fields: list[bytes] = []
    i = 0
    while i < len(raw):
        start = i
        i += 1  # every field this agent writes has a one-byte tag
        length = shift = 0
        while True:
            b = raw[i]
            i += 1
            length |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        i += length
        fields.append(raw[start:i])
    return fields


def count_series(fields: Sequence[bytes]) -> int:
    """Samples in these top-level fields of a 1.0 request: every series this agent writes
    holds one."""
    return sum(1 for f in fields if f[:1] == _V1_SERIES_TAG)


def split_body(body: bytes, proto: int = 1) -> tuple[Request, Request] | None:
    """A compressed request cut in two halves of its series; None when it holds one series
    or less. A 2.0 request's halves each get a symbol table of only the strings their own
    series use, so a half is about half the size. The halves' `ts_ms` is 0: they are parts,
    not cycles."""
    if proto == 2:
        return _split_v2(body)
    fields = split_request(decompress(body))
    if len(fields) < 2:
        return None
    mid = len(fields) // 2
    first, second = fields[:mid], fields[mid:]
    return (
        Request(compress(b"".join(first)), count_series(first), 0),
        Request(compress(b"".join(second)), count_series(second), 0),
    )


def _split_v2(body: bytes) -> tuple[Request, Request] | None:
    from pusher.pb import remote_write_v2_pb2 as v2

    req = v2.Request.FromString(decompress(body))
    if len(req.timeseries) < 2:
        return None
    mid = len(req.timeseries) // 2
    halves = []
    for part in (req.timeseries[:mid], req.timeseries[mid:]):
        table: dict[int, int] = {0: 0}  # old symbol index -> new; "" stays first
        out = v2.Request()
        for ts in part:
            new = out.timeseries.add()
            new.CopyFrom(ts)
            new.labels_refs[:] = [table.setdefault(r, len(table)) for r in ts.labels_refs]
            meta = new.metadata
            if meta.help_ref:
                meta.help_ref = table.setdefault(meta.help_ref, len(table))
            if meta.unit_ref:
                meta.unit_ref = table.setdefault(meta.unit_ref, len(table))
        out.symbols.extend(req.symbols[old] for old in sorted(table, key=table.__getitem__))
        samples = sum(len(ts.samples) for ts in part)
        halves.append(Request(compress(out.SerializeToString()), samples, 0, 2))
    return halves[0], halves[1]


def merge_bodies(bodies: Iterable[bytes]) -> bytes:
    """Compressed 1.0 requests as one: the concatenation of two WriteRequests is the
    WriteRequest of all their series (repeated fields append). Not for 2.0, whose series
    refer to their own request's symbols."""
    return compress(b"".join(decompress(b) for b in bodies))


def decode_v2(raw: bytes) -> list[tuple[list[tuple[str, str]], list[tuple[int, float]]]]:
    """An uncompressed 2.0 request -> [(labels, [(ts_ms, value)])], with the generated
    classes; for turning spooled 2.0 requests into 1.0 ones when a receiver needs that."""
    from pusher.pb import remote_write_v2_pb2

    req = remote_write_v2_pb2.Request.FromString(raw)
    sym = list(req.symbols)
    out = []
    for ts in req.timeseries:
        refs = list(ts.labels_refs)
        labels = [(sym[refs[i]], sym[refs[i + 1]]) for i in range(0, len(refs), 2)]
        out.append((labels, [(s.timestamp, s.value) for s in ts.samples]))
    return out


def v2_to_v1(body: bytes) -> bytes:
    """A compressed 2.0 request body -> the same series as a compressed 1.0 body."""
    out = bytearray()
    for labels, samples in decode_v2(decompress(body)):
        series = _label_bytes(labels)
        for ts_ms, value in samples:
            sample = (b"\x10" + _varint(ts_ms) if ts_ms else b"") + b"\x09" + _DOUBLE.pack(value)
            inner = series + _field_bytes(0x12, sample)
            out += _field_bytes(0x0A, inner)
    return compress(bytes(out))


# --- text exposition (for --dry-run) ------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def exposition(samples: Iterable[Sample], ts_ms: int | None = None) -> str:
    """Prometheus text format 0.0.4, families in catalog order, with HELP and TYPE.

    Stale markers are left out: they mean "this series ended", which text has no way to say.
    """
    families: dict[str, list[tuple[SeriesKey, float]]] = {}
    for key, value in samples:
        if not is_stale(value):
            families.setdefault(key[0], []).append((key, value))
    order = [m for m in CATALOG if m.name in families]
    order += [_unknown(n) for n in families if n not in {m.name for m in order}]
    suffix = f" {ts_ms}" if ts_ms is not None else ""
    lines: list[str] = []
    for m in order:
        lines.append(f"# HELP {m.name} {m.help}")
        lines.append(f"# TYPE {m.name} {m.type}")
        for key, value in sorted(families[m.name], key=lambda kv: series_labels(kv[0])):
            labels = ",".join(
                f'{k}="{_escape(v)}"' for k, v in series_labels(key) if k != "__name__"
            )
            lines.append(f"{m.name}{{{labels}}} {_format_value(value)}{suffix}")
    return "\n".join(lines) + ("\n" if lines else "")


def _unknown(name: str) -> Metric:
    return Metric(name, "counter" if name.endswith("_total") else "gauge", "", "Not in catalog.")
