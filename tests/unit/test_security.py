"""Security: credential keys and their validation, secrets never printed, hostile receivers,
least privilege. Real servers on 127.0.0.1, real files, the real CLI; no mocks."""

from __future__ import annotations

import ast
import base64
import concurrent.futures
import gzip
import http.server
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest
import yaml
from pki import PKI, make_pki

from pusher import config, sender
from pusher.agent import Agent
from pusher.collect import Collector
from pusher.config import BasicAuth, Config, ConfigError, RemoteWriteConfig, TLSConfig, from_mapping
from pusher.secrets import redact_url
from pusher.sender import MAX_ERROR_BODY, Outcome, Sender
from pusher.spool import Spool

REPO = Path(__file__).resolve().parents[2]
BODY = b"\x1f\x00snappy-compressed-bytes"
TOKEN = "tok-3f9a1c77e2b84d5e9a0b"
PASSWORD = "pw-8c1d2e3f4a5b6c7d"
URL_PASSWORD = "urlpw-55aa66bb77cc"
HEADER_TOKEN = "hdr-0123456789abcdef"


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return from_mapping(yaml.safe_load(textwrap.dedent(text)), env or {}, "node-1")


def config_error(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return info.value


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    """Credential files as an operator would write them: 0600, with a trailing newline."""
    out = {}
    for name, value in (("token", TOKEN), ("password", PASSWORD)):
        path = tmp_path / name
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        out[name] = str(path)
    return out


@pytest.fixture
def senders() -> Iterator[list[Sender]]:
    made: list[Sender] = []
    yield made
    for s in made:
        s.close()


def make_sender(senders: list[Sender], url: str, **kwargs: object) -> Sender:
    s = Sender(RemoteWriteConfig(url=url, **kwargs))  # type: ignore[arg-type]
    senders.append(s)
    return s


# --- config: the new keys and what they must be -----------------------------------------


def test_tls_and_credential_keys_are_read(pki: PKI, secrets: dict[str, str]) -> None:
    cfg = parse(f"""
        remote_write:
          url: https://mimir.example.com/api/v1/push
          tls: {{ca_file: {pki.ca_pem}, cert_file: {pki.client_pem}, key_file: {pki.client_key},
                server_name: mimir.test}}
          bearer_token_file: {secrets["token"]}
          proxy_url: http://proxy.example:3128
    """)
    assert cfg.remote_write.tls.ca_file == pki.ca_pem
    assert (cfg.remote_write.tls.cert_file, cfg.remote_write.tls.key_file) == (
        pki.client_pem,
        pki.client_key,
    )
    assert cfg.remote_write.tls.server_name == "mimir.test"
    assert cfg.remote_write.bearer_token_file == secrets["token"]
    assert cfg.remote_write.proxy_url == "http://proxy.example:3128"


def test_credential_paths_may_come_from_the_environment(secrets: dict[str, str]) -> None:
    # systemd's LoadCredential= puts them under $CREDENTIALS_DIRECTORY.
    directory = os.path.dirname(secrets["token"])
    cfg = parse(
        "remote_write: {bearer_token_file: '${CREDENTIALS_DIRECTORY}/token'}",
        {"CREDENTIALS_DIRECTORY": directory},
    )
    assert cfg.remote_write.bearer_token_file == secrets["token"]


@pytest.mark.parametrize(
    "key", ["tls.ca_file", "tls.cert_file", "tls.key_file", "basic_auth.password_file",
            "bearer_token_file"],
)  # fmt: skip
def test_a_missing_file_is_a_config_error_naming_the_key(tmp_path: Path, key: str) -> None:
    section, _, name = key.rpartition(".")
    value = {name: str(tmp_path / "missing")}
    tree = {"remote_write": {section: value} if section else value}
    with pytest.raises(ConfigError) as info:
        from_mapping(tree, {}, "n")
    assert info.value.key == f"remote_write.{key}"
    assert "missing" in str(info.value)


@pytest.mark.parametrize("key", ["tls.ca_file", "bearer_token_file", "basic_auth.password_file"])
def test_a_directory_or_fifo_is_not_a_credential_file(tmp_path: Path, key: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    section, _, name = key.rpartition(".")
    for path in (tmp_path, fifo):  # a FIFO must not hang the start either
        value = {name: str(path)}
        tree = {"remote_write": {section: value} if section else value}
        with pytest.raises(ConfigError) as info:
            from_mapping(tree, {}, "n")
        assert info.value.key == f"remote_write.{key}"
        assert "not a regular file" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("remote_write: {tls: {cert_file: '{pki.client_pem}'}}", "remote_write.tls.key_file"),
        ("remote_write: {tls: {key_file: '{pki.client_key}'}}", "remote_write.tls.cert_file"),
        ("remote_write: {tls: {cert_file: '{pki.client_pem}', key_file: '{pki.server_key}'}}",
         "remote_write.tls.cert_file"),  # a key of another certificate
        ("remote_write: {tls: {cert_file: '{pki.client_pem}', key_file: '{pki.encrypted_key}'}}",
         "remote_write.tls.key_file"),
        ("remote_write: {tls: {ca_file: '{pki.client_key}'}}", "remote_write.tls.ca_file"),
        ("remote_write: {tls: {ca_file: '{secrets[token]}'}}", "remote_write.tls.ca_file"),
        ("remote_write: {tls: {ca_file: '{pki.ca_pem}', insecure_skip_verify: true}}",
         "remote_write.tls.insecure_skip_verify"),
        ("remote_write: {tls: {insecure_skip_verify: 'yes'}}",
         "remote_write.tls.insecure_skip_verify"),
        ("remote_write: {url: 'http://m/push', tls: {ca_file: '{pki.ca_pem}'}}",
         "remote_write.tls"),
        ("remote_write: {tls: {server_name: 'not a host'}}", "remote_write.tls.server_name"),
        ("remote_write: {tls: {server_name: '-x.example'}}", "remote_write.tls.server_name"),
        ("remote_write: {tls: true}", "remote_write.tls"),
        ("remote_write: {tls: {verify: false}}", "remote_write.tls.verify"),
        ("remote_write: {basic_auth: {username: edge}}", "remote_write.basic_auth.password_file"),
        ("remote_write: {basic_auth: {password_file: '{secrets[password]}'}}",
         "remote_write.basic_auth.username"),
        ("remote_write: {basic_auth: {username: 'a:b', password_file: '{secrets[password]}'}}",
         "remote_write.basic_auth.username"),
        ("remote_write: {basic_auth: {username: edge, password: hunter2}}",
         "remote_write.basic_auth.password"),
        ("remote_write: {bearer_token_file: '{secrets[token]}', "
         "basic_auth: {username: edge, password_file: '{secrets[password]}'}}",
         "remote_write.bearer_token_file"),
        ("remote_write: {url: 'https://u:p@m/push', bearer_token_file: '{secrets[token]}'}",
         "remote_write.url"),
        ("remote_write: {bearer_token_file: '{secrets[token]}', "
         "headers: {authorization: 'Bearer x'}}", "remote_write.headers"),
        ("remote_write: {url: 'https://u:p@m/push', headers: {Authorization: 'Bearer x'}}",
         "remote_write.headers"),
        ("remote_write: {bearer_token_file: '{secrets[spaced]}'}",
         "remote_write.bearer_token_file"),
        ("remote_write: {bearer_token_file: '{secrets[empty]}'}", "remote_write.bearer_token_file"),
        ("remote_write: {basic_auth: {username: edge, password_file: '{secrets[empty]}'}}",
         "remote_write.basic_auth.password_file"),
        ("remote_write: {bearer_token_file: '{secrets[huge]}'}", "remote_write.bearer_token_file"),
        ("remote_write: {proxy_url: 'socks5://proxy:1080'}", "remote_write.proxy_url"),
        ("remote_write: {proxy_url: 'proxy:3128'}", "remote_write.proxy_url"),
        ("remote_write: {proxy_url: 'http://proxy:port'}", "remote_write.proxy_url"),
        ("remote_write: {url: 'https://mimir:port/push'}", "remote_write.url"),
        ("remote_write: {url: 'https://mi mir/push'}", "remote_write.url"),
    ],
)  # fmt: skip
def test_transport_keys_that_cannot_work_are_config_errors_naming_the_key(
    pki: PKI, secrets: dict[str, str], tmp_path: Path, text: str, key: str
) -> None:
    for name, content in (("spaced", "two words\n"), ("empty", "\n \n"), ("huge", "x" * 70_000)):
        (tmp_path / name).write_text(content, encoding="utf-8")
        secrets[name] = str(tmp_path / name)
    text = text.replace("{pki.", "{pki_").replace("{secrets[", "{secrets_").replace("]}", "}")
    values = {f"pki_{n}": getattr(pki, n) for n in ("ca_pem", "client_pem", "client_key",
                                                    "server_key", "encrypted_key")}  # fmt: skip
    values |= {f"secrets_{k}": v for k, v in secrets.items()}
    err = config_error(re.sub(r"\{(pki_\w+|secrets_\w+)\}", lambda m: values[m.group(1)], text))
    assert err.key == key, err
    assert str(err).startswith(f"{key}: ")


