"""pusher.encode: the hand-written remote-write encoder, checked against the generated classes."""

from __future__ import annotations

import filecmp
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import snappy

from pusher import catalog
from pusher.catalog import CATALOG, Sample, series_labels
from pusher.encode import (
    STALE_NAN,
    STALE_NAN_BITS,
    Encoder,
    EncoderV2,
    compress,
    decompress,
    exposition,
    is_stale,
    metadata_bytes,
)
from pusher.pb.remote_write_pb2 import Label, MetricMetadata, TimeSeries, WriteRequest
from pusher.pb.remote_write_pb2 import Sample as PbSample

REPO = Path(__file__).resolve().parents[2]
FRAMED_STREAM_ID = b"\xff\x06\x00\x00sNaPpY"
TS = 1_763_892_015_123

SHARED = (("domain", "instance-0000002a"), ("host", "kvm-1"), ("project_name", "Ünïcødé-实例"),
          ("uuid", "5d3c8a2e-1f4b-4c2a-9d1e-7a6b5c4d3e2f"))  # fmt: skip
VALUES = [0.0, -0.0, 1.0, -1.5, 1e308, -1.7976931348623157e308, 5e-324, 2.0**63, 123.456,
          float("inf"), float("-inf"), float("nan"), STALE_NAN]  # fmt: skip


def bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def sample_set() -> list[Sample]:
    """One sample per value, each on its own series; plus device series and a long label."""
    out: list[Sample] = []
    for i, v in enumerate(VALUES):
        out.append((("libvirt_domain_vcpu_time_seconds_total", (("vcpu", str(i)),), SHARED), v))
    out.append((("libvirt_domain_info_memory_usage_bytes", (), SHARED), 2_147_483_648.0))
    long_path = "/var/lib/nova/instances/" + "x" * 300 + "/disk"
    own = (("source_file", long_path), ("target_device", "vda"))
    out.append((("libvirt_domain_block_stats_read_bytes_total", own, SHARED), 312_918_016.0))
    out.append((("libvirt_up", (), (("host", "kvm-1"),)), 1.0))
    return out


def decode(body: bytes) -> WriteRequest:
    return WriteRequest.FromString(decompress(body))


def canonical(body: bytes) -> bytes:
    """What the generated classes decode from a body, written back in protobuf's canonical
    field order. The encoder writes each Sample's timestamp before its value (any order is
    valid protobuf), so equality with `reference` means: exactly the same message."""
    return decode(body).SerializeToString()


def reference(samples: list[Sample], ts_ms: int, metrics: list[catalog.Metric] = ()) -> bytes:
    """The same data built with the classes generated from proto/remote_write.proto."""
    wr = WriteRequest()
    for key, value in samples:
        wr.timeseries.append(
            TimeSeries(
                labels=[Label(name=n, value=v) for n, v in series_labels(key)],
                samples=[PbSample(value=value, timestamp=ts_ms)],
            )
        )
    for m in metrics:
        wr.metadata.append(
            MetricMetadata(
                type=MetricMetadata.COUNTER if m.type == "counter" else MetricMetadata.GAUGE,
                metric_family_name=m.name,
                help=m.help,
                unit=m.unit,
            )
        )
    return wr.SerializeToString()


# --- round trip through the generated classes --------------------------------------------


def test_round_trip_keeps_labels_values_and_timestamps() -> None:
    samples = sample_set()
    (request,) = Encoder(1000).encode(samples, TS)
    assert (request.samples, request.ts_ms) == (len(samples), TS)
    wr = decode(request.body)
    assert len(wr.timeseries) == len(samples)
    for ts, (key, value) in zip(wr.timeseries, samples, strict=True):
        names = [label.name for label in ts.labels]
        assert names == sorted(names)
        assert len(names) == len(set(names))
        assert names.count("__name__") == 1
        assert all(label.name and label.value for label in ts.labels)
        labels = {label.name: label.value for label in ts.labels}
        assert labels["__name__"] == key[0]
        assert labels == {**dict(key[2]), **dict(key[1]), "__name__": key[0]}
        assert len(ts.samples) == 1
        assert ts.samples[0].timestamp == TS
        assert bits(ts.samples[0].value) == bits(value)


