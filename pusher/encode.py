"""Samples -> remote-write 1.0 request bodies, and -> text exposition for --dry-run.

The wire encoder writes the protobuf bytes of `prometheus.WriteRequest` (proto/remote_write.proto)
itself: a series' label bytes depend only on its labels, so they are built once and cached,
and each cycle only appends the 8-byte value and the timestamp. The tests check the bytes
against the classes generated from `proto/` (`pusher/pb`), which also decode bodies when a
request must be split.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import snappy

from pusher.catalog import CATALOG, Metric, Sample, SeriesKey, series_labels

__all__ = [
    "STALE_NAN",
    "Encoder",
    "Request",
    "compress",
    "decompress",
    "exposition",
    "is_stale",
    "metadata_bytes",
]

# Prometheus's staleness marker: a NaN with this exact bit pattern, used for nothing else.
STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
_DOUBLE = struct.Struct("<d")
# Remote-write MetricMetadata.MetricType numbers.
_TYPE_NUMBER = {"counter": 1, "gauge": 2}


def is_stale(value: float) -> bool:
    return bool(_DOUBLE.pack(value) == _DOUBLE.pack(STALE_NAN))


def _varint(n: int) -> bytes:
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


def _label_bytes(labels: Iterable[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in labels:
        inner = _field_bytes(0x0A, name.encode()) + _field_bytes(0x12, value.encode())
        out += _field_bytes(0x0A, inner)  # TimeSeries.labels = 1
    return bytes(out)


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
    """One encoded request: its snappy body and what it carries."""

    body: bytes
    samples: int
    ts_ms: int


class Encoder:
    """Turns one cycle's samples into request bodies of at most `max_samples` samples each.

    Keeps the encoded label bytes of every series it has seen; `forget` drops those of
    series that are gone so the cache never outgrows the live series.
    """

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._labels: dict[SeriesKey, bytes] = {}

    def forget(self, keys: Iterable[SeriesKey]) -> None:
        for k in keys:
            self._labels.pop(k, None)

    def cached_series(self) -> int:
        return len(self._labels)

    def _series_label_bytes(self, key: SeriesKey) -> bytes:
        b = self._labels.get(key)
        if b is None:
            b = self._labels[key] = _label_bytes(series_labels(key))
        return b

    def encode(self, samples: Sequence[Sample], ts_ms: int, metadata: bytes = b"") -> list[Request]:
        """Samples all taken at `ts_ms` -> compressed request bodies, in order.

        `metadata` (from `metadata_bytes`) rides in the first request.
        """
        ts_field = b"\x10" + _varint(ts_ms) if ts_ms else b""
        zero_sample = _field_bytes(0x12, ts_field)  # value 0.0 is left out, like protobuf
        requests: list[Request] = []
        for start in range(0, max(len(samples), 1), self.max_samples):
            chunk = samples[start : start + self.max_samples]
            out = bytearray()
            for key, value in chunk:
                packed = _DOUBLE.pack(value)
                if packed == b"\x00" * 8:
                    sample = zero_sample
                else:
                    sample = _field_bytes(0x12, b"\x09" + packed + ts_field)
                inner = self._series_label_bytes(key) + sample
                out += b"\x0a" + _varint(len(inner)) + inner  # WriteRequest.timeseries = 1
            if start == 0:
                out += metadata  # field 3 after field 1: the order protobuf itself writes
            if out:
                requests.append(Request(compress(bytes(out)), len(chunk), ts_ms))
        return requests


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