def test_the_example_config_documents_every_transport_key() -> None:
    path = REPO / "config.example.yaml"
    flat: dict[str, object] = {}
    config._flatten(yaml.safe_load(path.read_text(encoding="utf-8")), "", flat)
    keys = {k for k in config._KEYS if k.startswith("remote_write.")}
    assert keys <= set(flat), keys - set(flat)
    cfg = config.load(str(path), env={})
    assert cfg.remote_write.tls.insecure_skip_verify is False
    assert cfg.remote_write.bearer_token_file == cfg.remote_write.proxy_url == ""


def test_empty_transport_keys_mean_unset() -> None:
    cfg = parse("remote_write: {tls: {ca_file: '', server_name: ''}, bearer_token_file: ''}")
    assert cfg.remote_write.tls.ca_file == cfg.remote_write.bearer_token_file == ""


def test_insecure_skip_verify_is_off_by_default_and_warned_about_when_on(
    caplog: pytest.LogCaptureFixture, senders: list[Sender]
) -> None:
    assert Config().remote_write.tls.insecure_skip_verify is False
    cfg = parse("remote_write: {url: 'https://m/push', tls: {insecure_skip_verify: true}}")
    with caplog.at_level("WARNING", logger="pusher.sender"):
        senders.append(Sender(cfg.remote_write))
    assert any(
        r.levelname == "WARNING" and "insecure_skip_verify" in r.getMessage()
        for r in caplog.records
    )


