"""pusher.config: the YAML schema, its parsers, `${VAR}` expansion, and the CLI's exit codes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from pki import make_pki

from pusher import __version__, config
from pusher.config import (
    DEFAULT_SERIES_LABELS,
    Config,
    ConfigError,
    from_mapping,
    load,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]


def parse(text: str, env: dict[str, str] | None = None, hostname: str = "node-1") -> Config:
    return from_mapping(yaml.safe_load(textwrap.dedent(text)), env or {}, hostname)


def config_error(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return info.value


# --- defaults --------------------------------------------------------------------------


def test_empty_document_gives_the_documented_defaults() -> None:
    cfg = from_mapping(None, {}, "node-1")
    assert cfg.libvirt.uri == "qemu:///system"
    assert cfg.collect.interval == 15.0
    assert cfg.collect.timeout == 10.0
    assert cfg.remote_write.name == "default"
    assert cfg.remote_write.url == ""
    assert cfg.remote_write.tenant == ""
    assert cfg.remote_write.timeout == 30.0
    assert cfg.remote_write.max_samples_per_send == 2000
    assert dict(cfg.remote_write.headers) == {}
    assert cfg.remote_write.min_backoff == 0.03
    assert cfg.remote_write.max_backoff == 5.0
    assert cfg.remote_write.max_sample_age == 3600.0
    assert cfg.remote_write.metadata_interval == 60.0
    assert cfg.remote_write.order == "fifo"
    assert cfg.remote_write.tls.ca_file == ""
    assert cfg.remote_write.tls.cert_file == ""
    assert cfg.remote_write.tls.key_file == ""
    assert cfg.remote_write.tls.server_name == ""
    assert cfg.remote_write.tls.insecure_skip_verify is False
    assert cfg.remote_write.basic_auth.username == ""
    assert cfg.remote_write.basic_auth.password_file == ""
    assert cfg.remote_write.bearer_token_file == ""
    assert cfg.remote_write.proxy_url == ""
    assert dict(cfg.external_labels) == {"host": "node-1"}
    assert cfg.buffer.path == "/var/lib/libvirt-pusher"
    assert cfg.buffer.max_bytes == 2**30
    assert cfg.buffer.fsync is True
    assert cfg.nova.series_labels == DEFAULT_SERIES_LABELS
    assert cfg.nova.refresh_interval == 600.0
    assert cfg.collect.groups == ("state", "cpu_total", "balloon", "vcpu", "interface", "block")
    assert cfg.collect.job_info is False
    assert cfg.collect.host_stats is False
    assert cfg.collect.storage_pools is False
    assert cfg.collect.vcpu_placement is False
    assert cfg.filter.projects.include == cfg.filter.projects.exclude == ()
    assert cfg.filter.domains.include == cfg.filter.domains.exclude == ()
    assert cfg.labels.drop == ()
    assert cfg.limits.max_label_names_per_series == 30
    assert cfg.limits.max_label_name_length == 1024
    assert cfg.limits.max_label_value_length == 2048
    assert cfg.log.level == "info"
    assert cfg.shutdown_grace == 10.0


def test_empty_sections_mean_defaults() -> None:
    cfg = parse("remote_write:\ncollect:\nbuffer:\n")
    assert cfg == from_mapping(None, {}, "node-1")


def test_load_without_a_file_gives_defaults() -> None:
    assert load(None, env={}).remote_write.max_samples_per_send == 2000


# --- collect.timeout: unset, it follows the interval (as Prometheus' scrape_timeout) --------


def test_an_interval_shorter_than_the_default_timeout_is_enough_alone() -> None:
    cfg = parse("collect: {interval: 1s}")
    assert (cfg.collect.interval, cfg.collect.timeout) == (1.0, 1.0)


def test_an_interval_longer_than_the_default_timeout_keeps_the_default() -> None:
    assert parse("collect: {interval: 30s}").collect.timeout == 10.0


def test_an_explicit_timeout_longer_than_the_interval_is_still_an_error() -> None:
    err = config_error("collect: {interval: 15s, timeout: 20s}")
    assert err.key == "collect.timeout"
    assert str(err) == "collect.timeout: must not exceed collect.interval"


# --- every key of the schema -------------------------------------------------------------

FULL = """
libvirt:
  uri: qemu+ssh://root@kvm-1/system
collect:
  interval: 1m
  timeout: 45s
  offset: 30s
  groups: [state, cpu_total, perf, iothread, memory, dirtyrate, vm]
  job_info: true
  host_stats: true
  storage_pools: true
  vcpu_placement: true
filter:
  projects:
    include: [demo, 9f1c4e8a-0000-4000-8000-000000000001]
    exclude: [scratch]
  domains:
    include: ['instance-[0-9a-f]{8}']
    exclude: ['.*-rescue']
