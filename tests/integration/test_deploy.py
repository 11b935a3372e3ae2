"""The deployment artefacts: compose stacks, their configs, the alerting rules, the dashboard and
the systemd unit.

Checked with the real tools (Debian's docker-compose, promtool, systemd-analyze): a missing tool
fails the test with the package to install, it never skips (scripts/setup-host.sh installs them).
`docker-compose config` validates and resolves the compose files offline; the worker stack is
then built and run for real on a Docker engine the tests start (dockerhost.py) against a
libvirtd set up as a compute node's (hostlibvirt.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerhost import DockerEngine, docker
from guests import DOMAIN_BASE, Guest, create_guests, destroy_guests
from hostlibvirt import HostLibvirtd
from mimir import Mimir

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
    "LibvirtPusherEndpointNotDelivering",
    "LibvirtPusherBacklogGrowing",
    "LibvirtPusherBacklogDrainSlow",
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
    # Root without a capability: the id every libvirtd's user database names, and the one
    # client polkit is not asked about (docs/operations.md, "Why root").
    assert pusher["user"] == "0:0"
    assert "group_add" not in pusher
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


# --- the worker stack, built and run ------------------------------------------------------------
#
# The image is built from compose/Dockerfile on a stand-in base (scripts/build-base-image.sh:
# no registry is reachable here) and compose/worker.yml runs as shipped against a libvirtd set
# up as a compute node's (hostlibvirt.py), with one override for this machine: host networking,
# to reach the real Mimir on loopback (the data checked under tenant openstack), and a 2 s
# healthcheck interval, so that the three failed probes that make a container unhealthy take
# seconds instead of minutes.

BASE_IMAGE = "libvirt-pusher-base:bookworm"
INTERVAL_S = 2.0
TEST_HOST = "compute-ci-7"
OVERRIDE = """
services:
  pusher:
    network_mode: host
    healthcheck:
      interval: 2s
      start_period: 10s
"""


def step(what: str, started: float) -> float:
    now = time.monotonic()
    print(f"worker stack: {what}: {now - started:.2f} s")
    return now


def wait_for(what: str, check: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f} s: {why()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    engine = DockerEngine(tmp_path_factory.mktemp("dockerd"))
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def build_image(tag: str, epoch: int) -> float:
    started = time.monotonic()
    args = ["-f", "compose/Dockerfile", "-t", tag, "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}"]
    args += ["--build-arg", f"SOURCE_DATE_EPOCH={epoch}"]
    result = docker("build", *args, str(ROOT), timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return time.monotonic() - started


@pytest.fixture(scope="module")
def pusher_image(docker_engine: DockerEngine) -> str:
    started = time.monotonic()
    result = run([str(ROOT / "scripts" / "build-base-image.sh"), BASE_IMAGE])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    started = step("base image", started)
    epoch = int(run(["git", "log", "-1", "--format=%ct"]).stdout.strip() or "315532800")
    print(f"worker stack: image build: {build_image('libvirt-pusher:ci-1', epoch):.2f} s")
    return "libvirt-pusher:ci-1"


class Stack:
    """compose/worker.yml under a project of its own, with the test override."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.project = f"pushertest{os.getpid()}"
        self.override = workdir / "override.yml"
        self.override.write_text(OVERRIDE)
        self.env_file = workdir / "worker.env"
        self.env = env
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **self.env}
        files = ["-f", str(WORKER), "-f", str(self.override)]
        base = [tool("docker-compose", "docker-compose"), "--project-name", self.project]
        base += ["--env-file", str(self.env_file), *files]
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )

    def up(self, *args: str) -> None:
        result = self.compose("up", "-d", *args)
        assert result.returncode == 0, result.stdout + result.stderr

    def container(self) -> str:
        return self.compose("ps", "-q", "pusher").stdout.strip()

    def inspect(self, template: str) -> str:
        return docker("inspect", "-f", template, self.container()).stdout.strip()

    def health(self) -> str:
        return self.inspect("{{.State.Health.Status}}")

    def health_log(self) -> str:
        return self.inspect("{{range .State.Health.Log}}{{.Output}}{{end}}")

    def logs(self) -> str:
        result = docker("logs", self.container())
        return result.stdout + result.stderr

    def exec_python(self, code: str) -> subprocess.CompletedProcess[str]:
        return docker("exec", self.container(), "python3", "-c", code)

    def spool_requests(self, image: str, what: str = "COUNT(*)") -> int:
        """Requests in the spool volume (`what`: another aggregate of its rows)."""
        code = (
            "import sqlite3; print(sqlite3.connect('/spool/spool.db')"
            f".execute('SELECT {what} FROM requests').fetchone()[0])"
        )
        result = docker(
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{self.project}_spool:/spool",
            "--entrypoint",
            "python3",
            image,
            "-c",
            code,
        )
        assert result.returncode == 0, result.stderr
        return int(result.stdout)