def test_credentials_over_plain_http_are_warned_about(
    caplog: pytest.LogCaptureFixture, secrets: dict[str, str], senders: list[Sender]
) -> None:
    with caplog.at_level("WARNING", logger="pusher.sender"):
        make_sender(senders, "http://m/push", bearer_token_file=secrets["token"])
    assert "plain http://" in caplog.text
    assert TOKEN not in caplog.text


# --- secrets are never printed ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("https://mimir.example.com/api/v1/push", "https://mimir.example.com/api/v1/push"),
        ("https://edge:s3cr3t@mimir:8443/push", "https://<redacted>@mimir:8443/push"),
        ("https://s3cr3t@mimir/push", "https://<redacted>@mimir/push"),
        ("https://edge:p%40ss@mimir/push", "https://<redacted>@mimir/push"),
        ("https://mimir/push?api_key=s3cr3t&x", "https://mimir/push?api_key=<redacted>&x"),
        ("http://[::1", "<redacted>"),  # unparseable: nothing of it
        ("", ""),
    ],
)
def test_redact_url(url: str, printed: str) -> None:
    assert redact_url(url) == printed


def test_config_repr_redacts_url_credentials_and_header_values(secrets: dict[str, str]) -> None:
    cfg = parse(f"""
        remote_write:
          url: https://edge:{URL_PASSWORD}@mimir/push
          headers: {{X-Api-Key: {HEADER_TOKEN}}}
          proxy_url: http://proxyuser:{PASSWORD}@proxy:3128
    """)
    for text in (repr(cfg), str(cfg), f"{cfg}", f"{cfg!r}"):
        assert URL_PASSWORD not in text
        assert HEADER_TOKEN not in text
        assert PASSWORD not in text
        assert "https://<redacted>@mimir/push" in text
        assert "X-Api-Key" in text
    with_file = parse(f"remote_write: {{bearer_token_file: {secrets['token']}}}")
    assert TOKEN not in repr(with_file)  # the path, never the content


def test_config_errors_never_quote_a_url_password() -> None:
    err = config_error(f"remote_write: {{url: 'ftp://edge:{URL_PASSWORD}@mimir/push'}}")
    assert err.key == "remote_write.url"
    assert URL_PASSWORD not in str(err)
    err = config_error(f"remote_write: {{proxy_url: 'socks5://u:{PASSWORD}@proxy'}}")
    assert PASSWORD not in str(err)


def test_config_errors_never_quote_a_credential_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN} and more\n", encoding="utf-8")
    err = config_error(f"remote_write: {{bearer_token_file: '{path}'}}")
    assert TOKEN not in str(err)


# --- credentials on the wire --------------------------------------------------------------


def test_bearer_token_file_is_sent_without_its_newline(
    http_server, senders, secrets: dict[str, str]
) -> None:
    s = make_sender(senders, http_server.url, bearer_token_file=secrets["token"])
    assert s.send(BODY).kind == "ok"
    assert http_server.received[0].headers.get_all("Authorization") == [f"Bearer {TOKEN}"]


def test_basic_auth_password_file_is_sent(http_server, senders, secrets: dict[str, str]) -> None:
    s = make_sender(senders, http_server.url, basic_auth=BasicAuth("edge-1", secrets["password"]))
    assert s.send(BODY).kind == "ok"
    expected = base64.b64encode(f"edge-1:{PASSWORD}".encode()).decode()
    assert http_server.received[0].headers["Authorization"] == f"Basic {expected}"