labels:
  drop: [source_file, user_name]
limits:
  max_label_names_per_series: 40
  max_label_name_length: 200
  max_label_value_length: 1000
relabel_configs:
  - source_labels: [project_uuid]
    target_label: project_id
remote_write:
  name: regional
  url: https://mimir.example.com/api/v1/push
  tenant: edge-eu-1
  timeout: 20s
  max_samples_per_send: 500
  headers:
    X-Api-Key: s3cr3t
    X-Custom: "1"
  min_backoff: 100ms
  max_backoff: 30s
  max_sample_age: 2h
  metadata_interval: 5m
  order: backfill
  protocol: auto
  tls:
    ca_file: ${PKI}/ca.pem
    cert_file: ${PKI}/client.pem
    key_file: ${PKI}/client.key
    server_name: mimir.internal
    insecure_skip_verify: false
  basic_auth:
    username: edge-1
    password_file: ${PKI}/password
  proxy_url: http://proxy.example:3128
  backlog_rate_limit: 2500
  backlog_bytes_rate_limit: 1MiB
  adaptive_rate: false
  reconnect_jitter: 30s
external_labels:
  region: eu-west
  dc: ams1
buffer:
  path: /srv/spool
  max_bytes: 512MiB
  fsync: false
nova:
  series_labels: [instance_name, flavor_id, image_uuid]
  refresh_interval: 1h30m
log:
  level: DEBUG
shutdown_grace: 2500ms
"""


# bearer_token_file excludes basic_auth: it is read from its own document.
FULL_BEARER = """
remote_write:
  url: https://mimir.example.com/api/v1/push
  bearer_token_file: ${PKI}/token
"""


@pytest.fixture(scope="module")
def pki_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    (pki.directory / "password").write_text("pa55word\n", encoding="utf-8")
    (pki.directory / "token").write_text("t0ken\n", encoding="utf-8")
    return {"PKI": str(pki.directory)}


def test_every_schema_key_is_read_from_yaml(pki_env: dict[str, str]) -> None:
    cfg = parse(FULL, pki_env)
    pki = pki_env["PKI"]
    assert cfg.libvirt.uri == "qemu+ssh://root@kvm-1/system"
    assert cfg.collect.interval == 60.0
    assert cfg.collect.timeout == 45.0
    assert cfg.collect.offset == 30.0
    assert cfg.remote_write.name == "regional"
    assert cfg.remote_write.url == "https://mimir.example.com/api/v1/push"
    assert cfg.remote_write.tenant == "edge-eu-1"
    assert cfg.remote_write.timeout == 20.0
    assert cfg.remote_write.max_samples_per_send == 500
    assert dict(cfg.remote_write.headers) == {"X-Api-Key": "s3cr3t", "X-Custom": "1"}
    assert cfg.remote_write.min_backoff == pytest.approx(0.1)
    assert cfg.remote_write.max_backoff == 30.0
    assert cfg.remote_write.max_sample_age == 7200.0
    assert cfg.remote_write.order == "backfill"
    assert cfg.remote_write.protocol == "auto"
    assert cfg.remote_write.metadata_interval == 300.0
    assert cfg.remote_write.tls.ca_file == f"{pki}/ca.pem"
    assert cfg.remote_write.tls.cert_file == f"{pki}/client.pem"
    assert cfg.remote_write.tls.key_file == f"{pki}/client.key"
    assert cfg.remote_write.tls.server_name == "mimir.internal"
    assert cfg.remote_write.tls.insecure_skip_verify is False
    assert cfg.remote_write.basic_auth.username == "edge-1"
    assert cfg.remote_write.basic_auth.password_file == f"{pki}/password"
    assert cfg.remote_write.proxy_url == "http://proxy.example:3128"
    assert cfg.remote_write.backlog_rate_limit == 2500.0
    assert cfg.remote_write.backlog_bytes_rate_limit == 2**20
    assert cfg.remote_write.adaptive_rate is False
    assert cfg.remote_write.reconnect_jitter == 30.0
    assert dict(cfg.external_labels) == {"region": "eu-west", "dc": "ams1", "host": "node-1"}
    assert cfg.buffer.path == "/srv/spool"
    assert cfg.buffer.max_bytes == 512 * 2**20
    assert cfg.buffer.fsync is False
    assert cfg.nova.series_labels == ("instance_name", "flavor_id", "image_uuid")
    assert cfg.nova.refresh_interval == 5400.0
    groups = ("state", "cpu_total", "perf", "iothread", "memory", "dirtyrate", "vm")
    assert cfg.collect.groups == groups
    assert cfg.collect.job_info is True
    assert cfg.collect.host_stats is True
    assert cfg.collect.storage_pools is True
    assert cfg.collect.vcpu_placement is True
    assert cfg.filter.projects.include == ("demo", "9f1c4e8a-0000-4000-8000-000000000001")
    assert cfg.filter.projects.exclude == ("scratch",)
    assert cfg.filter.domains.include == ("instance-[0-9a-f]{8}",)
    assert cfg.filter.domains.exclude == (".*-rescue",)
    assert cfg.labels.drop == ("source_file", "user_name")
    assert cfg.limits.max_label_names_per_series == 40
    assert cfg.limits.max_label_name_length == 200
    assert cfg.limits.max_label_value_length == 1000
    assert [(r.action, r.source_labels, r.target) for r in cfg.relabel_configs] == [
        ("replace", ("project_uuid",), ("project_id",))
    ]
    assert cfg.log.level == "debug"
    assert cfg.shutdown_grace == 2.5
    bearer = parse(FULL_BEARER, pki_env)
    assert bearer.remote_write.bearer_token_file == f"{pki}/token"


def test_the_full_example_covers_every_schema_key() -> None:
    # When a key is added to the schema, add it to FULL above (and to the test reading it).
    flat: dict[str, object] = {}
    config._flatten(yaml.safe_load(FULL), "", flat)
    config._flatten(yaml.safe_load(FULL_BEARER), "", flat)
    assert set(flat) == set(config._KEYS)


def test_repeated_series_labels_are_kept_once_in_order() -> None:
    cfg = parse("nova: {series_labels: [flavor, instance_name, flavor]}")
    assert cfg.nova.series_labels == ("flavor", "instance_name")


def test_an_empty_remote_write_url_is_allowed_by_the_schema() -> None:
    # --check-config and the agent require it; --dry-run does not.
    assert parse("remote_write: {url: ''}").remote_write.url == ""


# --- several endpoints: remote_write as a list ---------------------------------------------

TWO_ENDPOINTS = """
remote_write:
  - name: regional
    url: https://mimir.region.example/api/v1/push
    tenant: edge
    order: backfill
  - name: central-1
    url: http://prometheus.local:9090/api/v1/write
    protocol: v1
    max_samples_per_send: 500
