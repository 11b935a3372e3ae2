"""Hostile input, property-based (hypothesis): Nova XML, the labels made from it, the config,
the receiver's answers. Nothing may crash the agent or put a bad label on the wire.

Example counts are bounded so the module runs in seconds; `database=None` keeps hypothesis
from writing a `.hypothesis/` directory into the checkout.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pusher import config, sender
from pusher.catalog import label_pairs, series_labels
from pusher.collect import DomainStats, Snapshot
from pusher.config import ConfigError, RemoteWriteConfig, from_mapping
from pusher.encode import Encoder, decompress
from pusher.host import parse_layout
from pusher.mimir import reason as mimir_reason
from pusher.nova import NOVA_NS_PREFIX, parse_domain_xml
from pusher.pb import remote_write_pb2
from pusher.secrets import Redactor
from pusher.sender import MAX_ERROR_BODY, Sender, parse_retry_after
from pusher.series import build_samples

# Mimir's limits (defaults): label name 1024 bytes, label value 2048 bytes.
MAX_NAME_BYTES = 1024
MAX_VALUE_BYTES = 2048
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
FAST = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


def check_labels(labels: list[tuple[str, str]]) -> None:
    """What the remote-write spec and Mimir demand of one series' labels."""
    names = [n for n, _ in labels]
    assert names == sorted(names), names  # sorted (code points = UTF-8 byte order)
    assert len(set(names)) == len(names), names  # unique
    assert "__name__" in names
    for name, value in labels:
        assert LABEL_NAME.match(name), name
        assert len(name.encode()) <= MAX_NAME_BYTES
        assert value, name  # never empty
        raw = value.encode("utf-8")  # strict: valid UTF-8, no lone surrogates
        assert len(raw) <= MAX_VALUE_BYTES, (name, len(raw))


# --- Nova XML -----------------------------------------------------------------------------

# Unicode as libvirt can hand it over: any code point but surrogates (its strings are UTF-8).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
BIG = st.sampled_from([2047, 2048, 2049, 3000, 70_000]).flatmap(
    lambda n: st.sampled_from(["a", "é", "€", "😀", "\u0301"]).map(lambda c: c * n)
)
# Mostly characters XML allows (so the document parses and the value reaches a label), now
# and then any at all (so it does not, and the guest goes without Nova labels).
XML_CHAR = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0xD7FF),
    st.characters(min_codepoint=0xE000, max_codepoint=0xFFFD),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
    st.sampled_from("\t\n\r "),
)
XML_TEXT = st.text(XML_CHAR, max_size=60)
VALUE = st.one_of(XML_TEXT, XML_TEXT, XML_TEXT, BIG)
ANY_VALUE = st.one_of(VALUE, TEXT)
NAMESPACE = st.one_of(
    st.sampled_from(["1.0", "1.1", "1.2", "2.0", "99.99"]).map(lambda v: NOVA_NS_PREFIX + v),
    st.sampled_from(["", "1", "1.1/", "x.y", "1.1 "]).map(lambda v: NOVA_NS_PREFIX + v),
    st.sampled_from(["http://openstack.org/xmlns/libvirt/nova", "urn:x", "http://example/"]),
    XML_TEXT.map(lambda t: NOVA_NS_PREFIX + t),
)


@st.composite
def nova_domain(draw: st.DrawFn) -> str:
    """A domain XML with a `<nova:instance>` whose every field is hostile."""
    return draw(nova_domain_with_devices())[0]