def test_stale_marker_bit_pattern_survives_bit_exact() -> None:
    assert bits(STALE_NAN) == STALE_NAN_BITS == 0x7FF0000000000002
    key = ("libvirt_domain_vcpu_time_seconds_total", (("vcpu", "0"),), SHARED)
    (request,) = Encoder(10).encode([(key, STALE_NAN)], TS)
    value = decode(request.body).timeseries[0].samples[0].value
    assert bits(value) == 0x7FF0000000000002
    assert is_stale(value)


def test_is_stale_is_true_only_for_the_exact_bit_pattern() -> None:
    assert is_stale(STALE_NAN)
    assert not is_stale(float("nan"))
    assert not is_stale(struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0])
    assert not is_stale(float("inf"))
    assert not is_stale(0.0)


@pytest.mark.parametrize("ts_ms", [TS, 1, 0, -1, 2**62, -(2**40)])
def test_timestamps_round_trip(ts_ms: int) -> None:
    (request,) = Encoder(10).encode([(("libvirt_up", (), ()), 1.0)], ts_ms)
    assert decode(request.body).timeseries[0].samples[0].timestamp == ts_ms


# --- byte identity with protobuf's own serializer ----------------------------------------


@pytest.mark.parametrize("ts_ms", [TS, 0, -1, 127, 128, 2**63 - 1])
def test_decodes_to_exactly_the_message_built_with_the_generated_classes(ts_ms: int) -> None:
    samples = sample_set()
    (request,) = Encoder(1000).encode(samples, ts_ms)
    assert canonical(request.body) == reference(samples, ts_ms)


def test_with_metadata_decodes_to_exactly_the_generated_classes_message() -> None:
    samples = sample_set()
    (request,) = Encoder(1000).encode(samples, TS, metadata_bytes(CATALOG))
    assert canonical(request.body) == reference(samples, TS, list(CATALOG))


def test_cached_heads_give_the_same_message_on_the_next_cycle() -> None:
    samples = sample_set()
    encoder = Encoder(1000)
    encoder.encode(samples, TS)
    assert encoder.cached_series() == len(samples)
    (second,) = encoder.encode(samples, TS + 15_000)
    assert canonical(second.body) == reference(samples, TS + 15_000)
    encoder.forget([samples[0][0], samples[1][0]])
    assert encoder.cached_series() == len(samples) - 2


# --- chunking ----------------------------------------------------------------------------


def test_requests_hold_at_most_max_samples_in_order() -> None:
    samples = sample_set()  # 16 samples
    requests = Encoder(5).encode(samples, TS)
    assert [r.samples for r in requests] == [5, 5, 5, 1]
    decoded = [decode(r.body) for r in requests]
    assert [len(wr.timeseries) for wr in decoded] == [5, 5, 5, 1]
    names = [
        tuple((label.name, label.value) for label in ts.labels)
        for wr in decoded
        for ts in wr.timeseries
    ]
    assert names == [tuple(series_labels(key)) for key, _ in samples]
    for r, (start, end) in zip(requests, [(0, 5), (5, 10), (10, 15), (15, 16)], strict=True):
        assert canonical(r.body) == reference(samples[start:end], TS)


def test_exactly_max_samples_is_one_request() -> None:
    samples = sample_set()
    assert len(Encoder(len(samples)).encode(samples, TS)) == 1


def test_metadata_rides_only_in_the_first_request() -> None:
    requests = Encoder(4).encode(sample_set(), TS, metadata_bytes(CATALOG))
    metadata_counts = [len(decode(r.body).metadata) for r in requests]
    assert metadata_counts == [len(CATALOG), 0, 0, 0]


def test_no_samples_and_no_metadata_is_no_request() -> None:
    assert Encoder(10).encode([], TS) == []


def test_metadata_alone_is_one_request_of_zero_samples() -> None:
    (request,) = Encoder(10).encode([], TS, metadata_bytes(CATALOG[:3]))
    assert request.samples == 0
    wr = decode(request.body)
    assert len(wr.timeseries) == 0
    assert [m.metric_family_name for m in wr.metadata] == [m.name for m in CATALOG[:3]]


# --- metadata ----------------------------------------------------------------------------


