"""Configuration: a YAML file turned into a validated, immutable `Config`.

A `Config` is a tree of frozen sections whose attribute paths are the YAML keys:
`remote_write.tls.ca_file` is `cfg.remote_write.tls.ca_file`. Every key is declared once, as
a field of its section carrying its default and its parser; the loader walks those fields.
Unknown keys, wrong types and bad values raise `ConfigError` naming the dotted key, which the
CLI turns into exit status 2.
`${VAR}` and `${VAR:-default}` in string values are expanded from the environment;
`$$` is a literal dollar sign.

`remote_write` is one section, or a list of them (several endpoints, each with a `name`):
`cfg.endpoints` holds them either way, and `cfg.remote_write` is the section when there is
exactly one. The keys of a list's entries are named `remote_write[1].url` (counted from 0).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import ssl
import stat
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, cast
from urllib.parse import urlsplit

import yaml

from pusher import catalog, relabel
from pusher.secrets import MAX_SECRET_BYTES, REDACTED, read_secret, redact_url, valid_token

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_SERIES_LABELS",
    "DEFAULT_STATS_GROUPS",
    "DROPPABLE_LABELS",
    "NOVA_LABELS",
    "STATS_GROUPS",
    "BasicAuth",
    "BufferConfig",
    "CollectConfig",
    "Config",
    "ConfigError",
    "DomainsConfig",
    "FilterConfig",
    "LabelsConfig",
    "LibvirtConfig",
    "LimitsConfig",
    "LogConfig",
    "NovaConfig",
    "ProjectsConfig",
    "RemoteWriteConfig",
    "TLSConfig",
    "from_mapping",
    "load",
    "parse_duration",
    "parse_size",
    "redact_url",  # where the CLI has it from
]


class ConfigError(ValueError):
    """A configuration problem; `key` is the dotted key it concerns.

    Its text is one line: control characters from the document are shown escaped."""

    def __init__(self, key: str, message: str) -> None:
        text = f"{key}: {message}" if key else message
        super().__init__(_CONTROL.sub(lambda m: repr(m.group())[1:-1], text))
        self.key = key


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# Every label the Nova metadata can give; the first names follow the libvirt-exporter lineage.
NOVA_LABELS = (
    "instance_name",
    "flavor",
    "flavor_id",
    "user_name",
    "user_uuid",
    "project_name",
    "project_uuid",
    "root_type",
    "root_uuid",
    "image_uuid",
)
# On every series by default: enough to group by tenant and flavor and to read the instance's
# name, without the user and root ids that would only repeat what the info series carries.
DEFAULT_SERIES_LABELS = ("instance_name", "project_name", "project_uuid", "flavor")
# libvirt's stats groups (VIR_DOMAIN_STATS_<NAME>) the catalog has metrics for, and the ones
# asked for by default. "memory" is memory bandwidth (resctrl), not the balloon.
STATS_GROUPS = ("state", "cpu_total", "balloon", "vcpu", "interface", "block", "perf",
                "iothread", "memory", "dirtyrate", "vm")  # fmt: skip
DEFAULT_STATS_GROUPS = ("state", "cpu_total", "balloon", "vcpu", "interface", "block")
# Labels `labels.drop` may leave off every series: the device details and the Nova labels.
# domain and uuid identify a domain's series and the device names its devices': never.
DROPPABLE_LABELS = tuple(
    dict.fromkeys((*catalog.DEVICE_EXTRAS, *NOVA_LABELS, *catalog.XML_DETAIL_LABELS))
)
# Label names the agent itself puts on series besides the Nova labels: a domain's identity and
# every device or agent label of the catalog.
_OWN_LABELS = frozenset({"domain", "uuid", *(x for m in catalog.CATALOG for x in m.labels)})

# The name of the endpoint a single `remote_write` mapping gives; its spool is `buffer.path`.
DEFAULT_ENDPOINT = "default"
# An endpoint's name: a label value and a directory name.
_ENDPOINT_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
# `remote_write[3].url` -> `remote_write.url`: the key whose parser applies.
_LIST_INDEX = re.compile(r"\[\d+\]")
# Domain-name patterns (`filter.domains.*`) are short; a longer one is a mistake.
MAX_PATTERN_LENGTH = 1000
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_BARE_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?$"
)
# A config document is small: more nodes than this under one key is an alias bomb.
_MAX_NODES = 10_000
_MAX_DEPTH = 32


def parse_duration(text: str | int | float) -> float:
    """`500ms`, `15s`, `1m30s`, `1h`, or a bare number of seconds -> seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 15s")
    if isinstance(text, int | float):
        seconds = float(text)
    elif not isinstance(text, str):
        raise ValueError(f"expected a duration such as 15s, got {type(text).__name__}")
    elif _BARE_NUMBER.match(text.strip()):
        seconds = float(text)  # a bare number from `${VAR}` expansion: seconds
    else:
        s = text.strip()
        parts = _DURATION_PART.findall(s)
        if not s or "".join(n + u for n, u in parts) != s:
            raise ValueError(f"{text!r} is not a duration such as 500ms, 15s, 1m or 1h")
        seconds = sum(float(n) * _UNITS_S[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r} is not a duration of zero or more")
    return seconds


def parse_size(text: str | int) -> int:
    """`1GiB`, `512MiB`, `10MB`, or a bare number of bytes -> bytes."""
    if isinstance(text, bool):
        raise ValueError("expected a size such as 1GiB")
    if isinstance(text, int):
        n = text
    else:
        m = _SIZE.match(str(text).strip())
        if not m:
            raise ValueError(f"{text!r} is not a size such as 512MiB or 1GiB")
        f = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "B").lower()]
        if not math.isfinite(f):
            raise ValueError(f"{text!r} is too large")
        n = int(f)
    if n < 0:
        raise ValueError(f"{text!r} is negative")
    return n