buffer:
  path: /srv/spool
"""


def test_a_list_of_remote_write_sections_gives_one_endpoint_each() -> None:
    cfg = parse(TWO_ENDPOINTS)
    regional, central = cfg.endpoints
    assert (regional.name, regional.tenant, regional.order) == ("regional", "edge", "backfill")
    assert regional.protocol == "auto" and regional.max_samples_per_send == 2000
    assert (central.name, central.tenant, central.protocol) == ("central-1", "", "v1")
    assert central.url == "http://prometheus.local:9090/api/v1/write"
    assert central.max_samples_per_send == 500
    # Each endpoint's spool in a directory of its own.
    assert cfg.spool_directory(regional) == "/srv/spool/endpoints/regional"
    assert cfg.spool_directory(central) == "/srv/spool/endpoints/central-1"
    with pytest.raises(ValueError, match=r"cfg\.endpoints"):
        _ = cfg.remote_write


def test_the_single_mapping_is_the_endpoint_named_default_spooled_in_buffer_path() -> None:
    cfg = parse("remote_write: {url: http://m/push}\nbuffer: {path: /srv/spool}")
    (only,) = cfg.endpoints
    assert only is cfg.remote_write
    assert only.name == "default"
    assert cfg.spool_directory(only) == "/srv/spool"  # where it always was: an upgrade keeps it
    # The spool follows the name: a listed endpoint named default keeps buffer.path too.
    listed = parse("remote_write: [{name: default, url: http://m/push}, {name: b, url: http://n/}]")
    assert listed.spool_directory(listed.endpoints[0]) == listed.buffer.path


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("remote_write: [{url: http://m/push}]", "remote_write[0].name", "required"),
        ("remote_write: [{name: a, url: http://m/}, {name: a, url: http://n/}]",
         "remote_write[1].name", "'a' is taken by remote_write[0]"),
        ("remote_write: [{name: a, url: http://m/}, {name: B, url: http://n/}]",
         "remote_write[1].name", "a-z, 0-9"),
        ("remote_write: [{name: a/b, url: http://m/}]", "remote_write[0].name", "a-z, 0-9"),
        ("remote_write: [{name: '', url: http://m/}]", "remote_write[0].name", "a-z, 0-9"),
        ("remote_write: [{name: a}]", "remote_write[0].url", "required"),
        ("remote_write: [{name: a, url: http://m/}, {name: b, url: 'ftp://x'}]",
         "remote_write[1].url", "not an http"),
        ("remote_write: [{name: a, url: http://m/, colour: red}]", "remote_write[0].colour",
         "unknown key"),
        ("remote_write: [{name: a, url: http://m/, tls: {cert_file: /etc/hostname}}]",
         "remote_write[0].tls", "https:// URLs only; remote_write[0].url"),
        ("remote_write: [{name: a, url: http://m/, min_backoff: 2s, max_backoff: 1s}]",
         "remote_write[0].min_backoff", "remote_write[0].max_backoff"),
        ("remote_write: [{name: a, url: http://m/}, [1]]", "remote_write[1]", "expected a map"),
        ("remote_write: []", "remote_write", "empty list"),
        ("remote_write: [{name: a, url: http://m/, tenant: '${UNSET_HERE}'}]",
         "remote_write[0].tenant", "UNSET_HERE"),
    ],
)  # fmt: skip
def test_errors_in_a_list_of_endpoints_name_the_entry_and_key(
    text: str, key: str, words: str
) -> None:
    err = config_error(text)
    assert err.key == key, err
    assert str(err).startswith(f"{key}: ") and words in str(err), err


def test_an_endpoint_name_in_the_single_mapping_names_its_metrics_and_spool() -> None:
    cfg = parse("remote_write: {name: mimir, url: http://m/push}\nbuffer: {path: /srv/spool}")
    assert cfg.remote_write.name == "mimir"
    assert cfg.spool_directory(cfg.remote_write) == "/srv/spool/endpoints/mimir"
    assert config_error("remote_write: {name: 'no spaces', url: http://m/}").key == (
        "remote_write.name"
    )


def test_endpoint_is_a_label_the_agent_sets() -> None:
    err = config_error("external_labels: {endpoint: x}")
    assert err.key == "external_labels.endpoint"


def test_cli_check_config_of_a_list_names_every_endpoint(tmp_path: Path) -> None:
    result = run_cli("--check-config", "-c", write(tmp_path, TWO_ENDPOINTS))
    assert result.returncode == 0, result.stderr
    assert "regional: https://mimir.region.example/api/v1/push tenant edge" in result.stdout
    assert "central-1: http://prometheus.local:9090/api/v1/write" in result.stdout
    bad = TWO_ENDPOINTS.replace("name: central-1", "name: regional")
    assert_one_line_config_error(
        run_cli("--check-config", "-c", write(tmp_path, bad)), "remote_write[1].name"
    )


# --- durations and sizes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m500ms", 60.5),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (" 15s ", 15.0),
        ("0s", 0.0),
        (15, 15.0),
        (2.5, 2.5),
        (0, 0.0),
        ("15", 15.0),  # a bare number, as `${VAR}` expansion yields it
        ("0.25", 0.25),
    ],
)
def test_parse_duration_accepts(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "s", "15x", "15 s", "-5s", "1h30", "15S", "ms", "5mss", "1.s", "abc", -1, float("inf"),
     float("nan"), True, [1], {"s": 1}],
)  # fmt: skip
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1GiB", 2**30),
        ("512MiB", 512 * 2**20),
        ("512 MiB", 512 * 2**20),
        ("1.5KiB", 1536),
        ("10MB", 10_000_000),
        ("2kb", 2000),
        ("1gib", 2**30),
        ("1TiB", 2**40),
        ("100B", 100),
        ("4096", 4096),
        (2048, 2048),
        (0, 0),
    ],
)
def test_parse_size_accepts(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "1XB", "1 G", "-1", "-1GiB", "1GiBs", -5, True])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)  # type: ignore[arg-type]


def test_durations_and_sizes_in_yaml_become_seconds_and_bytes() -> None:
    cfg = parse("collect: {interval: 1h30m, timeout: 500ms}\nbuffer: {max_bytes: 1GiB}")
    assert (cfg.collect.interval, cfg.collect.timeout, cfg.buffer.max_bytes) == (5400, 0.5, 2**30)


# --- environment expansion ---------------------------------------------------------------


def test_env_reference_is_expanded() -> None:
    cfg = parse("remote_write: {tenant: '${TENANT}'}", {"TENANT": "team-a"})
    assert cfg.remote_write.tenant == "team-a"


def test_env_reference_inside_a_longer_string() -> None:
    cfg = parse(
        "remote_write: {url: 'https://${HOST}:${PORT:-8080}/api/v1/push'}", {"HOST": "mimir"}
    )
    assert cfg.remote_write.url == "https://mimir:8080/api/v1/push"


def test_env_default_is_used_only_when_unset() -> None:
    text = "remote_write: {tenant: '${TENANT:-fallback}'}"
    assert parse(text, {}).remote_write.tenant == "fallback"
    assert parse(text, {"TENANT": "set"}).remote_write.tenant == "set"
    # Set but empty is still set.
    assert parse(text, {"TENANT": ""}).remote_write.tenant == ""


def test_env_empty_default_is_allowed() -> None:
    assert parse("remote_write: {tenant: '${T:-}'}").remote_write.tenant == ""


def test_double_dollar_is_a_literal_dollar() -> None:
    cfg = parse(
        "remote_write: {headers: {X-A: 'pa$$word', X-B: '$${NOT_EXPANDED}'}}", {"NOT_EXPANDED": "!"}
    )
    assert dict(cfg.remote_write.headers) == {"X-A": "pa$word", "X-B": "${NOT_EXPANDED}"}


def test_dollar_without_braces_is_left_alone() -> None:
    assert parse("remote_write: {tenant: '$HOME'}", {"HOME": "/x"}).remote_write.tenant == "$HOME"


def test_env_expansion_in_maps_and_lists() -> None:
    cfg = parse(
        "external_labels: {dc: '${DC}'}\nnova: {series_labels: ['${L1}', flavor]}",
        {"DC": "ams1", "L1": "instance_name"},
    )
    assert cfg.external_labels["dc"] == "ams1"
    assert cfg.nova.series_labels == ("instance_name", "flavor")


def test_env_expansion_yields_durations_and_sizes() -> None:
    cfg = parse(
        "collect: {interval: '${I:-30}', timeout: '${T}'}\nbuffer: {max_bytes: '${B:-64MiB}'}",
        {"T": "5s"},
    )
    assert (cfg.collect.interval, cfg.collect.timeout) == (30.0, 5.0)
    assert cfg.buffer.max_bytes == 64 * 2**20


def test_env_value_is_not_expanded_again() -> None:
    cfg = parse("remote_write: {tenant: '${A}'}", {"A": "${B}", "B": "nope"})
    assert cfg.remote_write.tenant == "${B}"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("remote_write: {tenant: '${MISSING}'}", "remote_write.tenant"),
        ("remote_write: {url: 'https://${MISSING}/push'}", "remote_write.url"),
        ("external_labels: {dc: '${MISSING}'}", "external_labels.dc"),
        ("remote_write: {headers: {Authorization: 'Bearer ${MISSING}'}}",
         "remote_write.headers.Authorization"),
        ("nova: {series_labels: ['${MISSING}']}", "nova.series_labels"),
    ],
)  # fmt: skip
def test_unset_env_variable_names_the_key_and_the_variable(text: str, key: str) -> None:
    err = config_error(text)
    assert err.key == key
    assert "MISSING" in str(err)
    assert str(err).startswith(key + ":")


# --- errors name the dotted key ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # unknown keys, top level and nested
        ("bogus: 1", "bogus"),
        ("remote_write: {bogus: 1}", "remote_write.bogus"),
        ("collect: {interval: 15s, intervall: 10s}", "collect.intervall"),
        ("remote_write: {url: {nested: 1}}", "remote_write.url"),
        ("libvirt: {uri: qemu:///system, extra: {deep: 1}}", "libvirt.extra"),
        # a section that is not a map
        ("libvirt: qemu:///system", "libvirt"),
        ("remote_write: [a, b]", "remote_write[0]"),  # a list of endpoints: a is no map
        # wrong types
        ("libvirt: {uri: 5}", "libvirt.uri"),
        ("remote_write: {tenant: [a]}", "remote_write.tenant"),
        ("remote_write: {url: 5}", "remote_write.url"),
        ("remote_write: {max_samples_per_send: '100'}", "remote_write.max_samples_per_send"),
        ("remote_write: {max_samples_per_send: 1.5}", "remote_write.max_samples_per_send"),
        ("remote_write: {max_samples_per_send: true}", "remote_write.max_samples_per_send"),
        ("remote_write: {headers: [a]}", "remote_write.headers"),
        ("remote_write: {headers: {X-A: [1]}}", "remote_write.headers"),
        ("remote_write: {headers: {X-A: false}}", "remote_write.headers"),
        ("remote_write: {headers: {X-A: }}", "remote_write.headers"),
        ("collect: {interval: {a: 1}}", "collect.interval"),
        ("collect: {interval: [15]}", "collect.interval"),
        ("collect: {interval: true}", "collect.interval"),
        ("buffer: {path: 5}", "buffer.path"),
        ("buffer: {fsync: 'yes please'}", "buffer.fsync"),
        ("buffer: {fsync: 1}", "buffer.fsync"),
        ("buffer: {max_bytes: [1]}", "buffer.max_bytes"),
        ("nova: {series_labels: instance_name}", "nova.series_labels"),
        ("nova: {series_labels: [1]}", "nova.series_labels"),
        ("log: {level: 5}", "log.level"),
        ("external_labels: [a]", "external_labels"),
        ("external_labels: {dc: false}", "external_labels"),
        ("external_labels: {dc: [a]}", "external_labels"),
        # bad values
        ("libvirt: {uri: qemu}", "libvirt.uri"),
        ("collect: {interval: 0}", "collect.interval"),
        ("collect: {interval: 0s}", "collect.interval"),
        ("collect: {interval: -5}", "collect.interval"),
        ("collect: {interval: fifteen}", "collect.interval"),
        ("collect: {interval: .inf}", "collect.interval"),
        ("collect: {timeout: 1h}", "collect.timeout"),  # longer than the 15s interval
        ("remote_write: {url: 'ftp://mimir/push'}", "remote_write.url"),
        ("remote_write: {url: 'mimir:9009/api/v1/push'}", "remote_write.url"),
        ("remote_write: {url: 'http://'}", "remote_write.url"),
        ("remote_write: {timeout: 0}", "remote_write.timeout"),
        ("remote_write: {max_samples_per_send: 0}", "remote_write.max_samples_per_send"),
        ("remote_write: {min_backoff: 0}", "remote_write.min_backoff"),
        ("remote_write: {max_sample_age: -1h}", "remote_write.max_sample_age"),
        ("remote_write: {min_backoff: 10s, max_backoff: 1s}", "remote_write.min_backoff"),
        ("remote_write: {min_backoff: 6s}", "remote_write.min_backoff"),  # default max is 5s
        ("remote_write: {backlog_rate_limit: -1}", "remote_write.backlog_rate_limit"),
        ("remote_write: {backlog_rate_limit: '5k'}", "remote_write.backlog_rate_limit"),
        ("remote_write: {backlog_rate_limit: .inf}", "remote_write.backlog_rate_limit"),
        ("remote_write: {backlog_rate_limit: true}", "remote_write.backlog_rate_limit"),
        ("remote_write: {backlog_bytes_rate_limit: 1XB}", "remote_write.backlog_bytes_rate_limit"),
        ("remote_write: {adaptive_rate: 1}", "remote_write.adaptive_rate"),
        ("remote_write: {reconnect_jitter: -5s}", "remote_write.reconnect_jitter"),
        ("remote_write: {reconnect_jitter: intervals}", "remote_write.reconnect_jitter"),
        ("buffer: {max_bytes: 1XB}", "buffer.max_bytes"),
        ("buffer: {max_bytes: -1}", "buffer.max_bytes"),
        ("nova: {series_labels: [instance_name, hostname]}", "nova.series_labels"),
        ("nova: {refresh_interval: 0}", "nova.refresh_interval"),
        ("log: {level: verbose}", "log.level"),
        ("shutdown_grace: -1s", "shutdown_grace"),
        # filters, groups, dropped labels, limits
        ("filter: {projects: {include: demo}}", "filter.projects.include"),
        ("filter: {projects: {include: [1]}}", "filter.projects.include"),
        ("filter: {projects: {exclude: ['']}}", "filter.projects.exclude"),
        ("filter: {projects: {bogus: [a]}}", "filter.projects.bogus"),
        ("filter: {domains: {include: ['instance-(']}}", "filter.domains.include"),
        ("filter: {domains: {exclude: ['[a-']}}", "filter.domains.exclude"),
        ("filter: {domains: [a]}", "filter.domains"),
        ("collect: {groups: [state, cpu]}", "collect.groups"),
        ("collect: {groups: [state, kvm]}", "collect.groups"),
        ("collect: {groups: [cpu_total, block]}", "collect.groups"),  # no state
        ("collect: {groups: []}", "collect.groups"),
        ("collect: {job_info: maybe}", "collect.job_info"),
        (
            "filter: {domains: {exclude: ['" + "(" * 1000 + ")" * 1000 + "']}}",
            "filter.domains.exclude",
        ),
        (
            "filter: {domains: {include: ['" + "(" * 499 + ")" * 499 + "']}}",
            "filter.domains.include",
        ),
        ("collect: {groups: state}", "collect.groups"),
        ("labels: {drop: [domain]}", "labels.drop"),
        ("labels: {drop: [uuid]}", "labels.drop"),
        ("labels: {drop: [target_device]}", "labels.drop"),
        ("labels: {drop: [host]}", "labels.drop"),
        ("labels: {drop: source_file}", "labels.drop"),
        ("labels: {drop: [bus]}", "labels.drop"),  # the info series' label is disk_bus
        ("labels: {drop: [mac]}", "labels.drop"),  # ... and interface_mac
        ("limits: {max_label_names_per_series: 0}", "limits.max_label_names_per_series"),
        ("limits: {max_label_names_per_series: 13}", "limits.max_label_names_per_series"),
        ("limits: {max_label_name_length: 10}", "limits.max_label_name_length"),
        ("limits: {max_label_value_length: 40}", "limits.max_label_value_length"),
        ("limits: {max_label_value_length: '2048'}", "limits.max_label_value_length"),
        ("limits: {max_label_names_per_series: 4}", "external_labels"),
    ],
)
def test_bad_config_raises_config_error_naming_the_dotted_key(text: str, key: str) -> None:
    err = config_error(text)
    assert err.key == key
    assert str(err).startswith(f"{key}: ")
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    "header",
    ["Content-Encoding", "Content-Type", "X-Prometheus-Remote-Write-Version", "User-Agent",
     "X-Scope-OrgID", "Retry-Attempt", "Content-Length", "content-type", "USER-AGENT",
     "x-scope-orgid"],
)  # fmt: skip
def test_reserved_headers_cannot_be_configured(header: str) -> None:
    err = config_error(f"remote_write: {{headers: {{'{header}': x}}}}")
    assert err.key == "remote_write.headers"
    assert header in str(err)


@pytest.mark.parametrize("name", ["1abc", "a-b", "a.b", "__meta", "__name__", "ü", "a b", ""])
def test_bad_external_label_names_are_rejected(name: str) -> None:
    err = config_error(f"external_labels: {{'{name}': x}}")
    assert err.key == "external_labels"


def test_external_label_with_empty_value_is_rejected() -> None:
    assert config_error("external_labels: {dc: ''}").key == "external_labels"


@pytest.mark.parametrize("name", ["domain", "uuid", "instance_name", "project_uuid", "image_uuid"])
def test_external_label_clashing_with_an_agent_label_names_the_label(name: str) -> None:
    assert config_error(f"external_labels: {{{name}: x}}").key == f"external_labels.{name}"


@pytest.mark.parametrize(
    "name",
    ["iothread", "monitor", "memory_node", "port_id", "volume_id", "interface_mac", "disk_bus"],
)
def test_external_label_clashing_with_a_device_label_is_refused(name: str) -> None:
    assert config_error(f"external_labels: {{{name}: x}}").key == f"external_labels.{name}"


@pytest.mark.parametrize(
    "name",
    ["type", "model", "source", "mac", "mtu", "device", "bus", "cache", "io", "serial",
     "driver_type", "source_type", "discard", "iotune_group"],
)  # fmt: skip
def test_generic_external_labels_do_not_clash_with_the_device_info_labels(name: str) -> None:
    # The devices' info series prefix their labels (interface_*, disk_*): a node whose
    # operator labels it with e.g. type or source keeps starting after an upgrade.
    assert dict(parse(f"external_labels: {{{name}: x}}").external_labels)[name] == "x"


# --- filters, stats groups, dropped labels and label limits -------------------------------


def test_stats_groups_are_kept_once_in_order() -> None:
    cfg = parse("collect: {groups: [state, perf, state, block]}")
    assert cfg.collect.groups == ("state", "perf", "block")


def test_dropping_an_identity_label_says_why() -> None:
    err = config_error("labels: {drop: [source_file, uuid]}")
    assert err.key == "labels.drop"
    assert "identifies" in str(err)


def test_every_droppable_label_is_accepted() -> None:
    cfg = parse(f"labels: {{drop: [{', '.join(config.DROPPABLE_LABELS)}]}}")
    assert cfg.labels.drop == config.DROPPABLE_LABELS


def test_the_label_count_limit_is_checked_against_what_the_agent_sends() -> None:
    # Defaults: __name__, host, domain, uuid and the 10 Nova labels of the info series.
    assert parse("limits: {max_label_names_per_series: 14}").limits.max_label_names_per_series
    err = config_error("limits: {max_label_names_per_series: 13}")
    assert "14 label names" in str(err)
    # Dropping Nova labels makes room.
    parse("limits: {max_label_names_per_series: 13}\nlabels: {drop: [image_uuid]}")
    # Mimir's 30 with many external labels and every Nova label on every series.
    many = ", ".join(f"l{i}: v" for i in range(14))  # and host
    every = ", ".join(config.NOVA_LABELS)
    err = config_error(f"external_labels: {{{many}}}\nnova: {{series_labels: [{every}]}}")
    assert err.key == "limits.max_label_names_per_series"
    assert "31 label names" in str(err)
    parse(f"external_labels: {{{many}}}\nnova: {{series_labels: [{every}]}}\n"
          "labels: {drop: [source_file]}")  # fmt: skip
    # So many external labels that nothing can fit: the external labels are the problem.
    lots = ", ".join(f"l{i}: v" for i in range(26))
    assert config_error(f"external_labels: {{{lots}}}").key == "external_labels"


def test_external_labels_must_fit_the_length_limits() -> None:
    err = config_error("external_labels: {dc: " + "x" * 101 + "}\n"
                       "limits: {max_label_value_length: 100}")  # fmt: skip
    assert err.key == "external_labels.dc"
    err = config_error(
        "external_labels: {" + "a" * 31 + ": x}\nlimits: {max_label_name_length: 30}"
    )
    assert err.key == "external_labels"
    assert "a" * 31 not in str(err)


def test_valid_label_names_are_accepted() -> None:
    cfg = parse("external_labels: {_private: a, Zone: b, az9: c}")
    assert {"_private", "Zone", "az9"} <= set(cfg.external_labels)


def test_numbers_in_string_maps_become_strings() -> None:
    cfg = parse("external_labels: {rack: 12}\nremote_write: {headers: {X-Shard: 3}}")
    assert cfg.external_labels["rack"] == "12"
    assert cfg.remote_write.headers["X-Shard"] == "3"


def test_top_level_that_is_not_a_map_is_an_error() -> None:
    with pytest.raises(ConfigError):
        parse("- a\n- b\n")


def test_config_error_is_a_value_error_with_the_key() -> None:
    err = ConfigError("a.b", "broken")
    assert isinstance(err, ValueError)
    assert (err.key, str(err)) == ("a.b", "a.b: broken")


# --- the host label ----------------------------------------------------------------------


def test_host_label_defaults_to_the_hostname() -> None:
    cfg = from_mapping({}, {})
    assert cfg.external_labels["host"] == socket.gethostname()


def test_host_label_can_be_overridden() -> None:
    cfg = parse("external_labels: {host: kvm-17.example}")
    assert cfg.external_labels["host"] == "kvm-17.example"


# --- the file loader ---------------------------------------------------------------------


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "pusher.yaml"
    path.write_text("remote_write:\n  url: http://mimir:8080/api/v1/push\n", encoding="utf-8")
    assert load(str(path), env={}).remote_write.url == "http://mimir:8080/api/v1/push"


def test_load_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(str(tmp_path / "nope.yaml"), env={})


def test_load_of_invalid_yaml_says_which_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("collect:\n  interval: 15s\n bad: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 3 is not valid YAML"):
        load(str(path), env={})


def test_load_of_a_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("remote_write: {tenant: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(str(path), env={})


@pytest.mark.parametrize("interval", ["1s", "5s", "15s", "2m"])
def test_the_worker_stack_config_loads_with_any_interval(interval: str) -> None:
    # compose/worker.env.example offers PUSHER_INTERVAL; MIMIR_URL is the one variable the
    # config requires. A fixed timeout there once made 5s a restart loop.
    env = {"MIMIR_URL": "https://mimir.example.com/api/v1/push", "PUSHER_INTERVAL": interval}
    cfg = load(str(REPO / "compose" / "config.yaml"), env=env)
    assert cfg.collect.interval == parse_duration(interval)
    assert cfg.collect.timeout == min(10.0, parse_duration(interval))


@pytest.mark.parametrize(
    "path", ["config.example.yaml", "compose/config.yaml", "compose/dev-config.yaml"]
)
def test_shipped_configs_let_the_timeout_follow_the_interval(path: str) -> None:
    # A timeout written next to the interval turns a shorter interval into a config error.
    flat: dict[str, object] = {}
    config._flatten(yaml.safe_load((REPO / path).read_text(encoding="utf-8")), "", flat)
    assert "collect.interval" in flat
    assert "collect.timeout" not in flat


# --- the command line --------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pusher", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("PUSHER_TEST_")},
    )


def write(tmp_path: Path, text: str, name: str = "pusher.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def assert_one_line_config_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("libvirt-pusher: config error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("remote_write:\n  url: http://m/push\n  timeout: forever\n", "remote_write.timeout"),
        ("remote_write:\n  url: http://m/push\n  extra: 1\n", "remote_write.extra"),
        ("remote_write:\n  url: http://m/push\ncollect:\n  interval: {a: 1}\n", "collect.interval"),
        ("remote_write:\n  url: http://m/push\n  tenant: ${PUSHER_TEST_UNSET_VAR}\n",
         "remote_write.tenant"),
        ("remote_write:\n  tenant: a\n", "remote_write.url"),
    ],
)  # fmt: skip
def test_cli_check_config_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    result = run_cli("--check-config", "-c", write(tmp_path, text))
    assert_one_line_config_error(result, key)
    assert result.stdout == ""


def test_cli_check_config_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    assert_one_line_config_error(run_cli("--check-config", "-c", missing), missing)


def test_cli_check_config_of_invalid_yaml_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "remote_write:\n  url: [http://m/push\n")
    assert_one_line_config_error(run_cli("--check-config", "-c", path), "not valid YAML")


def test_cli_check_config_of_a_valid_file_exits_0(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        remote_write:
          url: https://mimir.example.com/api/v1/push
          tenant: edge
        external_labels:
          dc: ams1
        """,
    )
    result = run_cli("--check-config", "-c", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK")
    assert "https://mimir.example.com/api/v1/push" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"libvirt-pusher {__version__}"