def test_url_userinfo_becomes_basic_auth_and_leaves_the_url(http_server, senders) -> None:
    url = http_server.url.replace("http://", f"http://edge%40x:{URL_PASSWORD}@")
    s = make_sender(senders, url)
    assert URL_PASSWORD not in s.url and "@" not in s.url
    assert s.send(BODY).kind == "ok"
    expected = base64.b64encode(f"edge@x:{URL_PASSWORD}".encode()).decode()
    assert http_server.received[0].headers["Authorization"] == f"Basic {expected}"


def test_no_credentials_means_no_authorization_header_not_even_from_netrc(
    http_server, senders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login root password {PASSWORD}\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    make_sender(senders, http_server.url).send(BODY)
    assert "Authorization" not in http_server.received[0].headers


def test_a_rotated_token_file_is_used_from_the_next_send(
    http_server, senders, secrets: dict[str, str]
) -> None:
    s = make_sender(senders, http_server.url, bearer_token_file=secrets["token"])
    s.send(BODY)
    rotated = "tok-rotated-0000000000001"
    tmp = secrets["token"] + ".new"
    Path(tmp).write_text(rotated + "\n", encoding="utf-8")
    os.replace(tmp, secrets["token"])  # how every rotation tool does it: atomically
    s.send(BODY)
    got = [r.headers["Authorization"] for r in http_server.received]
    assert got == [f"Bearer {TOKEN}", f"Bearer {rotated}"]


def test_a_token_rewritten_in_place_with_the_same_size_and_mtime_is_read_after_a_401(
    http_server, senders, secrets: dict[str, str]
) -> None:
    path = secrets["token"]
    st = os.stat(path)
    s = make_sender(senders, http_server.url, bearer_token_file=path)
    http_server.answer(401, body=b"bad token")
    assert s.send(BODY).kind == "hold"
    rotated = TOKEN[::-1]  # same length
    with open(path, "r+", encoding="utf-8") as f:
        f.write(rotated)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    http_server.answer(204)
    assert s.send(BODY, attempt=1).kind == "ok"
    assert http_server.received[-1].headers["Authorization"] == f"Bearer {rotated}"


def test_a_token_file_gone_or_empty_mid_rotation_keeps_the_last_good_token(
    http_server, senders, secrets: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    s = make_sender(senders, http_server.url, bearer_token_file=secrets["token"])
    os.remove(secrets["token"])
    s.send(BODY)
    Path(secrets["token"]).write_text("", encoding="utf-8")
    s.send(BODY)
    Path(secrets["token"]).write_text("bad token with spaces", encoding="utf-8")
    s.send(BODY)
    assert [r.headers["Authorization"] for r in http_server.received] == [f"Bearer {TOKEN}"] * 3
    assert "bearer_token_file" in caplog.text
    assert TOKEN not in caplog.text and "bad token" not in caplog.text


class EchoServer:
    """Answers every request with `status` and a body quoting the request's headers, as a
    debugging proxy or a careless receiver would: a secret in the request is then in the
    answer, and from there could reach a log line."""

    def __init__(self, status: int = 401, extra: dict[str, str] | None = None) -> None:
        self.status = status
        self.extra = extra or {}
        self.received: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.received.append((self.path, dict(self.headers.items())))
                echo = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
                body = f"denied for {self.path}\r\n{echo}".encode()
                self.send_response(server.status)
                for k, v in server.extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def echo_401() -> Iterator[EchoServer]:
    server = EchoServer(401)
    yield server
    server.close()


@pytest.fixture
def echo_500() -> Iterator[EchoServer]:
    server = EchoServer(500)
    yield server
    server.close()


@pytest.mark.parametrize("mode", ["bearer", "basic", "url", "header"])
def test_a_receiver_echoing_the_credentials_never_gets_them_into_an_outcome(
    echo_401: EchoServer, senders, secrets: dict[str, str], mode: str
) -> None:
    url = f"{echo_401.base}/api/v1/push"
    kwargs: dict[str, object] = {}
    if mode == "bearer":
        kwargs["bearer_token_file"] = secrets["token"]
    elif mode == "basic":
        kwargs["basic_auth"] = BasicAuth("edge-1", secrets["password"])
    elif mode == "url":
        url = url.replace("http://", f"http://edge-1:{URL_PASSWORD}@")
    else:
        kwargs["headers"] = {"Authorization": f"Bearer {HEADER_TOKEN}"}
    outcome = make_sender(senders, url, **kwargs).send(BODY)
    assert outcome.kind == "hold"
    assert "denied for /api/v1/push" in outcome.message
    assert "<redacted>" in outcome.message
    assert_no_secret(repr(outcome))


def assert_no_secret(text: str) -> None:
    for secret in (TOKEN, PASSWORD, URL_PASSWORD, HEADER_TOKEN):
        assert secret not in text
        assert base64.b64encode(f"edge-1:{secret}".encode()).decode() not in text


def test_a_secret_cut_by_the_body_cap_leaves_no_prefix(raw_server_factory, senders) -> None:
    # The token starts 8 bytes before the cap: its first 8 characters must not be shown.
    lead = b"e" * (MAX_ERROR_BODY - 8)
    body = lead + TOKEN.encode()
    head = f"HTTP/1.1 500 Oops\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    server = raw_server_factory(lambda c: c.sendall(head + body))
    s = make_sender(senders, server.url, headers={"Authorization": f"Bearer {TOKEN}"})
    outcome = s.send(BODY)
    assert outcome.kind == "retry"
    assert TOKEN[:8] not in outcome.message
    assert outcome.message.strip("e") == ""


# --- the CLI, start to end, with every credential kind: grep its output ------------------

MODES = ("url", "bearer", "basic")
COMMANDS = ("check-config", "dry-run", "once-401", "once-500")


@dataclass
class CliRun:
    returncode: int
    output: str
    received: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def _cli_config(tmp: Path, mode: str, url: str, secrets: dict[str, str]) -> str:
    remote = {
        "url": url,
        "tenant": "edge",
        "timeout": "2s",
        "min_backoff": "50ms",
        "max_backoff": "200ms",
        "headers": {"X-Api-Key": HEADER_TOKEN},
    }
    if mode == "url":
        remote["url"] = url.replace("http://", f"http://edge-1:{URL_PASSWORD}@")
    elif mode == "bearer":
        remote["bearer_token_file"] = secrets["token"]
    else:
        remote["basic_auth"] = {"username": "edge-1", "password_file": secrets["password"]}
    spool = tmp / "spool"
    doc = {
        "libvirt": {"uri": "test:///default"},
        "collect": {"interval": "15s", "timeout": "5s"},
        "remote_write": remote,
        "buffer": {"path": str(spool), "fsync": False},
        "log": {"level": "debug"},
        "shutdown_grace": "1s",
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], CliRun]]:
    """Every mode x command, run concurrently (each is a Python start plus a libvirt cycle)."""
    base = tmp_path_factory.mktemp("cli")
    secrets = {}
    for name, value in (("token", TOKEN), ("password", PASSWORD)):
        (base / name).write_text(value + "\n", encoding="utf-8")
        (base / name).chmod(0o600)
        secrets[name] = str(base / name)
    servers = {"once-401": EchoServer(401), "once-500": EchoServer(500, {"Retry-After": "0"})}
    jobs: dict[tuple[str, str], list[str]] = {}
    for mode in MODES:
        for command in COMMANDS:
            tmp = base / f"{mode}-{command}"
            tmp.mkdir(mode=0o700)
            server = servers.get(command, servers["once-401"])
            url = f"{server.base}/{mode}/api/v1/push"
            flag = "--once" if command.startswith("once") else f"--{command}"
            jobs[(mode, command)] = [flag, "-c", _cli_config(tmp, mode, url, secrets)]
    # A config error must not quote the URL's password either.
    bad = base / "bad.yaml"
    bad.write_text(f"remote_write: {{url: 'ftp://edge-1:{URL_PASSWORD}@m/push'}}\n", "utf-8")
    jobs[("url", "config-error")] = ["--check-config", "-c", str(bad)]

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pusher", "--log-level", "debug", *args],
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "NO_PROXY": "*"},
        )  # fmt: skip

    try:
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            futures = {key: pool.submit(run, args) for key, args in jobs.items()}
            results = {}
            for key, future in futures.items():
                done = future.result()
                server = servers.get(key[1])
                received = [r for r in server.received if r[0].startswith(f"/{key[0]}/")] if (
                    server) else []  # fmt: skip
                results[key] = CliRun(done.returncode, done.stdout + done.stderr, received)
        yield results
    finally:
        for server in servers.values():
            server.close()


