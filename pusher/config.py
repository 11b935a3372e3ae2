"""Configuration: a YAML file turned into a validated, immutable `Config`.

Every key is declared once in `_SCHEMA` with its parser and default; unknown keys, wrong types
and bad values raise `ConfigError` naming the key, which the CLI turns into exit status 2.
`${VAR}` and `${VAR:-default}` in string values are expanded from the environment;
`$$` is a literal dollar sign.
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
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

import yaml

from pusher import catalog
from pusher.secrets import MAX_SECRET_BYTES, REDACTED, read_secret, redact_url, valid_token

__all__ = [
    "DEFAULT_SERIES_LABELS",
    "DEFAULT_STATS_GROUPS",
    "DROPPABLE_LABELS",
    "NOVA_LABELS",
    "STATS_GROUPS",
    "Config",
    "ConfigError",
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
                "iothread", "memory", "dirtyrate")  # fmt: skip
DEFAULT_STATS_GROUPS = ("state", "cpu_total", "balloon", "vcpu", "interface", "block")
# Labels `labels.drop` may leave off every series: the device details and the Nova labels.
# domain and uuid identify a domain's series and the device names its devices': never.
DROPPABLE_LABELS = (*catalog.DEVICE_EXTRAS, *NOVA_LABELS)
# Label names the agent itself puts on series besides the Nova labels: a domain's identity and
# every device or agent label of the catalog.
_OWN_LABELS = frozenset({"domain", "uuid", *(x for m in catalog.CATALOG for x in m.labels)})

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


@dataclass(frozen=True, repr=False)
class Config:
    libvirt_uri: str = "qemu:///system"
    collect_interval: float = 15.0
    collect_timeout: float = 10.0
    remote_write_url: str = ""
    remote_write_tenant: str = ""
    remote_write_timeout: float = 30.0
    remote_write_max_samples_per_send: int = 2000
    remote_write_headers: Mapping[str, str] = field(default_factory=dict)
    remote_write_min_backoff: float = 0.03
    remote_write_max_backoff: float = 5.0
    remote_write_max_sample_age: float = 3600.0
    remote_write_metadata_interval: float = 60.0
    remote_write_order: str = "fifo"
    remote_write_protocol: str = "v1"
    remote_write_tls_ca_file: str = ""
    remote_write_tls_cert_file: str = ""
    remote_write_tls_key_file: str = ""
    remote_write_tls_server_name: str = ""
    remote_write_tls_insecure_skip_verify: bool = False
    remote_write_basic_auth_username: str = ""
    remote_write_basic_auth_password_file: str = ""
    remote_write_bearer_token_file: str = ""
    remote_write_proxy_url: str = ""
    external_labels: Mapping[str, str] = field(default_factory=dict)
    buffer_path: str = "/var/lib/libvirt-pusher"
    buffer_max_bytes: int = 2**30
    buffer_fsync: bool = True
    nova_series_labels: tuple[str, ...] = DEFAULT_SERIES_LABELS
    nova_refresh_interval: float = 600.0
    collect_groups: tuple[str, ...] = DEFAULT_STATS_GROUPS
    collect_job_info: bool = False
    filter_projects_include: tuple[str, ...] = ()
    filter_projects_exclude: tuple[str, ...] = ()
    filter_domains_include: tuple[str, ...] = ()
    filter_domains_exclude: tuple[str, ...] = ()
    labels_drop: tuple[str, ...] = ()
    limits_max_label_names_per_series: int = 30
    limits_max_label_name_length: int = 1024
    limits_max_label_value_length: int = 2048
    log_level: str = "info"
    shutdown_grace: float = 10.0

    def __repr__(self) -> str:
        # Credentials live in files, but a URL may carry `user:password@` and a header a
        # token: neither is ever printed.
        parts = []
        for f in fields(self):
            value: Any = getattr(self, f.name)
            if f.name in ("remote_write_url", "remote_write_proxy_url") and value:
                value = redact_url(value)
            elif f.name == "remote_write_headers":
                value = dict.fromkeys(value, REDACTED)
            parts.append(f"{f.name}={value!r}")
        return f"Config({', '.join(parts)})"

    __str__ = __repr__


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


def _protocol(v: Any) -> str:
    s = _str(v)
    if s not in ("v1", "v2", "auto"):
        raise ValueError(f"{v!r} is not v1, v2 or auto")
    return s


def _order(v: Any) -> str:
    s = _str(v)
    if s not in ("fifo", "backfill"):
        raise ValueError(f"{v!r} is not fifo or backfill")
    return s


def _log_level(v: Any) -> str:
    s = _str(v).lower()
    if s not in _LOG_LEVELS:
        raise ValueError(f"{v!r} is not one of {', '.join(_LOG_LEVELS)}")
    return s


# dotted YAML key -> (Config attribute, parser)
_SCHEMA: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "libvirt.uri": ("libvirt_uri", _uri),
    "collect.interval": ("collect_interval", _positive_duration),
    "collect.timeout": ("collect_timeout", _positive_duration),
    "remote_write.url": ("remote_write_url", _url),
    "remote_write.tenant": ("remote_write_tenant", _str),
    "remote_write.timeout": ("remote_write_timeout", _positive_duration),
    "remote_write.max_samples_per_send": ("remote_write_max_samples_per_send", _positive_int),
    "remote_write.headers": ("remote_write_headers", _headers),
    "remote_write.min_backoff": ("remote_write_min_backoff", _positive_duration),
    "remote_write.max_backoff": ("remote_write_max_backoff", _positive_duration),
    "remote_write.max_sample_age": ("remote_write_max_sample_age", _duration),
    "remote_write.metadata_interval": ("remote_write_metadata_interval", _duration),
    "remote_write.order": ("remote_write_order", _order),
    "remote_write.protocol": ("remote_write_protocol", _protocol),
    "remote_write.tls.ca_file": ("remote_write_tls_ca_file", _file),
    "remote_write.tls.cert_file": ("remote_write_tls_cert_file", _file),
    "remote_write.tls.key_file": ("remote_write_tls_key_file", _file),
    "remote_write.tls.server_name": ("remote_write_tls_server_name", _server_name),
    "remote_write.tls.insecure_skip_verify": ("remote_write_tls_insecure_skip_verify", _bool),
    "remote_write.basic_auth.username": ("remote_write_basic_auth_username", _username),
    "remote_write.basic_auth.password_file": (
        "remote_write_basic_auth_password_file",
        _secret_file,
    ),
    "remote_write.bearer_token_file": ("remote_write_bearer_token_file", _token_file),
    "remote_write.proxy_url": ("remote_write_proxy_url", _proxy_url),
    "external_labels": ("external_labels", _labels),
    "buffer.path": ("buffer_path", _str),
    "buffer.max_bytes": ("buffer_max_bytes", _size),
    "buffer.fsync": ("buffer_fsync", _bool),
    "nova.series_labels": ("nova_series_labels", _series_labels),
    "nova.refresh_interval": ("nova_refresh_interval", _positive_duration),
    "collect.groups": ("collect_groups", _stats_groups),
    "collect.job_info": ("collect_job_info", _bool),
    "filter.projects.include": ("filter_projects_include", _str_list),
    "filter.projects.exclude": ("filter_projects_exclude", _str_list),
    "filter.domains.include": ("filter_domains_include", _regex_list),
    "filter.domains.exclude": ("filter_domains_exclude", _regex_list),
    "labels.drop": ("labels_drop", _label_drop),
    "limits.max_label_names_per_series": ("limits_max_label_names_per_series", _positive_int),
    "limits.max_label_name_length": ("limits_max_label_name_length", _positive_int),
    "limits.max_label_value_length": ("limits_max_label_value_length", _positive_int),
    "log.level": ("log_level", _log_level),
    "shutdown_grace": ("shutdown_grace", _duration),
}
# Keys whose value is a map of free-form names: not descended into when flattening.
_MAP_KEYS = {"external_labels", "remote_write.headers"}


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


def _flatten(tree: Any, prefix: str, out: dict[str, Any]) -> None:
    if not isinstance(tree, dict):
        raise ConfigError(prefix, f"expected a map, got {type(tree).__name__}")
    for k, v in tree.items():
        if not isinstance(k, str) or "." in k or not k:
            raise ConfigError(prefix or str(k), f"key {k!r} is not a plain name")
        key = f"{prefix}.{k}" if prefix else k
        if key in _SCHEMA:
            out[key] = v
        elif any(s.startswith(key + ".") for s in _SCHEMA) and key not in _MAP_KEYS:
            if v is None:
                continue  # an empty section: all defaults
            _flatten(v, key, out)
        else:
            raise ConfigError(key, "unknown key")


def from_mapping(
    tree: Any, env: Mapping[str, str] | None = None, hostname: str | None = None
) -> Config:
    """Validate a parsed YAML document (None means an empty one)."""
    env = os.environ if env is None else env
    flat: dict[str, Any] = {}
    if tree is not None:
        _flatten(tree, "", flat)
    values: dict[str, Any] = {}
    for key, raw in flat.items():
        attr, parse = _SCHEMA[key]
        try:
            values[attr] = parse(_expand_env(raw, key, env))
        except ConfigError:
            raise
        except (ValueError, TypeError, ArithmeticError) as e:
            raise ConfigError(key, str(e)) from None
    labels = dict(values.get("external_labels", {}))
    labels.setdefault("host", hostname or socket.gethostname())
    values["external_labels"] = labels
    cfg = Config(**values)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    if cfg.remote_write_min_backoff > cfg.remote_write_max_backoff:
        raise ConfigError("remote_write.min_backoff", "must not exceed remote_write.max_backoff")
    if cfg.collect_timeout > cfg.collect_interval:
        raise ConfigError("collect.timeout", "must not exceed collect.interval")
    # Labels the agent puts on its own series; an external label of the same name would be
    # overridden on some series and not on others.
    for name in cfg.external_labels:
        if name in _OWN_LABELS or name in NOVA_LABELS:
            raise ConfigError(f"external_labels.{name}", "clashes with a label the agent sets")
    _check_label_limits(cfg)
    _check_transport(cfg)


def _check_label_limits(cfg: Config) -> None:
    """Mimir's label limits (`limits.*`) must leave room for what the agent sends: the
    label names are all known here, so a series that would be refused is refused now."""
    lim = "limits"
    longest = max(len(x) for x in _OWN_LABELS)
    if cfg.limits_max_label_name_length < longest:
        raise ConfigError(
            f"{lim}.max_label_name_length",
            f"must be at least {longest}: the agent's own label names are that long",
        )
    longest = max(len(m.name) for m in catalog.CATALOG)
    if cfg.limits_max_label_value_length < longest:
        raise ConfigError(
            f"{lim}.max_label_value_length",
            f"must be at least {longest}: the metric name is a label value too, and the "
            "longest is that long",
        )
    for name, value in cfg.external_labels.items():
        if len(name) > cfg.limits_max_label_name_length:
            raise ConfigError(
                "external_labels", f"a label name is longer than {lim}.max_label_name_length"
            )
        if len(value.encode("utf-8", "surrogatepass")) > cfg.limits_max_label_value_length:
            raise ConfigError(
                f"external_labels.{name}",
                f"the value is longer than {lim}.max_label_value_length bytes",
            )
    limit = cfg.limits_max_label_names_per_series
    # What no series can do without: external labels, domain, uuid, a device's name.
    least = catalog.max_label_names(cfg.external_labels, (), DROPPABLE_LABELS)
    if least > limit:
        raise ConfigError(
            "external_labels",
            f"{len(cfg.external_labels)} external labels leave some series with {least} label "
            f"names, more than {lim}.max_label_names_per_series ({limit})",
        )
    need = catalog.max_label_names(cfg.external_labels, cfg.nova_series_labels, cfg.labels_drop)
    if need > limit:
        raise ConfigError(
            f"{lim}.max_label_names_per_series",
            f"some series would carry {need} label names with these external_labels, "
            "nova.series_labels and labels.drop; raise it or send fewer labels",
        )


def _check_transport(cfg: Config) -> None:
    """TLS and credential keys that only make sense together, and files that must load."""
    rw = "remote_write"
    ca = cfg.remote_write_tls_ca_file
    cert, key = cfg.remote_write_tls_cert_file, cfg.remote_write_tls_key_file
    tls_set = bool(ca or cert or key or cfg.remote_write_tls_server_name) or (
        cfg.remote_write_tls_insecure_skip_verify
    )
    url = cfg.remote_write_url
    if tls_set and url and urlsplit(url).scheme != "https":
        raise ConfigError(f"{rw}.tls", "applies to https:// URLs only; remote_write.url is not one")
    if cert and not key:
        raise ConfigError(f"{rw}.tls.key_file", "required with remote_write.tls.cert_file")
    if key and not cert:
        raise ConfigError(f"{rw}.tls.cert_file", "required with remote_write.tls.key_file")
    if ca and cfg.remote_write_tls_insecure_skip_verify:
        raise ConfigError(
            f"{rw}.tls.insecure_skip_verify", "contradicts remote_write.tls.ca_file; set one"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # only to try the files: no system CAs
    if ca:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError, ValueError):
            raise ConfigError(f"{rw}.tls.ca_file", f"{ca} holds no PEM certificate") from None
    if key:
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
    user = cfg.remote_write_basic_auth_username
    password_file = cfg.remote_write_basic_auth_password_file
    if user and not password_file:
        raise ConfigError(f"{rw}.basic_auth.password_file", "required with basic_auth.username")
    if password_file and not user:
        raise ConfigError(f"{rw}.basic_auth.username", "required with basic_auth.password_file")
    # One source of credentials: basic_auth, bearer_token_file, the URL's user:password@, or
    # an Authorization header.
    if password_file and cfg.remote_write_bearer_token_file:
        raise ConfigError(
            f"{rw}.bearer_token_file", "cannot be used together with remote_write.basic_auth"
        )
    from_files = bool(password_file or cfg.remote_write_bearer_token_file)
    in_url = bool(url) and "@" in urlsplit(url).netloc
    if from_files and in_url:
        raise ConfigError(
            f"{rw}.url", "carries user:password@ as well as basic_auth or bearer_token_file"
        )
    if (from_files or in_url) and any(
        h.lower() == "authorization" for h in cfg.remote_write_headers
    ):
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
