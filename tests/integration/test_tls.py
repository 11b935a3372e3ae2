"""TLS, client certificates, credentials and proxies, against real TLS servers on 127.0.0.1
with a CA made for the test by `openssl`. No network, no libvirt."""

from __future__ import annotations

import base64
import http.server
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pki import PKI, make_pki

from pusher.agent import Agent
from pusher.collect import Collector
from pusher.config import BasicAuth, RemoteWriteConfig, TLSConfig, from_mapping
from pusher.sender import Outcome, Sender
from pusher.spool import Spool

BODY = b"\x1f\x00snappy-compressed-bytes"
TOKEN = "tls-tok-6a1f2b3c4d5e6f708192"
PASSWORD = "tls-pw-a1b2c3d4e5f6"
PROXY_PASSWORD = "proxy-pw-99887766"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    client_cert: dict[str, object] | None


@dataclass
class TLSServer:
    """A real HTTPS server in a thread: `cert` is what it presents; with `client_ca` it
    demands a client certificate signed by that CA (mTLS)."""

    cert: str
    key: str
    client_ca: str | None = None
    status: int = 204
    location: str = ""  # sent with the status when set (a redirect)
    accept_token: str | None = None  # answer 401 unless "Bearer <this>" comes
    received: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    handshake_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.client_ca)
        ctx.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver does

            def setup(self) -> None:
                self.request.do_handshake()
                super().setup()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                peer = self.request.getpeercert() or None
                headers = dict(self.headers.items())
                server.received.append(Seen(self.path, headers, body, peer))
                status = server.status
                if server.accept_token is not None and (
                    headers.get("Authorization") != f"Bearer {server.accept_token}"
                ):
                    status = 401
                self.send_response(status)
                if server.location:
                    self.send_header("Location", server.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, object]:
                sock, addr = super().get_request()
                return ctx.wrap_socket(sock, server_side=True,
                                       do_handshake_on_connect=False), addr  # fmt: skip

            def handle_error(self, request: object, client_address: object) -> None:
                import sys

                server.handshake_errors.append(repr(sys.exc_info()[1]))

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}/api/v1/push"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class ConnectProxy:
    """An HTTP proxy for HTTPS: answers CONNECT, then copies bytes both ways, recording the
    CONNECT requests and every byte the client sent into the tunnel."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.connects: list[str] = []
        self.tunnelled = bytearray()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            text = head.decode("latin-1")
            self.connects.append(text)
            method, target, _ = text.split(" ", 2)
            if self.password is not None:
                expected = base64.b64encode(f"proxyuser:{self.password}".encode()).decode()
                if f"Proxy-Authorization: Basic {expected}" not in text:
                    client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                   b"Content-Length: 0\r\n\r\n")  # fmt: skip
                    return
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Only CONNECT\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=5) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._pump(client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(peers), [], [], 0.1)
            for s in ready:
                try:
                    data = s.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if s is client:
                    self.tunnelled += data
                peers[s].sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


@pytest.fixture
def servers() -> Iterator[list[object]]:
    made: list[object] = []
    yield made
    for s in made:
        s.close()  # type: ignore[attr-defined]


def tls_server(servers: list[object], pki: PKI, which: str = "server", **kw: object) -> TLSServer:
    server = TLSServer(getattr(pki, f"{which}_pem"), getattr(pki, f"{which}_key"), **kw)  # type: ignore[arg-type]
    servers.append(server)
    return server


def sender(servers: list[object], url: str, **kw: object) -> Sender:
    s = Sender(RemoteWriteConfig(url=url, timeout=5.0, **kw))  # type: ignore[arg-type]
    servers.append(s)
    return s


def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    no_proxy_env(monkeypatch)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


# --- server certificates ------------------------------------------------------------------


def test_a_server_signed_by_the_configured_ca_is_delivered_to(servers, pki: PKI) -> None:
    server = tls_server(servers, pki)
    outcome = sender(servers, server.url("localhost"), tls=TLSConfig(ca_file=pki.ca_pem)).send(BODY)
    assert outcome == Outcome("ok", "204")
    assert server.received[0].body == BODY
    assert server.server_names == ["localhost"]  # SNI is the URL's host by default


@pytest.mark.parametrize("ca", ["other", "system"])
def test_a_server_with_an_unknown_ca_is_refused_and_retried(servers, pki: PKI, ca: str) -> None:
    server = tls_server(servers, pki, "rogue" if ca == "other" else "server")
    tls = TLSConfig(ca_file=pki.ca_pem) if ca == "other" else TLSConfig()  # system CAs: not ours
    outcome = sender(servers, server.url(), tls=tls).send(BODY)
    assert (outcome.kind, outcome.code) == ("retry", "error")
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.message or "certificate" in outcome.message
    assert server.received == []


def test_a_certificate_for_another_name_is_refused(servers, pki: PKI) -> None:
    server = tls_server(servers, pki, "named")  # for mimir.test only
    outcome = sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem)).send(BODY)
    assert (outcome.kind, outcome.code) == ("retry", "error")
    assert server.received == []


def test_server_name_sets_sni_and_the_name_the_certificate_must_carry(servers, pki: PKI) -> None:
    server = tls_server(servers, pki, "named")
    tls = TLSConfig(ca_file=pki.ca_pem, server_name="mimir.test")
    outcome = sender(servers, server.url(), tls=tls).send(BODY)
    assert outcome.kind == "ok", outcome
    assert server.server_names == ["mimir.test"]
    # ...and it is still checked: a name the certificate lacks is refused.
    wrong = TLSConfig(ca_file=pki.ca_pem, server_name="other.test")
    assert sender(servers, server.url(), tls=wrong).send(BODY).kind == "retry"
    assert len(server.received) == 1


def test_insecure_skip_verify_accepts_any_certificate_and_says_so(
    servers, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    server = tls_server(servers, pki, "rogue")
    with caplog.at_level("WARNING", logger="pusher.sender"):
        s = sender(servers, server.url(), tls=TLSConfig(insecure_skip_verify=True))
    assert "insecure_skip_verify" in caplog.text
    assert s.send(BODY).kind == "ok"


def test_plain_http_to_a_tls_port_is_retried(servers, pki: PKI) -> None:
    server = tls_server(servers, pki)
    outcome = sender(servers, server.url().replace("https://", "http://")).send(BODY)
    assert outcome.kind == "retry"


def test_tls_to_a_plain_http_port_is_retried(servers, pki: PKI) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}/api/v1/push"
        outcome = sender(servers, url, tls=TLSConfig(ca_file=pki.ca_pem)).send(BODY)
        assert (outcome.kind, outcome.code) == ("retry", "error")
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- client certificates (mTLS) -----------------------------------------------------------


def test_mtls_with_the_client_certificate_is_delivered(servers, pki: PKI) -> None:
    server = tls_server(servers, pki, client_ca=pki.ca_pem)
    tls = TLSConfig(ca_file=pki.ca_pem, cert_file=pki.client_pem, key_file=pki.client_key)
    assert sender(servers, server.url(), tls=tls).send(BODY).kind == "ok"
    peer = server.received[0].client_cert
    assert peer is not None and peer["subject"] == ((("commonName", "client"),),)


@pytest.mark.parametrize("client", ["none", "rogue"])
def test_mtls_without_an_accepted_client_certificate_is_refused(
    servers, pki: PKI, client: str
) -> None:
    server = tls_server(servers, pki, client_ca=pki.ca_pem)
    tls = TLSConfig(ca_file=pki.ca_pem)
    if client == "rogue":
        tls = TLSConfig(ca_file=pki.ca_pem, cert_file=pki.rogue_pem, key_file=pki.rogue_key)
    outcome = sender(servers, server.url(), tls=tls).send(BODY)
    assert (outcome.kind, outcome.code) == ("retry", "error")
    assert server.received == []
    time.sleep(0.1)
    assert any("certificate" in e.lower() for e in server.handshake_errors)


def test_data_refused_by_tls_stays_in_the_spool_and_is_counted(
    servers, pki: PKI, tmp_path: Path
) -> None:
    server = tls_server(servers, pki, "rogue")
    cfg = from_mapping(
        {"libvirt": {"uri": "test:///default"},
         "remote_write": {"url": server.url(), "timeout": "1s", "tls": {"ca_file": pki.ca_pem}},
         "shutdown_grace": "1s"}, {}, "node-1",
    )  # fmt: skip
    spool = Spool(str(tmp_path / "spool"), 2**20, fsync=False)
    collector = Collector(cfg.libvirt.uri, use_events=False)
    agent = Agent(cfg, Sender(cfg.remote_write), spool, collector)
    agent.run_cycle()
    pending = spool.stats()[0]
    assert not agent.drain_once(time.monotonic() + 0.5)
    assert agent.delivery.stats.responses["error"] >= 1
    assert spool.stats()[0] == pending >= 1  # 1.0: one request; 2.0: domains', agent's
    agent.shutdown(0)


# --- credentials --------------------------------------------------------------------------


@pytest.fixture
def credential_files(tmp_path: Path) -> dict[str, Path]:
    files = {"token": tmp_path / "token", "password": tmp_path / "password"}
    files["token"].write_text(TOKEN + "\n", encoding="utf-8")
    files["password"].write_text(PASSWORD + "\n", encoding="utf-8")
    for path in files.values():
        path.chmod(0o600)
    return files


def test_bearer_token_goes_to_the_configured_server_over_tls(
    servers, pki: PKI, credential_files: dict[str, Path]
) -> None:
    server = tls_server(servers, pki)
    s = sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem),
               bearer_token_file=str(credential_files["token"]))  # fmt: skip
    assert s.send(BODY).kind == "ok"
    assert server.received[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_basic_auth_goes_to_the_configured_server_over_tls(
    servers, pki: PKI, credential_files: dict[str, Path]
) -> None:
    server = tls_server(servers, pki)
    s = sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem),
               basic_auth=BasicAuth("edge-1", str(credential_files["password"])))  # fmt: skip
    assert s.send(BODY).kind == "ok"
    pair = base64.b64encode(f"edge-1:{PASSWORD}".encode()).decode()
    assert server.received[0].headers["Authorization"] == f"Basic {pair}"


def test_credentials_never_reach_a_server_that_fails_verification(
    servers, pki: PKI, credential_files: dict[str, Path]
) -> None:
    impostor = tls_server(servers, pki, "rogue")
    s = sender(servers, impostor.url(), tls=TLSConfig(ca_file=pki.ca_pem),
               bearer_token_file=str(credential_files["token"]))  # fmt: skip
    outcome = s.send(BODY)
    assert outcome.kind == "retry"
    assert impostor.received == []  # the handshake failed before any header left
    assert TOKEN not in outcome.message


def test_credentials_never_follow_a_redirect_to_another_tls_server(
    servers, pki: PKI, credential_files: dict[str, Path]
) -> None:
    target = tls_server(servers, pki)
    redirector = tls_server(servers, pki, status=308, location=target.url("localhost"))
    s = sender(servers, redirector.url(), tls=TLSConfig(ca_file=pki.ca_pem),
               bearer_token_file=str(credential_files["token"]))  # fmt: skip
    outcome = s.send(BODY)
    assert (outcome.kind, outcome.code) == ("hold", "308")
    assert len(redirector.received) == 1
    assert target.received == []


def test_a_rotated_token_makes_the_next_probe_succeed(
    servers, pki: PKI, credential_files: dict[str, Path]
) -> None:
    rotated = "tls-tok-rotated-000000000001"
    server = tls_server(servers, pki, accept_token=rotated)
    s = sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem),
               bearer_token_file=str(credential_files["token"]))  # fmt: skip
    assert s.send(BODY).kind == "hold"  # 401: the loop holds and probes again later
    tmp = credential_files["token"].with_suffix(".new")
    tmp.write_text(rotated + "\n", encoding="utf-8")
    os.replace(tmp, credential_files["token"])
    assert s.send(BODY, attempt=1).kind == "ok"
    assert [r.headers["Authorization"] for r in server.received] == [
        f"Bearer {TOKEN}",
        f"Bearer {rotated}",
    ]


# --- proxies ------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    p = ConnectProxy()
    yield p
    p.close()


def test_proxy_url_tunnels_tls_and_sees_no_credentials(
    servers, pki: PKI, proxy: ConnectProxy, credential_files: dict[str, Path]
) -> None:
    server = tls_server(servers, pki)
    s = sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem),
               bearer_token_file=str(credential_files["token"]),
               proxy_url=proxy.url())  # fmt: skip
    assert s.send(BODY).kind == "ok"
    assert proxy.connects and proxy.connects[0].startswith(f"CONNECT 127.0.0.1:{server.port} ")
    assert TOKEN.encode() not in proxy.tunnelled and b"Authorization" not in proxy.tunnelled
    assert "Authorization" not in proxy.connects[0]
    assert server.received[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_server_name_holds_through_a_proxy_tunnel(servers, pki: PKI, proxy: ConnectProxy) -> None:
    server = tls_server(servers, pki, "named")
    tls = TLSConfig(ca_file=pki.ca_pem, server_name="mimir.test")
    assert sender(servers, server.url(), tls=tls, proxy_url=proxy.url()).send(BODY).kind == "ok"
    assert server.server_names == ["mimir.test"]
    assert proxy.connects


def test_https_proxy_from_the_environment_is_used(
    servers, pki: PKI, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = tls_server(servers, pki)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url())
    monkeypatch.setenv("https_proxy", proxy.url())
    assert sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem)).send(BODY).kind == (
        "ok"
    )
    assert len(proxy.connects) == 1


def test_no_proxy_from_the_environment_bypasses_it(
    servers, pki: PKI, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = tls_server(servers, pki)
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy.url())
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")
    assert sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem)).send(BODY).kind == (
        "ok"
    )
    assert proxy.connects == []


def test_proxy_url_overrides_the_environment(
    servers, pki: PKI, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = tls_server(servers, pki)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, dead_url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")  # proxy_url is used even so: it was asked for
    s = sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem), proxy_url=proxy.url())
    assert s.send(BODY).kind == "ok"
    assert len(proxy.connects) == 1


def test_proxy_credentials_are_sent_to_the_proxy_and_never_printed(
    servers, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = tls_server(servers, pki)
    guarded = ConnectProxy(password=PROXY_PASSWORD)
    servers.append(guarded)
    good = sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem),
                  proxy_url=guarded.url(f"proxyuser:{PROXY_PASSWORD}@"))  # fmt: skip
    assert good.send(BODY).kind == "ok"
    assert "Proxy-Authorization: Basic" in guarded.connects[0]
    assert PROXY_PASSWORD.encode() not in guarded.tunnelled  # only to the proxy, not beyond
    bad = sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem),
                 proxy_url=guarded.url("proxyuser:wrong-password-1234@"))  # fmt: skip
    outcome = bad.send(BODY)
    assert (outcome.kind, outcome.code) == ("retry", "error")
    assert "407" in outcome.message
    assert "wrong-password-1234" not in outcome.message


def test_ca_file_wins_over_a_ca_bundle_from_the_environment(
    servers, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests lets REQUESTS_CA_BUNDLE override a session's CA; the sender passes it per request.
    server = tls_server(servers, pki)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, pki.other_ca_pem)
    assert sender(servers, server.url(), tls=TLSConfig(ca_file=pki.ca_pem)).send(BODY).kind == (
        "ok"
    )


def test_one_tls_handshake_serves_many_requests(servers, pki: PKI) -> None:
    server = tls_server(servers, pki, client_ca=pki.ca_pem)
    tls = TLSConfig(ca_file=pki.ca_pem, cert_file=pki.client_pem, key_file=pki.client_key)
    s = sender(servers, server.url("localhost"), tls=tls)
    for status in (204, 204, 500, 429, 400, 204):
        server.status = status
        s.send(BODY)
    assert len(server.received) == 6
    assert server.server_names == ["localhost"]  # one handshake: the connection was kept


def test_a_ca_bundle_from_the_environment_applies_without_ca_file(
    servers, pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compose/worker.yml passes a private CA this way.
    server = tls_server(servers, pki)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_pem)
    assert sender(servers, server.url()).send(BODY).kind == "ok"