# --- value parsers: each takes the raw YAML value and returns the typed value or raises
# ValueError with a message that makes sense after "key: ".


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _duration(v: Any) -> float:
    return parse_duration(v)


def _positive_duration(v: Any) -> float:
    d = parse_duration(v)
    if d <= 0:
        raise ValueError("must be greater than zero")
    return d


def _size(v: Any) -> int:
    n = parse_size(v)
    if n < 4096:
        raise ValueError("must be at least 4KiB")
    return n


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"expected a whole number of at least 1, got {v!r}")
    return v


def _url(v: Any) -> str:
    s = _str(v).strip()
    if not s:
        return ""
    try:
        parts = urlsplit(s)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        ok = False
    if not ok or any(c.isspace() or ord(c) < 0x20 for c in s):
        raise ValueError(f"{redact_url(s)!r} is not an http:// or https:// URL")
    return s


def _file(v: Any) -> str:
    """A path to a readable regular file (checked now, read by whoever uses it)."""
    s = _str(v).strip()
    if not s:
        return ""
    try:
        # O_NONBLOCK: a FIFO must not hang the agent's start.
        fd = os.open(s, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ValueError(f"cannot read {s}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{s} is not a regular file")
    finally:
        os.close(fd)
    return s


def _secret_file(v: Any) -> str:
    s = _str(v).strip()
    if s:
        read_secret(s)
    return s


def _token_file(v: Any) -> str:
    s = _secret_file(v)
    if s and not valid_token(read_secret(s)):
        raise ValueError(f"{s} holds spaces, control or non-ASCII characters, not a token")
    return s


def _username(v: Any) -> str:
    s = _str(v)
    if ":" in s or any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
        raise ValueError("must not contain ':' or control characters")
    return s


def _server_name(v: Any) -> str:
    s = _str(v).strip()
    if not s:
        return ""
    try:
        ipaddress.ip_address(s)
    except ValueError:
        if not _HOSTNAME.match(s):
            raise ValueError(f"{s!r} is not a host name") from None
    return s


def _proxy_url(v: Any) -> str:
    s = _str(v).strip()
    if not s:
        return ""
    try:
        ok = urlsplit(s).scheme in ("http", "https") and bool(urlsplit(s).hostname)
        _ = urlsplit(s).port
    except ValueError:
        ok = False
    if not ok or any(c.isspace() or ord(c) < 0x20 for c in s):
        raise ValueError(f"{redact_url(s)!r} is not an http:// or https:// proxy URL")
    return s


def _uri(v: Any) -> str:
    s = _str(v).strip()
    if "://" not in s:
        raise ValueError(f"{s!r} is not a libvirt URI such as qemu:///system")
    return s


def _str_map(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError(f"expected a map, got {type(v).__name__}")
    out: dict[str, str] = {}
    for k, val in v.items():
        scalar = isinstance(val, str | int | float) and not isinstance(val, bool)
        if not isinstance(k, str) or not scalar:
            raise ValueError(f"entry {k!r} must map a name to a string")
        out[k] = str(val)
    return out


def _labels(v: Any) -> dict[str, str]:
    out = _str_map(v)
    for k, val in out.items():
        if not _LABEL_NAME.match(k) or k.startswith("__"):
            raise ValueError(f"{k!r} is not a valid label name")
        if not val:
            raise ValueError(f"label {k!r} has an empty value")
    return out


def _headers(v: Any) -> dict[str, str]:
    out = _str_map(v)
    reserved = {
        "content-encoding", "content-type", "x-prometheus-remote-write-version",
        "user-agent", "x-scope-orgid", "retry-attempt", "content-length",
    }  # fmt: skip
    for k, val in out.items():
        if k.lower() in reserved:
            raise ValueError(f"header {k!r} is set by the agent and cannot be overridden")
        if not _HEADER_NAME.match(k) or any(c in val for c in "\r\n\0"):
            raise ValueError(f"header {k!r} has an invalid name or value")
    return out


def _series_labels(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of Nova label names")
    for name in v:
        if name not in NOVA_LABELS:
            raise ValueError(f"{name!r} is not one of {', '.join(NOVA_LABELS)}")
    return tuple(dict.fromkeys(v))


def _str_list(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise ValueError(f"expected a list, got {type(v).__name__}")
    for x in v:
        if not isinstance(x, str) or not x:
            raise ValueError(f"entry {x!r} is not a non-empty string")
    return tuple(dict.fromkeys(v))


def _regex_list(v: Any) -> tuple[str, ...]:
    out = _str_list(v)
    for pattern in out:
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise ValueError(f"a pattern is longer than {MAX_PATTERN_LENGTH} characters")
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as e:
            raise ValueError(f"{pattern!r} is not a usable regular expression: {e}") from None
    return out


def _stats_groups(v: Any) -> tuple[str, ...]:
    out = _str_list(v)
    for name in out:
        if name not in STATS_GROUPS:
            raise ValueError(f"{name!r} is not one of {', '.join(STATS_GROUPS)}")
    if "state" not in out:
        raise ValueError("must include state: the agent needs every domain's state")
    return out


def _label_drop(v: Any) -> tuple[str, ...]:
    out = _str_list(v)
    for name in out:
        if name in ("domain", "uuid"):
            raise ValueError(f"{name!r} identifies a domain's series and cannot be dropped")
        if name not in DROPPABLE_LABELS:
            raise ValueError(f"{name!r} is not one of {', '.join(DROPPABLE_LABELS)}")
    return out


def _relabel_configs(v: Any) -> tuple[relabel.Rule, ...]:
    try:
        return relabel.parse_rules(v)
    except relabel.RuleError as e:
        raise ConfigError(f"relabel_configs{e.where}", e.message) from None


def _protocol(v: Any) -> str:
    s = _str(v)
    if s not in ("v1", "v2", "auto"):
        raise ValueError(f"{v!r} is not v1, v2 or auto")
    return s


def _endpoint_name(v: Any) -> str:
    s = _str(v)
    if not _ENDPOINT_NAME.match(s):
        raise ValueError(f"{s!r} is not a name of 1 to 64 characters a-z, 0-9, _ and -")
    return s


def _order(v: Any) -> str:
    s = _str(v)
    if s not in ("fifo", "backfill"):
        raise ValueError(f"{v!r} is not fifo or backfill")
    return s


def _rate(v: Any) -> float:
    """A rate per second: a number of zero or more (0: no limit)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"expected a number of zero or more per second, got {v!r}")
    return float(v)


def _byte_rate(v: Any) -> float:
    """Bytes per second as a size (`1MiB`, a bare number of bytes; 0: no limit)."""
    return float(parse_size(v))


def _jitter(v: Any) -> float:
    """A duration, or `interval`: one collect.interval (kept as -1, resolved by delivery)."""
    if v == "interval":
        return -1.0
    return parse_duration(v)


def _offset(v: Any) -> float:
    """A duration, or `host`: a share of the interval drawn from the `host` label (kept as
    -1, resolved by the agent's `cycle_offset`)."""
    if v == "host":
        return -1.0
    return parse_duration(v)  # refuses a negative one


def _log_level(v: Any) -> str:
    s = _str(v).lower()
    if s not in _LOG_LEVELS:
        raise ValueError(f"{v!r} is not one of {', '.join(_LOG_LEVELS)}")
    return s


# --- the sections: each key's default and parser are declared once, on its field (`_key`), and
# its attribute path is its YAML key (`cfg.remote_write.tls.ca_file` is
# `remote_write.tls.ca_file`). A field holding a section is `field(default_factory=TheSection)`.


def _key(
    default: Any, parse: Callable[[Any], Any], redact: Callable[[Any], Any] | None = None
) -> Any:
    """A key's field: its default, the parser of its YAML value and, for a value that may
    hold a credential, what `repr` shows of it instead."""
    metadata = {"parse": parse, "redact": redact}
    if isinstance(default, dict):  # dataclasses refuse a mutable default shared by all
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _section_of(f: Field[Any]) -> type[Any] | None:
    """The section a field holds (declared as `field(default_factory=TheSection)`, or with
    `section` in its metadata), or None for a key."""
    if "parse" in f.metadata:
        return None
    return cast("type[Any]", f.metadata.get("section") or f.default_factory)


def _yaml_name(f: Field[Any]) -> str:
    """The field's YAML key: its name, or the `key` its metadata gives (`endpoints`)."""
    return str(f.metadata.get("key", f.name))


def _header_names(headers: Mapping[str, str]) -> dict[str, str]:
    return dict.fromkeys(headers, REDACTED)


def _redacted_repr(section: Any) -> str:
    parts = []
    for f in fields(section):
        value = getattr(section, f.name)
        redact = f.metadata.get("redact")
        if redact is not None and value:
            value = redact(value)
        parts.append(f"{f.name}={value!r}")
    return f"{type(section).__name__}({', '.join(parts)})"


@dataclass(frozen=True)
class LibvirtConfig:
    uri: str = _key("qemu:///system", _uri)


@dataclass(frozen=True)
class CollectConfig:
    interval: float = _key(15.0, _positive_duration)
    # Unset, the smaller of this and the interval (from_mapping): Prometheus' scrape_timeout.
    timeout: float = _key(10.0, _positive_duration)
    # Where in the interval the cycles start: a fleet's nodes each at their own point, so that
    # their pushes do not all reach the receiver in the same second.
    offset: float = _key(-1.0, _offset)
    groups: tuple[str, ...] = _key(DEFAULT_STATS_GROUPS, _stats_groups)
    job_info: bool = _key(False, _bool)
    host_stats: bool = _key(False, _bool)
    storage_pools: bool = _key(False, _bool)
    vcpu_placement: bool = _key(False, _bool)


@dataclass(frozen=True)
class TLSConfig:
    """`remote_write.tls`: empty strings mean the defaults (certifi's CAs, no client cert)."""

    ca_file: str = _key("", _file)
    cert_file: str = _key("", _file)
    key_file: str = _key("", _file)
    server_name: str = _key("", _server_name)
    insecure_skip_verify: bool = _key(False, _bool)


@dataclass(frozen=True)
class BasicAuth:
    """`remote_write.basic_auth`: the password stays in its file, read when it is sent."""

    username: str = _key("", _username)
    password_file: str = _key("", _secret_file)


@dataclass(frozen=True, repr=False)
class RemoteWriteConfig:
    """One endpoint: `remote_write`, or an entry of its list."""

    name: str = _key(DEFAULT_ENDPOINT, _endpoint_name)
    url: str = _key("", _url, redact_url)
    tenant: str = _key("", _str)
    timeout: float = _key(30.0, _positive_duration)
    max_samples_per_send: int = _key(2000, _positive_int)
    headers: Mapping[str, str] = _key({}, _headers, _header_names)
    min_backoff: float = _key(0.03, _positive_duration)
    max_backoff: float = _key(5.0, _positive_duration)
    max_sample_age: float = _key(3600.0, _duration)
    metadata_interval: float = _key(60.0, _duration)
    order: str = _key("fifo", _order)
    protocol: str = _key("auto", _protocol)
    tls: TLSConfig = field(default_factory=TLSConfig)
    basic_auth: BasicAuth = field(default_factory=BasicAuth)
    bearer_token_file: str = _key("", _token_file)
    proxy_url: str = _key("", _proxy_url, redact_url)
    # Pacing of the backlog (rows older than the last two cycles; delivery.BacklogPacer).
    backlog_rate_limit: float = _key(0.0, _rate)  # samples/s, 0: none
    backlog_bytes_rate_limit: float = _key(0.0, _byte_rate)  # wire bytes/s, 0: none
    adaptive_rate: bool = _key(True, _bool)  # AIMD on 429
    # `interval` (-1): one collect.interval, resolved by delivery (which knows the interval).
    reconnect_jitter: float = _key(-1.0, _jitter)

    def __repr__(self) -> str:
        # Credentials live in files, but a URL may carry `user:password@` and a header a
        # token: neither is ever printed.
        return _redacted_repr(self)


@dataclass(frozen=True)
class BufferConfig:
    path: str = _key("/var/lib/libvirt-pusher", _str)
    max_bytes: int = _key(2**30, _size)
    fsync: bool = _key(True, _bool)


@dataclass(frozen=True)
class NovaConfig:
    series_labels: tuple[str, ...] = _key(DEFAULT_SERIES_LABELS, _series_labels)
    refresh_interval: float = _key(600.0, _positive_duration)


@dataclass(frozen=True)
class ProjectsConfig:
    """`filter.projects`: Nova project uuids or names."""

    include: tuple[str, ...] = _key((), _str_list)
    exclude: tuple[str, ...] = _key((), _str_list)


@dataclass(frozen=True)
class DomainsConfig:
    """`filter.domains`: regular expressions matching whole libvirt domain names."""

    include: tuple[str, ...] = _key((), _regex_list)
    exclude: tuple[str, ...] = _key((), _regex_list)


@dataclass(frozen=True)
class FilterConfig:
    projects: ProjectsConfig = field(default_factory=ProjectsConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)


@dataclass(frozen=True)
class LabelsConfig:
    drop: tuple[str, ...] = _key((), _label_drop)


@dataclass(frozen=True)
class LimitsConfig:
    max_label_names_per_series: int = _key(30, _positive_int)
    max_label_name_length: int = _key(1024, _positive_int)
    max_label_value_length: int = _key(2048, _positive_int)


@dataclass(frozen=True)
class LogConfig:
    level: str = _key("info", _log_level)


@dataclass(frozen=True)
class Config:
    """The whole configuration; `from_mapping` and `load` make a validated one."""

    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    # `remote_write`: one mapping (one endpoint), or a list of named ones.
    endpoints: tuple[RemoteWriteConfig, ...] = field(
        default=(RemoteWriteConfig(),),
        metadata={"key": "remote_write", "section": RemoteWriteConfig},
    )
    external_labels: Mapping[str, str] = _key({}, _labels)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    nova: NovaConfig = field(default_factory=NovaConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Applied in order to every series sent (`pusher.relabel`).
    relabel_configs: tuple[relabel.Rule, ...] = _key((), _relabel_configs)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown_grace: float = _key(10.0, _duration)

    @property
    def remote_write(self) -> RemoteWriteConfig:
        """The endpoint, when there is one; with several, `endpoints` has them."""
        if len(self.endpoints) != 1:
            raise ValueError(f"{len(self.endpoints)} remote_write endpoints: read cfg.endpoints")
        return self.endpoints[0]

    def spool_directory(self, endpoint: RemoteWriteConfig) -> str:
        """Where an endpoint's spool lives: `buffer.path` for the endpoint named `default`
        (a single `remote_write` mapping's: an upgrade keeps its backlog), else
        `buffer.path/endpoints/<name>`."""
        if endpoint.name == DEFAULT_ENDPOINT:
            return self.buffer.path
        return os.path.join(self.buffer.path, "endpoints", endpoint.name)


def _keys(section: type[Any], prefix: str = "") -> dict[str, Callable[[Any], Any]]:
    """Every key of `section` by dotted name, with its parser."""
    out: dict[str, Callable[[Any], Any]] = {}
    for f in fields(section):
        inner = _section_of(f)
        if inner is not None:
            out |= _keys(inner, f"{prefix}{_yaml_name(f)}.")
        else:
            out[prefix + f.name] = f.metadata["parse"]
    return out


# dotted YAML key -> its parser, read off the sections above
_KEYS = _keys(Config)


def _expand_env(
    value: Any, key: str, env: Mapping[str, str], budget: list[int] | None = None, depth: int = 0
) -> Any:
    # YAML aliases can make a small document a huge (or cyclic) tree: walk a bounded part.
    budget = [_MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0 or depth > _MAX_DEPTH:
        raise ConfigError(key, "nested too deeply or too large")
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(key, f"environment variable {name} is not set")

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{key}.{k}", env, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, key, env, budget, depth + 1) for v in value]
    return value


def _flatten(tree: Any, prefix: str, out: dict[str, Any], section: type[Any] = Config) -> None:
    """The keys of `tree`, the map of `section` at `prefix`, into `out` by dotted name, their
    values as written. A key's value is not descended into: `external_labels` and
    `remote_write.headers` are maps of free-form names."""
    if not isinstance(tree, dict):
        raise ConfigError(prefix, f"expected a map, got {type(tree).__name__}")
    known = {_yaml_name(f): f for f in fields(section)}
    for k, v in tree.items():
        if not isinstance(k, str) or "." in k or not k:
            raise ConfigError(prefix or str(k), f"key {k!r} is not a plain name")
        key = f"{prefix}.{k}" if prefix else k
        if k not in known:
            raise ConfigError(key, "unknown key")
        inner = _section_of(known[k])
        if inner is None:
            out[key] = v
        elif v is not None:  # an empty section: all defaults
            _flatten(v, key, out, inner)


def _parse(key: str, raw: Any, env: Mapping[str, str]) -> Any:
    try:
        return _KEYS[_LIST_INDEX.sub("", key)](_expand_env(raw, key, env))
    except ConfigError:
        raise
    except (ValueError, TypeError, ArithmeticError) as e:
        raise ConfigError(key, str(e)) from None


def _build(section: type[Any], values: Mapping[str, Any], prefix: str = "") -> Any:
    """A `section` holding `values` (by dotted name); a key without one keeps its default."""
    kwargs: dict[str, Any] = {}
    for f in fields(section):
        key, inner = prefix + _yaml_name(f), _section_of(f)
        if inner is not None:
            built = _build(inner, values, f"{key}.")
            kwargs[f.name] = (built,) if "section" in f.metadata else built
        elif key in values:
            kwargs[f.name] = values[key]
    return section(**kwargs)


def from_mapping(
    tree: Any, env: Mapping[str, str] | None = None, hostname: str | None = None
) -> Config:
    """Validate a parsed YAML document (None means an empty one)."""
    env = os.environ if env is None else env
    flat: dict[str, Any] = {}
    listed = None  # `remote_write` as a list: its entries
    if isinstance(tree, dict) and isinstance(tree.get("remote_write"), list):
        listed = tree["remote_write"]
        tree = {k: v for k, v in tree.items() if k != "remote_write"}
    if tree is not None:
        _flatten(tree, "", flat)
    values = {key: _parse(key, raw, env) for key, raw in flat.items()}
    if "collect.timeout" not in values:
        # As Prometheus' scrape_timeout: a short interval alone is enough, the timeout follows.
        interval = values.get("collect.interval", CollectConfig.interval)
        values["collect.timeout"] = min(CollectConfig.timeout, interval)
    labels = dict(values.get("external_labels", {}))
    labels.setdefault("host", hostname or socket.gethostname())
    values["external_labels"] = labels
    cfg: Config = _build(Config, values)
    if listed is not None:
        cfg = replace(cfg, endpoints=_endpoint_list(listed, env))
    _cross_check(cfg, listed is not None)
    return cfg


def _endpoint_list(entries: list[Any], env: Mapping[str, str]) -> tuple[RemoteWriteConfig, ...]:
    """`remote_write` as a list: each entry a section of its own, with a unique `name` and a
    `url` (an endpoint in a list without a URL can only be a mistake)."""
    if not entries:
        raise ConfigError("remote_write", "an empty list: give one endpoint or more")
    endpoints: list[RemoteWriteConfig] = []
    seen: dict[str, str] = {}  # name -> the key of the entry that has it
    for i, entry in enumerate(entries):
        prefix = f"remote_write[{i}]"
        flat: dict[str, Any] = {}
        _flatten(entry, prefix, flat, RemoteWriteConfig)
        values = {key: _parse(key, raw, env) for key, raw in flat.items()}
        rw: RemoteWriteConfig = _build(RemoteWriteConfig, values, f"{prefix}.")
        if f"{prefix}.name" not in values:
            raise ConfigError(f"{prefix}.name", "required when remote_write is a list")
        if rw.name in seen:
            raise ConfigError(f"{prefix}.name", f"{rw.name!r} is taken by {seen[rw.name]}")
        if not rw.url:
            raise ConfigError(f"{prefix}.url", "required when remote_write is a list")
        seen[rw.name] = prefix
        endpoints.append(rw)
    return tuple(endpoints)


def _cross_check(cfg: Config, listed: bool = False) -> None:
    for i, rw in enumerate(cfg.endpoints):
        where = f"remote_write[{i}]" if listed else "remote_write"
        if rw.min_backoff > rw.max_backoff:
            raise ConfigError(f"{where}.min_backoff", f"must not exceed {where}.max_backoff")
        _check_transport(rw, where)
    if cfg.collect.timeout > cfg.collect.interval:
        raise ConfigError("collect.timeout", "must not exceed collect.interval")
    if cfg.collect.offset >= cfg.collect.interval:
        raise ConfigError("collect.offset", "must be less than collect.interval")
    # Labels the agent puts on its own series; an external label of the same name would be
    # overridden on some series and not on others.
    for name in cfg.external_labels:
        if name in _OWN_LABELS or name in NOVA_LABELS:
            raise ConfigError(f"external_labels.{name}", "clashes with a label the agent sets")
    _check_label_limits(cfg)


def _check_label_limits(cfg: Config) -> None:
    """Mimir's label limits (`limits.*`) must leave room for what the agent sends: the
    label names are all known here, so a series that would be refused is refused now."""
    lim, limits = "limits", cfg.limits
    longest = max(len(x) for x in _OWN_LABELS)
    if limits.max_label_name_length < longest:
        raise ConfigError(
            f"{lim}.max_label_name_length",
            f"must be at least {longest}: the agent's own label names are that long",
        )
    longest = max(len(m.name) for m in catalog.CATALOG)
    if limits.max_label_value_length < longest:
        raise ConfigError(
            f"{lim}.max_label_value_length",
            f"must be at least {longest}: the metric name is a label value too, and the "
            "longest is that long",
        )
    for name, value in cfg.external_labels.items():
        if len(name) > limits.max_label_name_length:
            raise ConfigError(
                "external_labels", f"a label name is longer than {lim}.max_label_name_length"
            )
        if len(value.encode("utf-8", "surrogatepass")) > limits.max_label_value_length:
            raise ConfigError(
                f"external_labels.{name}",
                f"the value is longer than {lim}.max_label_value_length bytes",
            )
    limit = limits.max_label_names_per_series
    # What no series can do without: external labels, domain, uuid, a device's name.
    least = catalog.max_label_names(cfg.external_labels, (), DROPPABLE_LABELS)
    if least > limit:
        raise ConfigError(
            "external_labels",
            f"{len(cfg.external_labels)} external labels leave some series with {least} label "
            f"names, more than {lim}.max_label_names_per_series ({limit})",
        )
    # The devices' info series take what room is left: their detail labels that do not fit
    # are left off (and counted), so they never make a configuration fail.
    need = catalog.max_label_names(
        cfg.external_labels, cfg.nova.series_labels, cfg.labels.drop, catalog.XML_SERIES
    )
    if need > limit:
        raise ConfigError(
            f"{lim}.max_label_names_per_series",
            f"some series would carry {need} label names with these external_labels, "
            "nova.series_labels and labels.drop; raise it or send fewer labels",
        )


def _check_transport(cfg: RemoteWriteConfig, rw: str = "remote_write") -> None:
    """TLS and credential keys that only make sense together, and files that must load;
    `rw` is the endpoint's key (`remote_write`, `remote_write[1]`)."""
    _check_tls(cfg.tls, cfg.url, rw)
    _check_credentials(cfg, rw)


def _check_tls(tls: TLSConfig, url: str, rw: str) -> None:
    ca, cert, key = tls.ca_file, tls.cert_file, tls.key_file
    tls_set = tls != TLSConfig()  # any key of it
    if tls_set and url and urlsplit(url).scheme != "https":
        raise ConfigError(f"{rw}.tls", f"applies to https:// URLs only; {rw}.url is not one")
    if cert and not key:
        raise ConfigError(f"{rw}.tls.key_file", f"required with {rw}.tls.cert_file")
    if key and not cert:
        raise ConfigError(f"{rw}.tls.cert_file", f"required with {rw}.tls.key_file")
    if ca and tls.insecure_skip_verify:
        raise ConfigError(
            f"{rw}.tls.insecure_skip_verify", f"contradicts {rw}.tls.ca_file; set one"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # only to try the files: no system CAs
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError, ValueError):
            raise ConfigError(f"{rw}.tls.ca_file", f"{ca} holds no PEM certificate") from None
    if key:
        _check_key_pair(ctx, cert, key, rw)


def _check_key_pair(ctx: ssl.SSLContext, cert: str, key: str, rw: str) -> None:
    """The client certificate and its key load, and the key needs no passphrase."""
    try:
        with open(key, "rb") as f:
            encrypted = b"ENCRYPTED" in f.read(MAX_SECRET_BYTES)
    except OSError as e:
        raise ConfigError(f"{rw}.tls.key_file", f"cannot read {key}: {e.strerror}") from None
    if encrypted:
        raise ConfigError(
            f"{rw}.tls.key_file", f"{key} is encrypted; the agent needs it unencrypted (0600)"
        )
    try:
        # Never prompt for a passphrase: an encrypted key fails here, not at a terminal.
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or type(e).__name__
        raise ConfigError(
            f"{rw}.tls.cert_file",
            f"{cert} and {key} are not a certificate and its key ({reason})",
        ) from None


def _check_credentials(cfg: RemoteWriteConfig, rw: str) -> None:
    user, password_file = cfg.basic_auth.username, cfg.basic_auth.password_file
    if user and not password_file:
        raise ConfigError(f"{rw}.basic_auth.password_file", "required with basic_auth.username")
    if password_file and not user:
        raise ConfigError(f"{rw}.basic_auth.username", "required with basic_auth.password_file")
    # One source of credentials: basic_auth, bearer_token_file, the URL's user:password@, or
    # an Authorization header.
    if password_file and cfg.bearer_token_file:
        raise ConfigError(
            f"{rw}.bearer_token_file", f"cannot be used together with {rw}.basic_auth"
        )
    from_files = bool(password_file or cfg.bearer_token_file)
    in_url = bool(cfg.url) and "@" in urlsplit(cfg.url).netloc
    if from_files and in_url:
        raise ConfigError(
            f"{rw}.url", "carries user:password@ as well as basic_auth or bearer_token_file"
        )
    if (from_files or in_url) and any(h.lower() == "authorization" for h in cfg.headers):
        raise ConfigError(
            f"{rw}.headers",
            "sets Authorization as well as another credential (basic_auth, "
            "bearer_token_file or user:password@ in the URL)",
        )


def load(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; None gives the built-in defaults."""
    if path is None:
        return from_mapping(None, env)
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("", f"{path}{where} is not valid YAML") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path} is not UTF-8 text") from None
    except RecursionError:
        raise ConfigError("", f"{path} is nested too deeply") from None
    except Exception as e:
        # PyYAML lets some bad values through as plain exceptions: a date like 2001-02-30
        # (ValueError), an empty `!!timestamp` (AttributeError)...
        raise ConfigError("", f"{path} holds a value that cannot be read: {e}") from None
    return from_mapping(tree, env)