@st.composite
def nova_domain_with_devices(draw: st.DrawFn) -> tuple[str, str, str]:
    """(domain XML, disk target, tap device): hostile Nova metadata, and devices whose
    serial (a Cinder volume id) and tap name (a Neutron port id) become labels too."""
    ns = draw(NAMESPACE)
    # One document in four may hold characters XML forbids: it must fail cleanly.
    values = draw(st.sampled_from([VALUE, VALUE, VALUE, ANY_VALUE]))
    port = draw(st.one_of(st.uuids().map(str), values))
    disk = draw(st.one_of(st.just("vda"), values))
    tap = "tap" + port[: draw(st.integers(0, 14))]
    v = lambda: escape(draw(values))  # noqa: E731
    a = lambda: quoteattr(draw(values))  # noqa: E731
    inst = (
        f"<nova:instance xmlns:nova={quoteattr(ns)}>"
        f"<nova:package version={a()}/><nova:name>{v()}</nova:name>"
        f"<nova:creationTime>{v()}</nova:creationTime>"
        f"<nova:flavor name={a()} id={a()}><nova:memory>{v()}</nova:memory>"
        f"<nova:vcpus>{v()}</nova:vcpus><nova:extraSpecs>"
        f"<nova:extraSpec name={a()}>{v()}</nova:extraSpec></nova:extraSpecs></nova:flavor>"
        f"<nova:image uuid={a()}/><nova:owner><nova:user uuid={a()}>{v()}</nova:user>"
        f"<nova:project uuid={a()}>{v()}</nova:project></nova:owner>"
        f"<nova:root type={a()} uuid={a()}/>"
        f"<nova:ports><nova:port uuid={quoteattr(port)}><nova:ip address={a()}/></nova:port>"
        f"<nova:port uuid={a()}/></nova:ports></nova:instance>"
    )
    if draw(st.booleans()):  # a second instance in another version: the newest must win
        inst += inst.replace(quoteattr(ns), quoteattr(draw(NAMESPACE)), 1)
    nesting = draw(st.integers(0, 50))
    inner = "<x>" * nesting + inst + "</x>" * nesting
    # Every attribute the devices' info series read is hostile too; the disk's target is
    # named twice (a series must not repeat), the NIC's interface id may name its port.
    interface_id = f"<virtualport><parameters interfaceid={a()}/></virtualport>"
    devices = (
        f"<devices><disk type={a()} device={a()}><driver type={a()} cache={a()} "
        f"discard={a()} io={a()}/><target dev={quoteattr(disk)} bus={a()}/>"
        f"<serial>{v()}</serial><iotune><total_bytes_sec>{v()}</total_bytes_sec>"
        f"<read_iops_sec_max>{v()}</read_iops_sec_max><group_name>{v()}</group_name></iotune>"
        f"</disk><disk type='file'><target dev={quoteattr(disk)}/></disk>"
        f"<interface type={a()}><mac address={a()}/><source bridge={a()} network={a()}/>"
        f"<model type={a()}/><mtu size={a()}/>{interface_id if draw(st.booleans()) else ''}"
        f"<target dev={quoteattr(tap)}/></interface></devices>"
    )
    xml = f"<domain type='kvm'><name>i</name><metadata>{inner}</metadata>{devices}</domain>"
    return xml, disk, tap


ENTITY_ATTACKS = [
    # billion laughs
    '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
    + "]><domain><metadata><nova:instance xmlns:nova='"
    + NOVA_NS_PREFIX
    + "1.1'><nova:name>&j;</nova:name></nova:instance></metadata></domain>",
    # external entity: a file, then a URL
    '<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain><metadata>'
    f"<nova:instance xmlns:nova='{NOVA_NS_PREFIX}1.1'><nova:name>&x;</nova:name>"
    "</nova:instance></metadata></domain>",
    '<!DOCTYPE d SYSTEM "http://127.0.0.1:1/evil.dtd"><domain/>',
    # parameter entities, and a DTD after whitespace and a comment
    '  <!-- hi --><!DOCTYPE d [<!ENTITY % p SYSTEM "file:///etc/shadow"> %p;]><domain/>',
    # an entity used without a DTD: undefined, refused by the parser
    f"<domain><metadata><nova:instance xmlns:nova='{NOVA_NS_PREFIX}1.1'>"
    "<nova:name>&x;</nova:name></nova:instance></metadata></domain>",
    # XInclude is not processed by ElementTree.fromstring
    "<domain xmlns:xi='http://www.w3.org/2001/XInclude'><xi:include href='/etc/passwd' "
    "parse='text'/></domain>",
    # a declared encoding the str does not have
    "<?xml version='1.0' encoding='UTF-16'?><domain/>",
    "<?xml version='1.0' encoding='x-unknown'?><domain/>",
]


@pytest.mark.parametrize("xml", ENTITY_ATTACKS)
def test_entity_and_dtd_attacks_are_refused_quickly(xml: str) -> None:
    start = time.monotonic()
    info = parse_domain_xml(xml)
    assert time.monotonic() - start < 1.0
    if info.nova is not None:
        assert "root:" not in info.nova.name
        assert len(info.nova.name) < 1000


@pytest.mark.parametrize("depth", [1000, 300_000])
def test_deep_nesting_never_raises(depth: int) -> None:
    for xml in ("<a>" * depth + "</a>" * depth, "<a>" * depth, "<a/>" + "</a>" * depth):
        info = parse_domain_xml(xml)
        assert info.nova is None