# What the agent, inside the container, may see of libvirt and of its own privileges.
ISOLATION_PROBE = """
import json, os, stat, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
lines = open("/proc/self/status").read().splitlines()
status = dict(line.split(":\\t", 1) for line in lines if ":\\t" in line)
sockets = []
for d, _, files in os.walk("/"):
    if d.startswith(("/proc", "/sys")):
        continue
    for f in files:
        path = os.path.join(d, f)
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            sockets.append(path)
try:
    open("/written", "w")
    rootfs = "writable"
except OSError as e:
    rootfs = e.strerror
conn = libvirt.open("qemu:///system?socket=/var/run/libvirt/libvirt-sock-ro")
dom = conn.listAllDomains()[0]
try:
    dom.suspend()
    write = "allowed"
except libvirt.libvirtError as e:
    write = str(e)
mounted = os.path.realpath("/var/run/libvirt/libvirt-sock-ro")
print(json.dumps({"sockets": sockets, "mounted": mounted, "cap_eff": status["CapEff"].strip(),
                  "no_new_privs": status["NoNewPrivs"].strip(), "uid": os.getuid(),
                  "rootfs": rootfs, "write": write}))
"""


class TenantView:
    """The queries of one tenant of the real Mimir (what Grafana sees for that tenant)."""

    def __init__(self, mimir: Mimir, tenant: str) -> None:
        self.mimir = mimir
        self.tenant = tenant

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.mimir.query(promql, self.tenant)


def cycle_runs(receiver: TenantView) -> list[list[int]]:
    """pusher_cycles_total of the test host, split where a new process started counting."""
    result = receiver.query(f'pusher_cycles_total{{host="{TEST_HOST}"}}[15m]')
    assert len(result) == 1, result
    runs: list[list[int]] = []
    for _, value in result[0]["values"]:
        n = int(float(value))
        if not runs or n <= runs[-1][-1]:
            runs.append([])
        runs[-1].append(n)
    return runs