def _cli_cases() -> list[object]:
    cases: list[object] = []
    for mode in MODES:
        for command in COMMANDS:
            cases.append(pytest.param(mode, command, id=f"{mode}-{command}"))
    cases.append(pytest.param("url", "config-error", id="url-config-error"))
    return cases


@pytest.mark.parametrize(("mode", "command"), _cli_cases())
def test_the_cli_never_prints_a_secret(
    cli_runs: dict[tuple[str, str], CliRun], mode: str, command: str
) -> None:
    run = cli_runs[(mode, command)]
    assert "Traceback" not in run.output, run.output
    expected_rc = {"check-config": 0, "dry-run": 0, "config-error": 2}.get(command, 1)
    assert run.returncode == expected_rc, run.output
    assert_no_secret(run.output)
    if command == "check-config":
        assert run.output.startswith("config OK")
    if command == "dry-run":
        assert "libvirt_up" in run.output
    if command.startswith("once"):
        # The credentials did travel (to the configured receiver), so the grep means something.
        assert run.received, run.output
        auth = run.received[0][1].get("Authorization", "")
        assert auth.startswith("Bearer " if mode == "bearer" else "Basic ")
        assert run.received[0][1]["X-Api-Key"] == HEADER_TOKEN
        assert "denied for" in run.output  # the echoed body was logged, scrubbed