def test_metadata_decodes_with_type_help_and_unit() -> None:
    wr = WriteRequest.FromString(metadata_bytes(CATALOG))
    assert len(wr.metadata) == len(CATALOG)
    for md, m in zip(wr.metadata, CATALOG, strict=True):
        assert md.metric_family_name == m.name
        assert md.type == {"counter": MetricMetadata.COUNTER, "gauge": MetricMetadata.GAUGE}[m.type]
        assert md.help == m.help
        assert md.unit == m.unit
    units = {md.metric_family_name: md.unit for md in wr.metadata}
    assert units["libvirt_domain_info_cpu_time_seconds_total"] == "seconds"
    assert units["libvirt_domain_info_memory_usage_bytes"] == "bytes"
    assert units["libvirt_up"] == ""


# --- snappy framing ----------------------------------------------------------------------


def read_varint(data: bytes) -> int:
    n = shift = 0
    for i, b in enumerate(data):
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n
        shift += 7
        assert i < 10
    raise AssertionError("truncated varint")


def test_bodies_use_the_snappy_block_format_not_the_framed_one() -> None:
    for request in Encoder(5).encode(sample_set(), TS, metadata_bytes(CATALOG)):
        assert not request.body.startswith(FRAMED_STREAM_ID)
        raw = snappy.uncompress(request.body)
        # A block starts with the uncompressed length as a varint.
        assert read_varint(request.body) == len(raw)


def test_compress_and_decompress_are_the_block_format() -> None:
    raw = b"remote-write " * 100
    body = compress(raw)
    assert not body.startswith(FRAMED_STREAM_ID)
    assert read_varint(body) == len(raw)
    assert snappy.uncompress(body) == raw
    assert decompress(snappy.compress(raw)) == raw


# --- text exposition ---------------------------------------------------------------------

SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$")


def parse_labels(text: str) -> dict[str, str]:
    """`a="x",b="y\\"z"` -> dict, undoing the text format's escapes; strict about syntax."""
    labels: dict[str, str] = {}
    i = 0
    while i < len(text):
        m = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="').match(text, i)
        assert m, f"bad label at {text[i:]!r}"
        i = m.end()
        value = []
        while text[i] != '"':
            if text[i] == "\\":
                esc = text[i + 1]
                assert esc in '\\"n', f"bad escape \\{esc}"
                value.append({"\\": "\\", '"': '"', "n": "\n"}[esc])
                i += 2
            else:
                assert text[i] != "\n"
                value.append(text[i])
                i += 1
        i += 1
        assert m.group(1) not in labels
        labels[m.group(1)] = "".join(value)
        if i < len(text):
            assert text[i] == ",", f"expected a comma at {text[i:]!r}"
            i += 1
    return labels


def parse_exposition(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple]]:
    """-> ({family: (help, type)}, [(name, labels, value, ts)]); asserts the text is well formed."""
    families: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples: list[tuple] = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in helps, f"second HELP for {name}"
            helps[name] = help_
        elif line.startswith("# TYPE "):
            name, _, type_ = line[7:].partition(" ")
            assert name in helps and name not in families, line
            assert type_ in ("counter", "gauge")
            families[name] = (helps[name], type_)
        else:
            m = SAMPLE_LINE.match(line)
            assert m, f"unparseable line {line!r}"
            name, labels, value, ts = m.groups()
            assert name in families, f"sample before its TYPE: {line!r}"
            samples.append((name, parse_labels(labels or ""), value, ts))
    return families, samples


