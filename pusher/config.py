"""Configuration: a YAML file turned into a validated, immutable `Config`.

Every key is declared once in `_SCHEMA` with its parser and default; unknown keys, wrong types
and bad values raise `ConfigError` naming the key, which the CLI turns into exit status 2.
`${VAR}` and `${VAR:-default}` in string values are expanded from the environment;
`$$` is a literal dollar sign.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = [
    "DEFAULT_SERIES_LABELS",
    "NOVA_LABELS",
    "Config",
    "ConfigError",
    "load",
    "parse_duration",
    "parse_size",
]


class ConfigError(ValueError):
    """A configuration problem; `key` is the dotted key it concerns."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


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
        n = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "B").lower()])
    if n < 0:
        raise ValueError(f"{text!r} is negative")
    return n


@dataclass(frozen=True)
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
    external_labels: Mapping[str, str] = field(default_factory=dict)
    buffer_path: str = "/var/lib/libvirt-pusher"
    buffer_max_bytes: int = 2**30
    buffer_fsync: bool = True
    nova_series_labels: tuple[str, ...] = DEFAULT_SERIES_LABELS
    nova_refresh_interval: float = 600.0
    log_level: str = "info"
    shutdown_grace: float = 10.0


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
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{s!r} is not an http:// or https:// URL")
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
    "external_labels": ("external_labels", _labels),
    "buffer.path": ("buffer_path", _str),
    "buffer.max_bytes": ("buffer_max_bytes", _size),
    "buffer.fsync": ("buffer_fsync", _bool),
    "nova.series_labels": ("nova_series_labels", _series_labels),
    "nova.refresh_interval": ("nova_refresh_interval", _positive_duration),
    "log.level": ("log_level", _log_level),
    "shutdown_grace": ("shutdown_grace", _duration),
}
# Keys whose value is a map of free-form names: not descended into when flattening.
_MAP_KEYS = {"external_labels", "remote_write.headers"}


def _expand_env(value: Any, key: str, env: Mapping[str, str]) -> Any:
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
        return {k: _expand_env(v, f"{key}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, key, env) for v in value]
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
        except (ValueError, TypeError) as e:
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
    taken = {"domain", "uuid", "vcpu", "target_device", "source_file", "reason", "code",
             "version", *NOVA_LABELS}  # fmt: skip
    for name in cfg.external_labels:
        if name in taken:
            raise ConfigError(f"external_labels.{name}", "clashes with a label the agent sets")


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
    return from_mapping(tree, env)