@pytest.mark.parametrize("size", [4 * 1024 * 1024 - 500, 4 * 1024 * 1024 + 1, 20 * 1024 * 1024])
def test_huge_documents_never_raise(size: int) -> None:
    head = f"<domain><metadata><nova:instance xmlns:nova='{NOVA_NS_PREFIX}1.1'><nova:name>"
    tail = "</nova:name></nova:instance></metadata></domain>"
    info = parse_domain_xml(head + "n" * (size - len(head) - len(tail)) + tail)
    if info.nova is not None:
        check_labels(series_labels(("x", label_pairs(info.nova.labels()), ())))
    else:
        assert info.problems


@settings(max_examples=300, **FAST)
@given(st.one_of(st.text(), TEXT.map(lambda t: f"<domain>{t}</domain>"), st.binary().map(repr)))
def test_arbitrary_text_never_raises(xml: str) -> None:
    info = parse_domain_xml(xml)
    assert info.nova is None or isinstance(info.nova.name, str)
    layout = parse_layout(xml)  # the host's capabilities XML, read the same way
    assert all(size > 0 for size in layout.huge_page_kib)


@settings(max_examples=100, **FAST)
@given(nova_domain())
def test_hostile_nova_metadata_never_raises(xml: str) -> None:
    info = parse_domain_xml(xml)
    if info.nova is not None:
        for value in info.nova.labels().values():
            assert value == value.strip() and value
    targets = set()
    for name, labels, value in info.devices:
        assert value == 1.0 if name.endswith("_info") else 0 < value < 2**63
        # What is read off the device is cut to 256 characters (a port id from the Nova
        # metadata is cut by the label limits, as on the stats series).
        assert all(v and v == v.strip() for _, v in labels), labels
        assert all(len(v) <= 256 for k, v in labels if k != "port_id"), labels
        targets.add((name, dict(labels)["target_device"]))
    assert len(targets) == len(info.devices)  # no series twice


# --- labels on the wire -------------------------------------------------------------------

EXTERNAL = st.dictionaries(
    st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z"), TEXT.filter(bool), max_size=4
).map(lambda d: {k: v for k, v in d.items() if k not in ("domain", "uuid")})
SERIES_LABELS = st.lists(st.sampled_from(config.NOVA_LABELS), unique=True, max_size=10)


@st.composite
def domain_stats(draw: st.DrawFn) -> DomainStats:
    xml, disk, tap = draw(nova_domain_with_devices())
    info = parse_domain_xml(xml)
    stats: dict[str, object] = {"state.state": 1, "cpu.time": 10**9, "block.count": 1,
                                "block.0.name": disk, "block.0.path": draw(VALUE),
                                "block.0.rd.bytes": 5, "net.count": 1,
                                "net.0.name": tap, "net.0.rx.bytes": 7,
                                "vcpu.0.time": 3}  # fmt: skip
    return DomainStats(draw(VALUE) or "d", draw(VALUE) or "u", stats, info)


@settings(max_examples=80, **FAST)
@given(st.lists(domain_stats(), min_size=1, max_size=3), SERIES_LABELS, EXTERNAL)
def test_labels_from_hostile_metadata_keep_the_spec_and_mimirs_limits(
    domains: list[DomainStats], chosen: list[str], external: dict[str, str]
) -> None:
    external.setdefault("host", "node-1")
    snapshot = Snapshot(1_700_000_000_000, domains, 0.0, 0)
    samples = build_samples(snapshot, chosen, label_pairs(external))
    assert samples
    expected = [series_labels(key) for key, _ in samples]
    for labels in expected:
        check_labels(labels)
    # ...and what the encoder puts on the wire is exactly that, decodable by protobuf.
    got: list[list[tuple[str, str]]] = []
    for request in Encoder(7).encode(samples, snapshot.ts_ms):
        decoded = remote_write_pb2.WriteRequest.FromString(decompress(request.body))
        for ts in decoded.timeseries:
            labels = [(label.name, label.value) for label in ts.labels]
            check_labels(labels)
            got.append(labels)
    assert got == expected


@settings(max_examples=120, **FAST)
@given(st.dictionaries(st.from_regex(r"\A[a-z_][a-z0-9_]{0,30}\Z"), st.one_of(TEXT, BIG)))
def test_label_pairs_never_yield_an_empty_or_oversized_value(labels: dict[str, str]) -> None:
    pairs = label_pairs(labels)
    check_labels(series_labels(("m", pairs, ())))


# --- the config ---------------------------------------------------------------------------