def test_exposition_parses_with_help_type_and_escaped_label_values() -> None:
    tricky = 'C:\\path "quoted"\nsecond line'
    shared = (("host", "kvm-1"), ("instance_name", tricky))
    samples: list[Sample] = [
        (("libvirt_domain_vcpu_time_seconds_total", (("vcpu", "1"),), shared), 19.62),
        (("libvirt_domain_vcpu_time_seconds_total", (("vcpu", "0"),), shared), 21.87),
        (("libvirt_domain_info_memory_usage_bytes", (), shared), 2_147_483_648.0),
        (("libvirt_up", (), (("host", "kvm-1"),)), 1.0),
        (("libvirt_domain_vcpu_time_seconds_total", (("vcpu", "2"),), shared), STALE_NAN),
    ]
    text = exposition(samples)
    families, parsed = parse_exposition(text)
    assert families == {
        m: (catalog.by_name(m).help, catalog.by_name(m).type)
        for m in ("libvirt_up", "libvirt_domain_info_memory_usage_bytes",
                  "libvirt_domain_vcpu_time_seconds_total")
    }  # fmt: skip
    # Families in catalog order.
    order = [m.name for m in CATALOG if m.name in families]
    assert list(families) == order
    got = {(name, tuple(sorted(labels.items()))): value for name, labels, value, _ in parsed}
    assert len(got) == len(parsed) == 4  # the stale marker is left out
    vcpu0 = ("libvirt_domain_vcpu_time_seconds_total",
             (("host", "kvm-1"), ("instance_name", tricky), ("vcpu", "0")))  # fmt: skip
    assert float(got[vcpu0]) == 21.87
    mem = ("libvirt_domain_info_memory_usage_bytes", (("host", "kvm-1"), ("instance_name", tricky)))
    assert float(got[mem]) == 2_147_483_648.0
    assert 'vcpu="2"' not in text


def test_exposition_appends_the_timestamp_when_given() -> None:
    _, parsed = parse_exposition(exposition([(("libvirt_up", (), (("a", "b"),)), 0.0)], ts_ms=TS))
    assert parsed == [("libvirt_up", {"a": "b"}, "0", str(TS))]


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1"), (0.0, "0"), (-3.0, "-3"), (0.5, "0.5"), (1e20, "1e+20"),
     (float("inf"), "+Inf"), (float("-inf"), "-Inf"), (float("nan"), "NaN")],
)  # fmt: skip
def test_exposition_formats_values_as_prometheus_reads_them(value: float, text: str) -> None:
    _, parsed = parse_exposition(exposition([(("libvirt_up", (), (("a", "b"),)), value)]))
    assert parsed[0][2] == text
    parsed_value = float(text.replace("Inf", "inf"))
    assert parsed_value == value or (math.isnan(parsed_value) and math.isnan(value))


def test_exposition_of_a_metric_outside_the_catalog_still_has_help_and_type() -> None:
    families, _ = parse_exposition(exposition([(("something_else_total", (), (("a", "b"),)), 1.0)]))
    assert families["something_else_total"][1] == "counter"


def test_exposition_of_only_stale_markers_is_empty() -> None:
    assert exposition([(("libvirt_up", (), ()), STALE_NAN)]) == ""


# --- the generated protobuf module -------------------------------------------------------


