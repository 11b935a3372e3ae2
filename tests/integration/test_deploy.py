"""The deployment artefacts: compose stacks, their configs, the alerting rules, the dashboard and
the systemd unit.

Checked with the real tools (Debian's docker-compose, promtool, systemd-analyze): a missing tool
fails the test with the package to install, it never skips (scripts/setup-host.sh installs them).
No Docker engine is needed: `docker-compose config` validates and resolves a file offline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from pusher import config as pusher_config
from pusher.catalog import CATALOG

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
DEPLOY = ROOT / "deploy"
WORKER = COMPOSE / "worker.yml"
DEV = COMPOSE / "dev.yml"
ALERTS = DEPLOY / "alerts.yml"
ALERTS_TEST = DEPLOY / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "libvirt-pusher.json"
UNIT = DEPLOY / "libvirt-pusher.service"

RO_SOCKET = "/var/run/libvirt/libvirt-sock-ro"
SPOOL = "/var/lib/libvirt-pusher"
CONFIG_IN_CONTAINER = "/etc/libvirt-pusher/config.yaml"
# What worker.yml requires from the operator; values as in compose/worker.env.example.
WORKER_ENV = {
    "MIMIR_URL": "https://mimir.example.com/api/v1/push",
    "PUSHER_HOST": "compute-17",
    "PUSHER_CLUSTER": "region1",
}
# Metric names in PromQL: identifiers of the agent's two families, wherever they stand.
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:libvirt|pusher)_[A-Za-z0-9_:]*)")
CATALOG_NAMES = frozenset(m.name for m in CATALOG)
# Grafana's variables, replaced by something PromQL parses.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

ALERT_NAMES = {
    "LibvirtPusherNotDelivering",
    "LibvirtPusherBacklogGrowing",
    "LibvirtPusherSamplesDropped",
    "LibvirtPusherRequestsRejected",
    "LibvirtDown",
    "LibvirtGuestCrashed",
    "LibvirtGuestStuckPaused",
    "LibvirtGuestUnresponsive",
    "LibvirtGuestNotRunning",
    "LibvirtGuestMemoryPressure",
    "LibvirtGuestSwapping",
    "LibvirtGuestVcpuSteal",
}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install {package} (scripts/setup-host.sh)")
    return path


def run(args: list[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Keeps a compose/.env an operator may have left in this checkout out of the tests.
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


def compose_config(
    file: Path, env_file: Path, extra_env: Mapping[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing of this shell (proxies, CA bundles…) leaks into the result.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra_env}
    compose = tool("docker-compose", "docker-compose")
    return run([compose, "--env-file", str(env_file), "-f", str(file), *args, "config"], env)


@pytest.fixture(scope="module")
def worker(empty_env_file: Path) -> dict[str, Any]:
    result = compose_config(WORKER, empty_env_file, WORKER_ENV)
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


@pytest.fixture(scope="module")
def dev(empty_env_file: Path) -> dict[str, Any]:
    result = compose_config(DEV, empty_env_file, {}, "--profile", "host")
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def volumes(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The service's volumes by target, as `docker-compose config` writes them (long form)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):  # short form source:target[:mode]
            source, target, *mode = v.split(":")
            kind = "bind" if source.startswith(("/", ".")) else "volume"
            v = {"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]}
        out[v["target"]] = v
    return out


# --- the worker stack --------------------------------------------------------------------------


def test_worker_stack_requires_the_operator_settings(empty_env_file: Path) -> None:
    for missing in WORKER_ENV:
        env = {k: v for k, v in WORKER_ENV.items() if k != missing}
        result = compose_config(WORKER, empty_env_file, env)
        assert result.returncode != 0, f"worker.yml resolves without {missing}"
        assert missing in result.stderr


def test_worker_mounts_the_read_only_socket_config_and_spool_volume(worker: dict[str, Any]) -> None:
    pusher = worker["services"]["pusher"]
    mounts = volumes(pusher)
    socket = mounts[RO_SOCKET]
    assert socket["source"] == RO_SOCKET
    assert socket["read_only"] is True
    # Only the read-only socket: not the directory, which holds the read-write socket too.
    assert not any(m["source"].rstrip("/") == "/var/run/libvirt" for m in mounts.values())
    cfg = mounts[CONFIG_IN_CONTAINER]
    assert cfg["read_only"] is True
    assert Path(cfg["source"]) == COMPOSE / "config.yaml"
    spool = mounts[SPOOL]
    assert spool["type"] == "volume"
    assert spool["source"] in worker["volumes"]
    assert not spool.get("read_only", False)


def test_worker_publishes_no_port_and_checks_health_without_one(worker: dict[str, Any]) -> None:
    pusher = worker["services"]["pusher"]
    assert "ports" not in pusher
    assert "expose" not in pusher
    assert pusher.get("network_mode") != "host"
    check = pusher["healthcheck"]["test"]
    assert check[0] == "CMD"
    assert check[1:] == ["libvirt-pusher", "-c", CONFIG_IN_CONTAINER, "--health"]


def test_worker_runs_confined(worker: dict[str, Any]) -> None:
    pusher = worker["services"]["pusher"]
    assert pusher["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in pusher["tmpfs"])
    assert pusher["cap_drop"] == ["ALL"]
    assert "cap_add" not in pusher
    assert "no-new-privileges:true" in pusher["security_opt"]
    assert not pusher.get("privileged", False)
    assert pusher["user"].split(":")[0] not in ("0", "root")
    assert pusher["group_add"] == ["42473"]  # Kolla's libvirt group unless LIBVIRT_GID says
    assert pusher["restart"] in ("unless-stopped", "always")
    assert pusher["logging"]["driver"] == "json-file"
    assert {"max-size", "max-file"} <= set(pusher["logging"]["options"])
    # The host label is the node's name, not a container id.
    assert pusher["hostname"] == WORKER_ENV["PUSHER_HOST"]
    assert pusher["environment"]["MIMIR_URL"] == WORKER_ENV["MIMIR_URL"]


def test_worker_stops_within_its_grace(worker: dict[str, Any]) -> None:
    pusher = worker["services"]["pusher"]
    cfg = pusher_config.load(str(COMPOSE / "config.yaml"), env={"MIMIR_URL": "http://m/api"})
    grace = pusher_config.parse_duration(pusher["stop_grace_period"])
    assert grace > cfg.collect.timeout + cfg.shutdown_grace


def test_worker_pins_its_images(worker: dict[str, Any], dev: dict[str, Any]) -> None:
    for stack in (worker, dev):
        for name, service in stack["services"].items():
            image = service["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{name}: image {image} has no tag"
            assert not image.endswith(":latest"), f"{name}: image {image}"
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert ":latest" not in dockerfile
    for base in re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, re.MULTILINE):
        assert re.match(r"python:\d+\.\d+\.\d+-slim-\w+@sha256:[0-9a-f]{64}$", base), base


@pytest.mark.parametrize("name", ["config.yaml", "dev-config.yaml"])
def test_compose_agent_configs_pass_check_config(name: str) -> None:
    env = {**os.environ, "MIMIR_URL": WORKER_ENV["MIMIR_URL"]}
    env.pop("PUSHER_CLUSTER", None)
    result = run([sys.executable, "-m", "pusher", "--check-config", "-c", f"compose/{name}"], env)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


def test_worker_config_reads_the_socket_and_spool_the_stack_mounts() -> None:
    cfg = pusher_config.load(str(COMPOSE / "config.yaml"), env={"MIMIR_URL": "http://m/api"})
    assert cfg.libvirt.uri.endswith(f"?socket={RO_SOCKET}")
    assert cfg.buffer.path == SPOOL
    assert cfg.remote_write.url == "http://m/api"
    assert cfg.remote_write.tenant == "openstack"


# --- the dev stack -----------------------------------------------------------------------------


def test_dev_stack_resolves_and_its_files_exist(dev: dict[str, Any]) -> None:
    services = dev["services"]
    assert {"mimir", "grafana", "pusher", "pusher-host"} <= set(services)
    for name, service in services.items():
        for mount in volumes(service).values():
            if mount["type"] == "bind" and mount["source"] != RO_SOCKET:
                assert Path(mount["source"]).exists(), f"{name}: {mount['source']} is missing"
    # Loopback only, and nothing for the agents.
    for name in ("mimir", "grafana"):
        for port in services[name]["ports"]:
            published = port if isinstance(port, str) else port.get("host_ip", "")
            assert "127.0.0.1" in str(published), f"{name} publishes {port} beyond loopback"
    for name in ("pusher", "pusher-host"):
        assert "ports" not in services[name]


def test_dev_mimir_is_multi_tenant_on_the_filesystem() -> None:
    mimir = yaml.safe_load((COMPOSE / "mimir.yaml").read_text())
    assert mimir["multitenancy_enabled"] is True
    assert mimir["blocks_storage"]["backend"] == "filesystem"
    assert mimir["limits"]["out_of_order_time_window"]


def test_dev_grafana_sends_the_tenant_header_and_loads_the_dashboard(dev: dict[str, Any]) -> None:
    sources = yaml.safe_load((COMPOSE / "grafana" / "datasources.yml").read_text())["datasources"]
    (mimir,) = sources
    assert mimir["url"].startswith("http://mimir:9009/")
    headers = {
        v: mimir["secureJsonData"][k.replace("Name", "Value")]
        for k, v in mimir["jsonData"].items()
        if k.startswith("httpHeaderName")
    }
    assert headers == {"X-Scope-OrgID": "openstack"}
    grafana = volumes(dev["services"]["grafana"])
    dashboards_dir = yaml.safe_load((COMPOSE / "grafana" / "dashboards.yml").read_text())
    path = dashboards_dir["providers"][0]["options"]["path"]
    assert Path(grafana[f"{path}/libvirt-pusher.json"]["source"]) == DASHBOARD


def test_dev_pusher_reads_the_packaged_test_node(dev: dict[str, Any], tmp_path: Path) -> None:
    # The dev config, pointed at the repository's copy of the node file the stack mounts.
    mounts = volumes(dev["services"]["pusher"])
    node = Path(mounts["/etc/libvirt-pusher/testnode.xml"]["source"])
    assert node == ROOT / "pusher" / "demo" / "testnode.xml"
    text = (COMPOSE / "dev-config.yaml").read_text()
    assert "test:///etc/libvirt-pusher/testnode.xml" in text
    config = tmp_path / "dev-config.yaml"
    config.write_text(
        text.replace("test:///etc/libvirt-pusher/testnode.xml", f"test://{node}").replace(
            SPOOL, str(tmp_path / "spool")
        )
    )
    result = run([sys.executable, "-m", "pusher", "--dry-run", "-c", str(config)])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    info = [line for line in lines if line.startswith("libvirt_domain_openstack_info{")]
    assert len(info) == 3
    assert all('cluster="dev"' in line and 'project_name="' in line for line in info)


# --- alerting rules ----------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool_check() -> None:
    promtool = tool("promtool", "prometheus")
    result = run([promtool, "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass() -> None:
    promtool = tool("promtool", "prometheus")
    result = run([promtool, "test", "rules", str(ALERTS_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    rules = {r["alert"] for r in alert_rules()}
    assert rules == ALERT_NAMES
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert fires == ALERT_NAMES
    assert silent == ALERT_NAMES


def test_alerts_carry_severity_and_text() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


# --- dashboard ---------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [
        target["expr"]
        for panel in all_panels(board["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_dashboard_has_the_views_and_variables() -> None:
    board = dashboard()
    variables = [v["name"] for v in board["templating"]["list"]]
    assert variables == ["datasource", "cluster", "host", "project", "instance"]
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == [
        "Host overview", "Projects", "Instances", "libvirt-pusher health",
        "Jobs and unresponsive guests",
    ]  # fmt: skip
    titles = " ".join(p["title"].lower() for p in all_panels(board["panels"]))
    for word in ("cpu", "steal", "memory", "disk", "network", "backlog", "dropped", "last",
                 "jobs", "not answering"):  # fmt: skip
        assert word in titles
    for panel in all_panels(board["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_queries_name_only_metrics_of_the_catalog() -> None:
    used: dict[str, set[str]] = {"dashboard": set(), "alerts": set()}
    for query in dashboard_queries():
        used["dashboard"].update(METRIC_NAME.findall(query))
    for rule in alert_rules():
        used["alerts"].update(METRIC_NAME.findall(rule["expr"]))
    for where, names in used.items():
        assert names, f"no metric found in the {where}"
        unknown = names - CATALOG_NAMES
        assert not unknown, f"the {where} query metrics that do not exist: {sorted(unknown)}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses rule expressions: every panel query becomes a recording rule.
    promtool = tool("promtool", "prometheus")
    rules = []
    for i, query in enumerate(q for q in dashboard_queries() if not q.startswith("label_values")):
        for var, value in GRAFANA_VARIABLES.items():
            query = query.replace(var, value)
        query = re.sub(r"\$\{?[a-z]+\}?", ".*", query)
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- systemd -----------------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_is_hardened() -> None:
    s = unit_settings()
    assert s.get("DynamicUser") == ["yes"] or s.get("User") not in (None, ["root"])
    expected = {
        "StateDirectory": ["libvirt-pusher"],
        "StateDirectoryMode": ["0700"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "Restart": ["on-failure"],
        "KillSignal": ["SIGTERM"],
    }
    for key, value in expected.items():
        assert s.get(key) == value, f"{key}={s.get(key)}"
    assert "@system-service" in s["SystemCallFilter"]
    (pre,) = s["ExecStartPre"]
    assert pre.endswith("--check-config")
    (start,) = s["ExecStart"]
    assert pre.split()[:3] == start.split()[:3]  # the same binary and config


def test_systemd_unit_waits_longer_than_the_agent_takes_to_stop() -> None:
    cfg = pusher_config.load(None)
    (timeout,) = unit_settings()["TimeoutStopSec"]
    assert pusher_config.parse_duration(timeout) > cfg.collect.timeout + cfg.shutdown_grace


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    # The unit names /opt/libvirt-pusher; verify it against the agent installed here.
    here = Path(sys.executable).parent / "libvirt-pusher"
    assert here.exists(), f"{here}: the project is not installed in this Python"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/libvirt-pusher/bin/libvirt-pusher", str(here)))
    result = run([analyze, "verify", str(unit)])
    problems = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, result.stderr