# --- hostile receivers --------------------------------------------------------------------


class RawServer:
    """A TCP server on 127.0.0.1: reads each HTTP request, then lets `script` answer with
    whatever it likes (garbage, a trickle, nothing) on the raw socket."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.02)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/api/v1/push"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                while m and len(body) < int(m.group(1)):
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                self.script(conn)
            except OSError:
                pass  # the client hung up: what several tests expect it to do

    def close(self) -> None:
        self.stop.set()
        self._sock.close()
        self._thread.join(2)


@pytest.fixture
def raw_server_factory() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    made: list[RawServer] = []

    def make(script: Callable[[socket.socket], None]) -> RawServer:
        server = RawServer(script)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def _send(text: bytes) -> Callable[[socket.socket], None]:
    return lambda conn: conn.sendall(text)


def _trickle(head: bytes, stop_after: float = 30.0) -> Callable[[socket.socket], None]:
    def script(conn: socket.socket) -> None:
        conn.sendall(head)
        end = time.monotonic() + stop_after
        while time.monotonic() < end:
            conn.sendall(b"x")  # one byte a second, forever (until the client hangs up)
            time.sleep(1.0)

    return script


def _endless(head: bytes) -> Callable[[socket.socket], None]:
    def script(conn: socket.socket) -> None:
        conn.sendall(head)
        chunk = b"10000\r\n" + b"y" * 0x10000 + b"\r\n"
        for _ in range(100_000):  # 6 GiB, as fast as the client takes it
            conn.sendall(chunk)

    return script


_BOMB = gzip.compress(b"\0" * (16 * 1024 * 1024), 9)
_FORGED = b"line\r\n2026 ERROR forged\x1b[2J\x00\x07" + "\u202e".encode() + b" end!"
# (script, acceptable outcome kinds); every case must come back quickly and not "ok".
HOSTILE: dict[str, tuple[Callable[[socket.socket], None], tuple[str, ...]]] = {
    "garbage status line": (_send(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), ("retry",)),
    "binary garbage": (_send(bytes(range(256)) * 4), ("retry",)),
    "closes without answering": (_send(b""), ("retry",)),
    "status out of range": (_send(b"HTTP/1.1 9999 Big\r\n\r\n"), ("retry",)),
    "status not a number": (_send(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"), ("retry",)),
    "1xx instead of an answer": (_send(b"HTTP/1.1 101 Switching\r\n\r\n"), ("retry",)),
    "header line of 100 KiB": (
        _send(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100_000 + b"\r\n\r\n"), ("retry",)),
    "a thousand headers": (
        _send(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 1000 + b"\r\n"), ("retry",)),
    "bad content-length": (
        _send(b"HTTP/1.1 500 X\r\nContent-Length: -5\r\n\r\nabc"), ("retry",)),
    "truncated body": (
        _send(b"HTTP/1.1 500 X\r\nContent-Length: 1000\r\n\r\nonly this"), ("retry",)),
    "huge body": (
        _send(b"HTTP/1.1 400 X\r\nContent-Length: 50000000\r\n\r\n" + b"z" * 5_000_000),
        ("reject",)),
    "endless chunked body": (
        _endless(b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n"), ("retry",)),
    "body trickled 1 byte/s": (
        _trickle(b"HTTP/1.1 500 X\r\nContent-Length: 100000\r\n\r\n"), ("retry",)),
    "chunked body trickled": (
        _trickle(b"HTTP/1.1 429 X\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n"), ("retry",)),
    "401 body trickled": (
        _trickle(b"HTTP/1.1 401 X\r\nContent-Length: 100000\r\n\r\n"), ("hold",)),
    "gzip bomb": (
        _send(b"HTTP/1.1 500 X\r\nContent-Encoding: gzip\r\nContent-Length: "
              + str(len(_BOMB)).encode() + b"\r\n\r\n" + _BOMB), ("retry",)),
    "redirect with an endless body": (
        _endless(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/x\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n"), ("hold",)),
    "redirect with a trickled body": (
        _trickle(b"HTTP/1.1 307 X\r\nLocation: /elsewhere\r\nContent-Length: 9999\r\n\r\n"),
        ("hold",)),
    "control characters for the log": (
        _send(b"HTTP/1.1 500 X\r\nContent-Length: %d\r\n\r\n%s" % (len(_FORGED), _FORGED)),
        ("retry",)),
    "retry-after forever": (
        _send(b"HTTP/1.1 503 X\r\nRetry-After: 1e999\r\nContent-Length: 0\r\n\r\n"), ("retry",)),
    "retry-after a date in year 9999": (
        _send(b"HTTP/1.1 429 X\r\nRetry-After: Fri, 31 Dec 9999 23:59:59 GMT\r\n"
              b"Content-Length: 0\r\n\r\n"), ("retry",)),
    "mimir id as long as the body": (
        _send(b"HTTP/1.1 400 X\r\nContent-Length: 3010\r\n\r\nerr-mimir-" + b"a" * 3000),
        ("reject",)),
}  # fmt: skip


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_receiver_yields_a_bounded_non_ok_outcome(
    raw_server_factory, senders, case: str
) -> None:
    script, kinds = HOSTILE[case]
    server = raw_server_factory(script)
    s = make_sender(senders, server.url, timeout=1.0, headers={"Authorization": f"Bearer {TOKEN}"})
    start = time.monotonic()
    outcome = s.send(BODY)
    elapsed = time.monotonic() - start
    assert outcome.kind in kinds, outcome
    assert elapsed < 2.5, f"{case}: {elapsed:.1f}s"
    assert len(outcome.message.encode()) <= MAX_ERROR_BODY + 100
    assert not re.search(r"[\x00-\x1f\x7f\u202e]", outcome.message), outcome.message
    assert TOKEN not in outcome.message
    assert outcome.retry_after is None or 0 <= outcome.retry_after <= sender.MAX_RETRY_AFTER
    assert len(outcome.reason) <= 70


def test_the_error_body_has_a_total_deadline_even_with_a_long_timeout(
    raw_server_factory, senders, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender, "ERROR_BODY_SECONDS", 1.0)
    server = raw_server_factory(_trickle(b"HTTP/1.1 502 X\r\nContent-Length: 100000\r\n\r\n"))
    start = time.monotonic()
    outcome = make_sender(senders, server.url, timeout=30.0).send(BODY)
    assert (outcome.kind, outcome.code) == ("retry", "502")
    assert time.monotonic() - start < 2.5
    assert outcome.message.startswith("x")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_host_gets_neither_body_nor_credentials(
    http_server, other_http_server, senders, secrets: dict[str, str], status: int
) -> None:
    where = other_http_server.url.replace("http://", f"http://u:{URL_PASSWORD}@")
    where = where.replace("127.0.0.1", "localhost")  # another host name, another port
    http_server.answer(status, {"Location": where}, b"moved")
    s = make_sender(senders, http_server.url, bearer_token_file=secrets["token"])
    outcome = s.send(BODY)
    time.sleep(0.1)
    assert other_http_server.received == []
    assert (outcome.kind, outcome.code) == ("hold", str(status))
    assert URL_PASSWORD not in outcome.message and TOKEN not in outcome.message
    assert "localhost" in outcome.message  # where it wanted us to go, for the operator


def test_cookies_from_the_receiver_are_never_sent_back(http_server, senders) -> None:
    http_server.answer(204, {"Set-Cookie": "session=abc; Path=/"})
    s = make_sender(senders, http_server.url)
    s.send(BODY)
    s.send(BODY)
    assert "Cookie" not in http_server.received[1].headers


def test_error_bodies_are_asked_for_uncompressed(http_server, senders) -> None:
    make_sender(senders, http_server.url).send(BODY)
    assert http_server.received[0].headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize(
    ("case", "code"),
    [("garbage status line", "error"), ("endless chunked body", "503"),
     ("redirect with an endless body", "302")],
)  # fmt: skip
def test_hostile_answers_are_counted_and_the_data_is_kept(
    raw_server_factory, tmp_path: Path, case: str, code: str
) -> None:
    server = raw_server_factory(HOSTILE[case][0])
    cfg = parse(f"""
        libvirt: {{uri: 'test:///default'}}
        remote_write: {{url: '{server.url}', timeout: 1s}}
        shutdown_grace: 1s
    """)
    spool = Spool(str(tmp_path / "spool"), 2**20, fsync=False)
    collector = Collector(cfg.libvirt.uri, use_events=False)
    agent = Agent(cfg, Sender(cfg.remote_write), spool, collector)
    agent.run_cycle()
    pending = spool.stats()[0]
    delivered = agent.drain_once(time.monotonic() + 0.8)
    assert not delivered
    assert agent.delivery.stats.responses[code] >= 1
    assert spool.stats()[0] == pending  # nothing dropped
    assert not agent.delivery.stats.dropped or not any(agent.delivery.stats.dropped.values())
    agent.shutdown(0)


# --- least privilege ----------------------------------------------------------------------

# libvirt calls that change something: the agent must make none of them.
MUTATING = {
    "create", "createWithFlags", "createWithFiles", "createXML", "createXMLWithFiles",
    "createLinux", "destroy", "destroyFlags", "define", "defineXML", "defineXMLFlags",
    "undefine", "undefineFlags", "setMetadata", "attachDevice", "attachDeviceFlags",
    "detachDevice", "detachDeviceFlags", "detachDeviceAlias", "updateDeviceFlags",
    "setMemory", "setMemoryFlags", "setMaxMemory", "setMemoryStatsPeriod", "setVcpus",
    "setVcpusFlags", "setVcpu", "migrate", "migrate2", "migrate3", "migrateToURI",
    "migrateToURI2", "migrateToURI3", "managedSave", "managedSaveRemove", "saveFlags",
    "restoreFlags", "reboot", "suspend", "resume", "snapshotCreateXML", "blockCommit",
    "blockCopy", "blockPull", "blockRebase", "blockResize", "blockJobAbort", "setAutostart",
    "setSchedulerParameters", "setSchedulerParametersFlags", "setBlkioParameters",
    "setMemoryParameters", "setNumaParameters", "setInterfaceParameters", "setBlockIoTune",
    "setPerfEvents", "setUserPassword", "setTime", "sendKey", "sendProcessSignal",
    "injectNMI", "coreDump", "coreDumpWithFormat", "openConsole", "openChannel",
    "openGraphics", "openGraphicsFD", "fsFreeze", "fsThaw", "fsTrim", "pMSuspendForDuration",
    "pMWakeup", "abortJob", "shutdownFlags", "reset", "setLifecycleAction",
    "agentSetResponseTimeout", "setGuestVcpus", "setIOThreadParams", "addIOThread",
    "delIOThread", "pinVcpu", "pinVcpuFlags", "pinEmulator", "pinIOThread",
    "authorizedSSHKeysSet", "setLaunchSecurityState", "qemuMonitorCommand",
    "qemuAgentCommand", "networkCreateXML", "storagePoolCreateXML", "interfaceDefineXML",
    "nodeDeviceCreateXML", "secretDefineXML", "nwfilterDefineXML",
}  # fmt: skip


def _calls_in_package() -> list[tuple[str, int, str, str]]:
    """(file, line, receiver, method) of every method call in pusher/, generated code aside."""
    calls = []
    for path in sorted((REPO / "pusher").rglob("*.py")):
        if "pb" in path.relative_to(REPO / "pusher").parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = ast.unparse(node.func.value)
                calls.append((path.name, node.lineno, receiver, node.func.attr))
    return calls


def test_the_package_makes_no_mutating_libvirt_call() -> None:
    found = [c for c in _calls_in_package() if c[3] in MUTATING]
    assert found == [], f"mutating libvirt calls in pusher/: {found}"


def test_libvirt_is_only_ever_opened_read_only() -> None:
    opens = [c for c in _calls_in_package() if c[2] == "libvirt" and c[3].startswith("open")]
    assert opens, "the agent must open libvirt somewhere"
    assert {c[3] for c in opens} == {"openReadOnly"}, opens
    source = "\n".join(p.read_text() for p in (REPO / "pusher").glob("*.py"))
    assert not re.search(r"\bvirConnectOpen(Auth)?\b|libvirt\.open(Auth)?\(", source)


def test_the_collectors_connection_refuses_to_change_a_domain() -> None:
    # The daemon enforces what the source promises: a read-only connection cannot mutate.
    collector = Collector("test:///default", use_events=False)
    try:
        conn = collector._connect()
        dom = conn.lookupByName("test")
        with pytest.raises(libvirt.libvirtError, match=r"read.only"):
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "x", None, None, 0)
        with pytest.raises(libvirt.libvirtError, match=r"read.only"):
            dom.destroy()
        assert dom.isActive()
    finally:
        collector.close()


def test_tls_options_default_to_verifying_with_the_system_cas(senders) -> None:
    s = make_sender(senders, "https://mimir.example/api/v1/push")
    assert s.tls == TLSConfig()
    assert s._verify is True and s._cert is None


def test_an_outcome_has_no_room_for_secrets_by_construction() -> None:
    # What the loop logs of an outcome is code, reason and message; messages are scrubbed.
    assert set(Outcome.__dataclass_fields__) == {"kind", "code", "retry_after", "reason",
                                                 "message", "written", "limit"}  # fmt: skip
    for name in ("written", "limit"):  # numbers only
        assert Outcome.__dataclass_fields__[name].type in ("int | None", int | None)