@pytest.mark.parametrize("proto", ["remote_write", "remote_write_v2"])
def test_committed_pb2_matches_proto(tmp_path: Path, proto: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
         f"proto/{proto}.proto"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fresh = tmp_path / f"{proto}_pb2.py"
    committed = REPO / "pusher" / "pb" / f"{proto}_pb2.py"
    assert filecmp.cmp(fresh, committed, shallow=False), (
        f"pusher/pb/{proto}_pb2.py does not match proto/{proto}.proto; regenerate it with: "
        f"python -m grpc_tools.protoc -Iproto --python_out=pusher/pb proto/{proto}.proto"
    )


# --- Remote-Write 2.0 ----------------------------------------------------------------------


def _v2_series(requests: list) -> list[tuple[tuple[tuple[str, str], ...], int, float]]:  # type: ignore[type-arg]
    from pusher.pb import remote_write_v2_pb2

    out = []
    for r in requests:
        req = remote_write_v2_pb2.Request.FromString(decompress(r.body))
        assert req.symbols[0] == ""
        sym = list(req.symbols)
        for ts in req.timeseries:
            refs = list(ts.labels_refs)
            labels = tuple((sym[refs[i]], sym[refs[i + 1]]) for i in range(0, len(refs), 2))
            (s,) = ts.samples
            out.append((labels, s.timestamp, s.value))
    return out


def _v1_series(requests: list) -> list[tuple[tuple[tuple[str, str], ...], int, float]]:  # type: ignore[type-arg]
    out = []
    for r in requests:
        for ts in decode(r.body).timeseries:
            (s,) = ts.samples
            out.append((tuple((lb.name, lb.value) for lb in ts.labels), s.timestamp, s.value))
    return out


def test_v2_carries_exactly_the_series_of_v1_with_interned_strings() -> None:
    from pusher.encode import EncoderV2

    samples = sample_set()
    v1 = Encoder(5).encode(samples, TS)
    v2 = EncoderV2(5).encode(samples, TS)
    assert [r.proto for r in v2] == [2] * len(v2)
    assert [r.samples for r in v2] == [r.samples for r in v1]
    got, want = _v2_series(v2), _v1_series(v1)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert [struct.pack("<d", g[2]) for g in got] == [struct.pack("<d", w[2]) for w in want]


def test_v2_metadata_per_series_points_at_help_and_unit() -> None:
    from pusher.encode import EncoderV2
    from pusher.pb import remote_write_v2_pb2

    key = ("libvirt_domain_info_cpu_time_seconds_total", (), SHARED)
    due = metadata_bytes(CATALOG[:1])  # the metadata is due in this cycle
    (req,) = EncoderV2(100).encode([(key, 12.5)], TS, due)
    msg = remote_write_v2_pb2.Request.FromString(decompress(req.body))
    meta = msg.timeseries[0].metadata
    assert meta.type == remote_write_v2_pb2.Metadata.METRIC_TYPE_COUNTER
    assert msg.symbols[meta.help_ref] == catalog.by_name(key[0]).help
    assert msg.symbols[meta.unit_ref] == "seconds"
    # In the other cycles: no metadata, and no help text in the symbols.
    (plain,) = EncoderV2(100).encode([(key, 12.5)], TS)
    msg = remote_write_v2_pb2.Request.FromString(decompress(plain.body))
    assert not msg.timeseries[0].HasField("metadata")
    assert catalog.by_name(key[0]).help not in msg.symbols
    assert len(plain.body) < len(req.body)


def test_v2_plans_reuse_their_skeletons_and_rebuild_when_plans_change() -> None:
    from pusher.catalog import plan_domain
    from pusher.encode import EncoderV2

    stats = {"state.state": 1, "cpu.time": 1_000_000_000, "vcpu.0.time": 5}
    plan = plan_domain(stats, SHARED)
    enc = EncoderV2(1000)
    first = enc.encode([], TS, plans=[(plan, plan.values(stats))])
    skeletons = enc._skeletons
    second = enc.encode([], TS + 1, plans=[(plan, plan.values(stats))])
    assert enc._skeletons is skeletons  # same plans: nothing rebuilt
    assert [s[1] for s in _v2_series(second)] == [TS + 1] * 3
    other = plan_domain({**stats, "vcpu.1.time": 7}, SHARED)
    third = enc.encode([], TS + 2, plans=[(other, other.values({**stats, "vcpu.1.time": 7}))])
    assert enc._skeletons is not skeletons and len(_v2_series(third)) == 4
    assert len(_v2_series(first)) == 3


def test_v2_metadata_coming_and_going_on_the_same_plans_rebuilds_nothing() -> None:
    from pusher.catalog import plan_domain
    from pusher.encode import EncoderV2

    stats = {"state.state": 1, "cpu.time": 1_000_000_000, "vcpu.0.time": 5}
    plan = plan_domain(stats, SHARED)
    enc = EncoderV2(1000)
    enc.encode([], TS, b"meta", plans=[(plan, plan.values(stats))])
    enc.encode([], TS + 1, plans=[(plan, plan.values(stats))])
    with_meta, plain = enc._meta_skeletons, enc._skeletons
    enc.encode([], TS + 2, b"meta", plans=[(plan, plan.values(stats))])
    enc.encode([], TS + 3, plans=[(plan, plan.values(stats))])
    assert enc._meta_skeletons is with_meta and enc._skeletons is plain
    other = plan_domain({**stats, "vcpu.1.time": 7}, SHARED)
    enc.encode([], TS + 4, plans=[(other, other.values({**stats, "vcpu.1.time": 7}))])
    assert enc._meta_skeletons == [] and enc._skeletons is not plain  # the old plans' go


def test_v2_to_v1_keeps_every_series_and_value() -> None:
    from pusher.encode import EncoderV2, v2_to_v1

    samples = sample_set()
    v2 = EncoderV2(1000).encode(samples, TS)
    back = [type(v2[0])(v2_to_v1(r.body), r.samples, r.ts_ms) for r in v2]
    assert [canonical(r.body) for r in back] == [reference(samples, TS)]


def test_v2_is_smaller_than_v1_on_a_domains_series() -> None:
    from pusher.encode import EncoderV2

    samples = sample_set()  # domains with Nova labels, devices, the agent's own series
    v1 = sum(len(r.body) for r in Encoder(1000).encode(samples, TS))
    v2 = sum(len(r.body) for r in EncoderV2(1000).encode(samples, TS))
    assert v2 < v1  # (at 20 guests: 10.0 vs 29.9 bytes per sample, benchmarks/encode.py)


# --- splitting and merging ------------------------------------------------------------------


def test_a_2_0_request_splits_into_halves_with_only_their_own_symbols() -> None:
    from pusher.encode import EncoderV2, decode_v2, split_body
    from pusher.pb import remote_write_v2_pb2

    samples = sample_set()
    (whole,) = EncoderV2(10_000).encode(samples, TS)
    halves = split_body(whole.body, 2)
    assert halves is not None

    def series(body: bytes) -> list[str]:  # repr: a stale marker's NaN equals itself there
        return sorted(repr(x) for x in decode_v2(decompress(body)))

    assert sorted(series(halves[0].body) + series(halves[1].body)) == series(whole.body)
    assert halves[0].samples + halves[1].samples == whole.samples
    for half in halves:
        req = remote_write_v2_pb2.Request.FromString(decompress(half.body))
        used = {0} | {r for ts in req.timeseries for r in ts.labels_refs}
        used |= {ts.metadata.help_ref for ts in req.timeseries}
        used |= {ts.metadata.unit_ref for ts in req.timeseries}
        assert used == set(range(len(req.symbols)))  # no symbol the half does not use
        assert req.symbols[0] == ""
        assert len(half.body) < len(whole.body)


def test_a_1_0_request_splits_into_halves_and_merges_back() -> None:
    from pusher.encode import merge_bodies, split_body

    (whole,) = Encoder(10_000).encode(sample_set(), TS)
    halves = split_body(whole.body, 1)
    assert halves is not None
    assert decompress(merge_bodies(h.body for h in halves)) == decompress(whole.body)
    assert split_body(Encoder(10).encode(sample_set()[:1], TS)[0].body, 1) is None


def _as_plan(samples: list[Sample]) -> catalog.DomainPlan:
    """Series as a plan the encoders take (as the spool's records give them back)."""
    scales = tuple(1.0 for _ in samples)
    return catalog.DomainPlan((), (), (), scales, tuple(k for k, _ in samples))


@pytest.mark.parametrize("ts_ms", [0, 1, TS])
def test_a_request_of_plans_is_the_very_bytes_of_the_same_series_as_samples(ts_ms: int) -> None:
    # One request of plans is packed with a cached layout; samples are joined piece by piece.
    samples = sample_set()
    half = len(samples) // 2
    plans = [_as_plan(samples[:half]), _as_plan(samples[half:])]
    values = [[v for _, v in samples[:half]], [v for _, v in samples[half:]]]
    meta = metadata_bytes(CATALOG[:3])
    for make in (Encoder, EncoderV2):
        packed, joined = make(10_000), make(10_000)
        for _ in range(2):  # the second time from the cached layout
            (a,) = packed.encode([], ts_ms, meta, list(zip(plans, values, strict=True)))
            (b,) = joined.encode(samples, ts_ms, meta)
            assert decompress(a.body) == decompress(b.body)
            assert (a.samples, a.ts_ms, a.proto) == (b.samples, b.ts_ms, b.proto)


def test_plan_layouts_taking_turns_each_keep_their_own_bytes() -> None:
    samples = sample_set()
    short, long = _as_plan(samples[:3]), _as_plan(samples[3:])
    enc = Encoder(10_000)
    for _ in range(3):
        for plan, part in ((short, samples[:3]), (long, samples[3:])):
            (got,) = enc.encode([], TS, b"", [(plan, [v for _, v in part])])
            assert canonical(got.body) == reference(part, TS)