def test_worker_stack_runs_as_shipped(
    pusher_image: str, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    started = time.monotonic()
    node = HostLibvirtd(Path(tempfile.mkdtemp(prefix="pusher-node-")), "debian")
    guest_dir = Path(tempfile.mkdtemp(prefix="pusher-node-guests-"))
    guests: list[Guest] = []
    mimir = Mimir(tmp_path / "mimir")
    receiver = TenantView(mimir, "openstack")  # the tenant compose/config.yaml sets
    stack = Stack(
        tmp_path,
        {
            "MIMIR_URL": mimir.push_url,
            "PUSHER_HOST": TEST_HOST,
            "PUSHER_CLUSTER": "ci",
            "PUSHER_INTERVAL": f"{INTERVAL_S:g}s",
            "PUSHER_IMAGE": pusher_image,
            "LIBVIRT_SOCKET_RO": str(node.ro_socket),
        },
    )
    try:
        base = DOMAIN_BASE + 0x100
        guests = create_guests(node.uri, guest_dir, 2, prefix="docker-test", base=base)
        started = step("host-like libvirtd with 2 guests", started)
        stack.up()

        # Every guest's series, under the node's name.
        uuids = {g["uuid"] for g in guests}

        def arrived() -> set[str]:
            info = receiver.query(f'libvirt_domain_openstack_info{{host="{TEST_HOST}"}}')
            return {s["metric"]["uuid"] for s in info}

        wait_for(
            "every guest's series",
            lambda: arrived() == uuids,
            60,
            lambda: f"{arrived()} != {uuids}\n{stack.logs()[-3000:]}",
        )
        up = receiver.query(f'libvirt_up{{host="{TEST_HOST}", cluster="ci"}}')
        assert [s["value"][1] for s in up] == ["1"]
        cpu = receiver.query(f'libvirt_domain_info_cpu_time_seconds_total{{host="{TEST_HOST}"}}')
        assert {s["metric"]["uuid"] for s in cpu} == uuids
        assert TenantView(mimir, "another-tenant").query("libvirt_up") == []
        started = step("series of every guest arrived", started)
        wait_for("healthy", lambda: stack.health() == "healthy", 60, stack.health_log)
        started = step("healthy", started)

        # The read-only socket is all it reaches, and through it libvirt refuses writes.
        probe = stack.exec_python(ISOLATION_PROBE)
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout)
        # /var/run is a link to /run in the image: the socket is found under its real path.
        assert seen["sockets"] == [seen["mounted"]], seen
        assert seen["mounted"].endswith("/run/libvirt/libvirt-sock-ro"), seen
        assert seen["uid"] == 0 and seen["cap_eff"] == "0000000000000000", seen
        assert seen["no_new_privs"] == "1", seen
        assert seen["rootfs"] == "Read-only file system", seen
        assert "read only access prevents" in seen["write"], seen

        # docker stop during an outage: within the grace period, the backlog kept.
        mimir.stop()
        time.sleep(4 * INTERVAL_S)
        stop_started = time.monotonic()
        result = stack.compose("stop")
        took = time.monotonic() - stop_started
        assert result.returncode == 0, result.stderr
        print(f"worker stack: docker stop with the receiver down: {took:.2f} s")
        assert took < pusher_config.parse_duration("30s")
        assert stack.inspect("{{.State.ExitCode}}") == "0"
        spooled = stack.spool_requests(pusher_image)
        assert spooled >= 3, f"{spooled} request(s) in the spool after 4 cycles without receiver"
        # A cycle may take more than one request (2.0: the domains', the agent's own).
        spooled_cycles = stack.spool_requests(pusher_image, "COUNT(DISTINCT ts_ms)")

        # An upgrade: a rebuilt image, the container re-created on the same spool volume.
        new_image = "libvirt-pusher:ci-2"
        epoch = int(run(["git", "log", "-1", "--format=%ct"]).stdout.strip()) + 1
        print(f"worker stack: image rebuild: {build_image(new_image, epoch):.2f} s")
        assert (
            docker("image", "inspect", "-f", "{{.Id}}", new_image).stdout
            != docker("image", "inspect", "-f", "{{.Id}}", pusher_image).stdout
        )
        mimir.start()  # on the same ports and data
        stack.env["PUSHER_IMAGE"] = new_image
        stack.env_file.write_text("".join(f"{k}={v}\n" for k, v in stack.env.items()))
        stack.up("--force-recreate")
        assert stack.inspect("{{.Config.Image}}") == new_image
        wait_for(
            "the spooled backlog delivered",
            lambda: len(cycle_runs(receiver)) == 2 and stack.spool_requests(new_image) == 0,
            60,
            lambda: f"{cycle_runs(receiver)}",
        )
        first, second = cycle_runs(receiver)
        # Every cycle of the first container arrived, those it spooled during the outage too.
        assert first == list(range(1, len(first) + 1)), first
        assert second == list(range(1, len(second) + 1)), second
        assert len(first) >= spooled_cycles
        started = step("upgrade delivered the spooled cycles", started)

        # libvirtd stopped: unhealthy, and both the healthcheck and the log say why.
        destroy_guests(node.uri, [g["name"] for g in guests])
        guests = []
        node.stop_libvirtd()
        wait_for("unhealthy", lambda: stack.health() == "unhealthy", 60, stack.health_log)
        assert "libvirt unreadable for" in stack.health_log()
        assert "cannot connect to qemu:///system" in stack.logs()
        step("unhealthy with libvirtd stopped", started)
    finally:
        down = stack.compose("down", "--volumes", "--timeout", "30")
        mimir.stop()
        if guests:
            destroy_guests(node.uri, [g["name"] for g in guests])
        node.stop()
        shutil.rmtree(guest_dir, ignore_errors=True)
        shutil.rmtree(node.workdir, ignore_errors=True)
        assert down.returncode == 0, down.stderr


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", "libvirt_up"),  # as shipped: root without capabilities
        ("65534:65534", "Unable to get system bus connection"),  # nobody: polkit unreachable
        ("10001:10001", "Failed to find user record for uid '10001'"),  # the old image's uid
    ],
)
def test_only_the_shipped_identity_reads_a_kolla_libvirtd(
    pusher_image: str, tmp_path: Path, user: str, expected: str
) -> None:
    node = HostLibvirtd(Path(tempfile.mkdtemp(prefix="pusher-kolla-")), "kolla")
    stack = Stack(
        tmp_path,
        {
            "MIMIR_URL": "http://127.0.0.1:9/api/v1/push",
            "PUSHER_HOST": TEST_HOST,
            "PUSHER_CLUSTER": "ci",
            "PUSHER_IMAGE": pusher_image,
            "LIBVIRT_SOCKET_RO": str(node.ro_socket),
        },
    )
    try:
        as_user = ["--user", user] if user else []
        result = stack.compose(
            "run", "--rm", "--no-deps", *as_user, "pusher", "-c", CONFIG_IN_CONTAINER, "--dry-run"
        )
        up = [line for line in result.stdout.splitlines() if line.startswith("libvirt_up{")]
        assert len(up) == 1, result.stdout[-2000:] + result.stderr[-2000:]
        assert up[0].endswith(" 1" if not user else " 0"), up
        assert expected in (result.stdout + result.stderr)
    finally:
        stack.compose("down", "--volumes")
        node.stop()
        shutil.rmtree(node.workdir, ignore_errors=True)