PARTS = sorted({p for key in config._KEYS for p in key.split(".")})
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), TEXT, st.dates(), st.binary(max_size=8),
    st.sampled_from([
        "15s", "0", "-1", "1GiB", "9" * 400 + "TiB", "1e999", "nan", "${X}", "${X:-5s}", "$$",
        "${UNSET}", "http://m/push", "https://u:p@m:1/p", "https://m:port/p", "qemu:///system",
        "fifo", "backfill", "debug", "/", ".", "/dev/null", "/nonexistent", "a\0b",
        "x" * 5000, "instance_name", "mimir.test",
    ]),
)  # fmt: skip
TREE = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(PARTS), TEXT, st.integers()), children,
                        max_size=4),
    ),
    max_leaves=20,
)  # fmt: skip


@st.composite
def schema_shaped(draw: st.DrawFn) -> dict[object, object]:
    """A document with some of the schema's keys, each holding anything at all."""
    tree: dict[object, object] = {}
    for key in draw(st.lists(st.sampled_from(sorted(config._KEYS)), max_size=8)):
        node = tree
        *sections, leaf = key.split(".")
        for section in sections:
            child = node.setdefault(section, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[leaf] = draw(TREE)
    if draw(st.booleans()):
        tree[draw(st.one_of(st.sampled_from(PARTS), TEXT))] = draw(TREE)
    return tree


def check_config(tree: object, env: dict[str, str]) -> None:
    try:
        cfg = from_mapping(tree, env, "node-1")
    except ConfigError as e:
        assert isinstance(e.key, str)
        assert "\n" not in str(e) and "\r" not in str(e)
    else:
        assert isinstance(cfg, config.Config)
        repr(cfg)


ENV = st.dictionaries(st.sampled_from(["X", "UNSET_NOT", "HOME"]), TEXT, max_size=3)


@settings(max_examples=200, **FAST)
@given(schema_shaped(), ENV)
def test_config_trees_give_a_config_or_a_config_error_naming_the_key(
    tree: dict[object, object], env: dict[str, str]
) -> None:
    check_config(tree, env)


@settings(max_examples=150, **FAST)
@given(TREE, ENV)
def test_any_yaml_value_as_the_document_gives_a_config_or_a_config_error(
    tree: object, env: dict[str, str]
) -> None:
    check_config(tree, env)


YAML_BITS = st.sampled_from([
    "remote_write:", "  url: ", "  tls:", "    ca_file: ", "nova: {series_labels: [", "]", "}",
    "&a ", "*a", "!!python/object:os.system ", "!!binary ", "!!timestamp ", "2001-02-30",
    "? ", ": ", "- ", "\n", "\t", "'", '"', "|", ">", "#", "%YAML 1.1\n", "---\n", "...",
    "[" * 50, "{" * 50, "1e999", "0x1F", "~", "\x00", "\ufeff", "${X}",
])  # fmt: skip


@settings(max_examples=150, **FAST)
@given(st.lists(st.one_of(YAML_BITS, TEXT), max_size=12).map("".join))
def test_any_config_file_gives_a_config_or_a_config_error(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config.load(str(path), env={})
    except ConfigError as e:
        assert "\n" not in str(e)


def _bomb(levels: int) -> str:
    lines = ["nova:", "  series_labels:", "    - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text",
    [
        _bomb(9),  # a billion list items through aliases
        "nova: {series_labels: &a [*a]}\n",  # a list that contains itself
        "remote_write: {headers: &h {X-A: *h}}\n",
        "external_labels: {dc: 2001-02-30}\n",  # PyYAML raises ValueError on this date
        "remote_write: {url: " + "[" * 800 + "]" * 800 + "}\n",  # recursion in the parser
        "buffer: {max_bytes: " + "9" * 400 + "TiB}\n",
    ],
    ids=["alias-bomb", "self-list", "self-map", "bad-date", "deep", "overflow"],
)
def test_malicious_config_files_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    start = time.monotonic()
    with pytest.raises(ConfigError):
        config.load(str(path), env={})
    assert time.monotonic() - start < 5.0  # the alias bomb unrolled would take hours


# --- the receiver's answers ---------------------------------------------------------------


@settings(max_examples=400, **FAST)
@given(
    st.one_of(
        st.text(),
        st.sampled_from(
            [
                "1e999",
                "-0",
                "Mon, 99 Jan 2027 00:00:00 GMT",
                "Fri, 31 Dec 9999 23:59:59 GMT",
                "0" * 5000,
            ]
        ),
    )
)
def test_retry_after_is_none_or_bounded(value: str) -> None:
    seconds = parse_retry_after(value, now=1_800_000_000.0)
    assert seconds is None or 0.0 <= seconds <= sender.MAX_RETRY_AFTER


@settings(max_examples=200, **FAST)
@given(st.text(), st.integers(100, 999))
def test_mimir_reason_is_short_and_label_safe(body: str, code: int) -> None:
    reason = mimir_reason(body, code)
    assert re.fullmatch(r"[a-z0-9-]{1,64}|http_\d{3}", reason), reason


SECRET = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=40)


@settings(max_examples=300, **FAST)
@given(SECRET, TEXT, TEXT)
def test_the_redactor_never_lets_a_secret_through(secret: str, before: str, after: str) -> None:
    redact = Redactor()
    redact.add(secret)
    out = redact(before + secret + after)
    assert secret not in out
    assert not re.search(r"[\x00-\x1f\x7f]", out)


@settings(max_examples=200, **FAST)
@given(SECRET, TEXT, st.integers(3, 40))
def test_a_secret_cut_short_leaves_no_tail_of_it(secret: str, before: str, keep: int) -> None:
    # What a capped error body does to a token it echoes: cuts it. No start of it may remain.
    redact = Redactor()
    redact.add(secret)
    out = redact(before + secret[: min(keep, len(secret) - 1)], cut=True)
    assert not any(out.endswith(secret[:n]) for n in range(3, len(secret)))


STATUS_LINE = st.builds(
    lambda v, code, reason: f"{v} {code} {reason}\r\n".encode(),
    st.sampled_from(["HTTP/1.1"] * 15 + ["HTTP/1.0", "HTTP/2", "HTTP/1.1 ", "ICY", ""]),
    st.one_of(
        st.sampled_from([101, 200, 204, 302, 307, 400, 401, 403, 404, 413, 429, 500, 503]),
        st.integers(100, 999),
        st.integers(-5, 1200),
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
)
STATUS = st.one_of(STATUS_LINE, STATUS_LINE, STATUS_LINE, st.binary(max_size=40))
HEADER = st.tuples(
    st.sampled_from(["Content-Length", "Transfer-Encoding", "Retry-After", "Location",
                     "Content-Encoding", "Set-Cookie", "Connection", "X-Junk", "Content-Type"]),
    st.one_of(st.sampled_from(["0", "5", "-1", "99999999", "chunked", "gzip", "deflate", "1e999",
                               "http://u:p@evil:1/", "close", "keep-alive"]), TEXT),
).map(lambda h: f"{h[0]}: {h[1]}\r\n".encode())  # fmt: skip
ANSWER = st.builds(
    lambda status, headers, blank, body: status + b"".join(headers) + blank + body,
    STATUS, st.lists(HEADER, max_size=6), st.sampled_from([b"\r\n", b"", b"\n"]),
    st.binary(max_size=6000),
)  # fmt: skip


class OneShotServer:
    """Answers each connection with `self.answer` (raw bytes) and hangs up."""

    def __init__(self) -> None:
        self.answer = b""
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/api/v1/push"
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536) or b"\r\n\r\n"
                    conn.sendall(self.answer)
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


@pytest.fixture(scope="module")
def one_shot() -> Iterator[OneShotServer]:
    server = OneShotServer()
    yield server
    server.close()


@settings(max_examples=150, **FAST)
@given(ANSWER)
def test_any_answer_gives_a_sane_outcome_in_bounded_time(one_shot, answer: bytes) -> None:
    one_shot.answer = answer
    headers = {"Authorization": "Bearer s3cr3t-t0ken"}
    s = Sender(RemoteWriteConfig(url=one_shot.url, timeout=1.0, headers=headers))
    try:
        start = time.monotonic()
        outcome = s.send(b"body")
        assert time.monotonic() - start < 3.0
    finally:
        s.close()
    event(f"{outcome.kind} {outcome.code[:1] + 'xx' if outcome.code.isdigit() else outcome.code}")
    assert outcome.kind in ("ok", "retry", "hold", "too_large", "reject")
    if outcome.kind == "ok":
        assert outcome.code.isdigit() and 200 <= int(outcome.code) < 300
    if outcome.kind == "reject":
        assert 400 <= int(outcome.code) < 500
        assert re.fullmatch(r"[a-z0-9-]{1,64}|http_\d{3}", outcome.reason)
    assert outcome.code == "error" or outcome.code.isdigit()
    assert outcome.retry_after is None or 0 <= outcome.retry_after <= sender.MAX_RETRY_AFTER
    assert len(outcome.message.encode()) <= MAX_ERROR_BODY + 1000
    assert not re.search(r"[\x00-\x1f\x7f]", outcome.message)
    assert "s3cr3t-t0ken" not in outcome.message
