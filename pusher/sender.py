"""The HTTP edge: one remote-write POST of one compressed body.

The sender sees bytes, never samples. Its `Outcome` carries the decision the remote-write
specification and Mimir's behaviour call for; delivery acts on it:

    ok          2xx: delivered
    retry       network error, TLS failure, timeout, 5xx, 429, or an answer that makes no
                sense (1xx, garbage): send the same body again after a backoff
                (`retry_after` when the receiver said how long, capped at 10 minutes)
    hold        401, 403, 3xx: the credentials or the URL are wrong; keep everything and
                probe slowly
    too_large   413, or Mimir's 400 `distributor-max-write-message-size`: split the request
                and send the halves
    reject      any other 4xx (400 above all): the receiver kept what was valid; never resend,
                count the request under `reason` (Mimir's own error id when it gave one,
                `pusher.mimir`), with the tenant limit it names in `limit`
    unsupported a Remote-Write 2.0 request answered 415, or 2xx without the
                `X-Prometheus-Remote-Write-Samples-Written` header (a 1.x receiver that
                decoded nothing): send it again as 1.0

The receiver is trusted with the data, not with the agent: a redirect is never followed (nor
its body read), an error body is read up to `MAX_ERROR_BODY` bytes within
`ERROR_BODY_SECONDS`, cookies are refused, and every message an `Outcome` carries is
scrubbed of credentials and control characters before anyone logs it. Credentials come
from files that are re-read when they change, so a rotated token is used from the next
request on.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import http.cookiejar
import logging
import math
import time
import warnings
from collections.abc import Generator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
import requests.adapters
import requests.auth
import urllib3

from pusher import __version__, mimir
from pusher.config import RemoteWriteConfig, TLSConfig
from pusher.secrets import FileSecret, Redactor

__all__ = ["Outcome", "Sender", "parse_retry_after"]

log = logging.getLogger(__name__)

USER_AGENT = f"libvirt-pusher/{__version__}"
# An error body is read up to this size: enough for Mimir's message, bounded against a
# receiver that answers with megabytes...
MAX_ERROR_BODY = 4096
# ...and within this long (or the request timeout, if shorter), against one that trickles.
ERROR_BODY_SECONDS = 5.0
# A receiver's Retry-After is honoured up to this; beyond it is a misconfiguration.
MAX_RETRY_AFTER = 600.0
# Exception text kept in an Outcome's message.
MAX_ERROR_TEXT = 300
# Mimir's ids are short; a longer one is not Mimir's and would make a long label value.

Kind = Literal["ok", "retry", "hold", "too_large", "reject", "unsupported"]
# Remote-Write 2.0: the request headers that differ from 1.0, and the receiver's answer.
V2_HEADERS = {
    "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    "X-Prometheus-Remote-Write-Version": "2.0.0",
}
SAMPLES_WRITTEN = "X-Prometheus-Remote-Write-Samples-Written"

# What a request can raise besides an answer: all of it means "no usable answer, try again".
_SEND_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,
)


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    code: str  # HTTP status, or "error" when no answer came
    retry_after: float | None = None
    reason: str = ""
    message: str = ""
    written: int | None = None  # samples a 2.0 receiver says it wrote (on a 2xx only)
    limit: int | None = None  # the tenant's limit a rejection named (`mimir.LIMIT_KEYS`)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds (a number or an HTTP date); None when absent, unreadable, or
    not a positive delay: `0` or a date in the past asks for no wait at all, and the backoff
    must apply then, or a receiver (or a proxy) answering 503 with `Retry-After: 0` gets a
    busy loop of retries (Prometheus ignores such values the same way)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds <= 0:
            return None
        return min(seconds, MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
        delay = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError, AttributeError):
        return None
    if not math.isfinite(delay) or delay <= 0:
        return None
    return min(delay, MAX_RETRY_AFTER)


def _limit(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + "…"


class _Credentials(requests.auth.AuthBase):
    """Sets `Authorization` on every request from the configured credential, if any.

    Always installed as the session's auth, so requests never falls back to ~/.netrc."""

    def __init__(
        self,
        redact: Redactor,
        username: str = "",
        password: FileSecret | bytes | None = None,
        token: FileSecret | None = None,
    ) -> None:
        self._redact = redact
        self._username = username.encode("utf-8")
        self._password = password
        self._token = token

    def invalidate(self) -> None:
        for secret in (self._password, self._token):
            if isinstance(secret, FileSecret):
                secret.invalidate()

    def header(self) -> str | None:
        if self._token is not None:
            token = self._token.get()
            return f"Bearer {token.decode('ascii')}" if token else None
        if self._password is not None:
            password = self._password
            if isinstance(password, FileSecret):
                password = password.get()
                if not password:
                    return None  # unreadable since the start: send none, the 401 says why
            elif not (password or self._username):
                return None
            pair = base64.b64encode(self._username + b":" + password).decode("ascii")
            self._redact.add(pair)
            return f"Basic {pair}"
        return None

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        value = self.header()
        if value is not None:
            r.headers["Authorization"] = value
        return r


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """Sends `server_name` as TLS SNI and checks the certificate against it instead of the
    URL's host, on direct connections and through a proxy's CONNECT tunnel alike."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name  # before super(): it builds the pool manager
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["server_hostname"] = self._server_name
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["server_hostname"] = self._server_name
        return super().proxy_manager_for(proxy, **proxy_kwargs)


class _Session(requests.Session):
    """A session that never follows a redirect, and never reads a redirect's body.

    (With `allow_redirects=False`, requests still reads the whole body of a 3xx answer to
    prepare the next hop: unbounded, from a receiver we do not want to hear.)"""

    def resolve_redirects(
        self, *args: Any, **kwargs: Any
    ) -> Generator[requests.Response, None, None]:
        yield from ()


class Sender:
    """Posts remote-write bodies as the `remote_write` section says: URL, tenant, timeout,
    headers, TLS, proxy and credentials."""

    def __init__(self, cfg: RemoteWriteConfig, *, session: requests.Session | None = None) -> None:
        """A `user:password@` in the URL is used as basic auth when no other credential is
        given, and never printed. `session` replaces the one the sender would make."""
        self.redact = Redactor()
        self.url, url_user, url_password = self._split_userinfo(cfg.url)
        self.timeout = cfg.timeout
        self.tls = cfg.tls
        self.session = session or _Session()
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._verify, self._cert = self._setup_tls(cfg.tls)
        self._proxies = self._setup_proxies(cfg.proxy_url)
        self._send_proxies, self._send_verify = self._settle_environment()
        self.headers = self._headers(cfg.headers, cfg.tenant)
        self._auth = self._credentials(cfg, url_user, url_password)
        self.session.auth = self._auth
        if self._auth.header() is not None and urlsplit(self.url).scheme == "http":
            log.warning("remote_write credentials go over plain http://: anyone on the path "
                        "can read them; use https://")  # fmt: skip

    def _setup_tls(self, tls: TLSConfig) -> tuple[bool | str, tuple[str, str] | None]:
        """requests' `verify` and `cert` for `tls`; a `server_name` is mounted on the session."""
        if tls.server_name:
            self.session.mount("https://", _ServerNameAdapter(tls.server_name))
        verify: bool | str = True
        if tls.insecure_skip_verify:
            verify = False
            # The warning is logged once below; urllib3's would repeat on every request.
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
            log.warning(
                "remote_write.tls.insecure_skip_verify is on: the receiver's certificate is "
                "not checked, so anyone on the path can read and alter what is sent, "
                "credentials included"
            )
        elif tls.ca_file:
            verify = tls.ca_file
        return verify, (tls.cert_file, tls.key_file) if tls.cert_file else None

    def _setup_proxies(self, proxy_url: str) -> dict[str, str] | None:
        """requests' `proxies` for `proxy_url`; every proxy's `user:password@` (this one's and
        the environment's) joins the secrets."""
        try:
            env_proxies = list(requests.utils.get_environ_proxies(self.url).values())
        except ValueError:  # a URL config validation would have refused
            env_proxies = []
        for proxy in [proxy_url, *env_proxies]:
            self._add_url_secrets(proxy)  # user:password@ of a proxy is never printed either
        return {"http": proxy_url, "https": proxy_url} if proxy_url else None

    def _settle_environment(self) -> tuple[MutableMapping[str, str] | None, bool | str | None]:
        """What requests would take from the environment on every POST (`*_proxy`,
        `no_proxy`, `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` when no CA is configured), taken
        once, by requests' own rules: the agent's environment does not change while it runs,
        and reading it cost a drain more CPU per request than sending the request did."""
        try:
            env = self.session.merge_environment_settings(
                self.url, dict(self._proxies or {}), None, self._verify, self._cert
            )
        except ValueError:  # a URL config validation would have refused: leave it to requests
            return self._proxies, self._verify
        self.session.trust_env = False
        return env["proxies"], env["verify"]

    def _headers(self, headers: Mapping[str, str], tenant: str) -> dict[str, str]:
        """The configured headers under the ones remote-write requires; the values of those
        that look like credentials join the secrets."""
        base = dict(headers)
        for name, value in base.items():
            if name.lower() in ("authorization", "cookie", "proxy-authorization") or any(
                w in name.lower() for w in ("token", "key", "secret", "password", "auth")
            ):
                self.redact.add(value)
                self.redact.add(value.partition(" ")[2])  # the credential after "Bearer "
        base.update({
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": USER_AGENT,
            # Error bodies are read raw and capped: no compression bombs.
            "Accept-Encoding": "identity",
        })  # fmt: skip
        if tenant:
            base["X-Scope-OrgID"] = tenant
        return base

    def _credentials(
        self, cfg: RemoteWriteConfig, url_user: str, url_password: str | None
    ) -> _Credentials:
        """The one credential configured: a token file, basic auth, the URL's userinfo, or
        none."""
        if cfg.bearer_token_file:
            token = FileSecret(cfg.bearer_token_file, "remote_write.bearer_token_file",
                               self.redact, token=True)  # fmt: skip
            return _Credentials(self.redact, token=token)
        if cfg.basic_auth.username:
            password = FileSecret(cfg.basic_auth.password_file,
                                  "remote_write.basic_auth.password_file", self.redact)  # fmt: skip
            return _Credentials(self.redact, cfg.basic_auth.username, password)
        if url_password is not None:
            return _Credentials(self.redact, url_user, url_password.encode("utf-8"))
        return _Credentials(self.redact)

    def _split_userinfo(self, url: str) -> tuple[str, str, str | None]:
        """(url without userinfo, user, password or None); the password joins the secrets."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return url, "", None
        if "@" not in parts.netloc:
            return url, "", None
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        self._add_url_secrets(url)
        bare = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
        return bare, unquote(user), unquote(password) if colon else ""

    def _add_url_secrets(self, url: str) -> None:
        try:
            parts = urlsplit(url)
        except ValueError:
            return
        if "@" in parts.netloc:
            userinfo = parts.netloc.rpartition("@")[0]
            user, _, password = userinfo.partition(":")
            pair = f"{unquote(user)}:{unquote(password)}".encode()
            for secret in (userinfo, password, unquote(password), base64.b64encode(pair)):
                self.redact.add(secret)

    def send(self, body: bytes, attempt: int = 0, proto: int = 1) -> Outcome:
        headers = self.headers
        if proto == 2:
            headers = {**headers, **V2_HEADERS}
        if attempt > 0:
            headers = {**headers, "Retry-Attempt": str(attempt)}
        try:
            resp = self.session.post(
                self.url, data=body, headers=headers, timeout=self.timeout,
                # Never follow a redirect: it could carry the body (and credentials) elsewhere.
                stream=True, allow_redirects=False,
                verify=self._send_verify, cert=self._cert, proxies=self._send_proxies,
            )  # fmt: skip
        except _SEND_ERRORS as e:
            return Outcome("retry", "error", message=self.redact(_limit(str(e)), cut=True))
        try:
            outcome = self._classify(resp, proto)
        finally:
            resp.close()
        if outcome.kind == "hold":
            self._auth.invalidate()  # the next probe reads the credential files again
        return outcome

    def _classify(self, resp: requests.Response, proto: int = 1) -> Outcome:
        code = resp.status_code
        if 200 <= code < 300:
            self._read_body(resp)  # empty as a rule; read, the connection is kept for the next
            if proto == 2:
                written = resp.headers.get(SAMPLES_WRITTEN)
                if written is None:
                    # A 1.x receiver decodes a 2.0 body as an empty 1.0 request and says 2xx.
                    return Outcome(
                        "unsupported", str(code), message=f"2xx without {SAMPLES_WRITTEN}"
                    )
                try:
                    return Outcome("ok", str(code), written=int(written))
                except ValueError:
                    return Outcome("ok", str(code))
            return Outcome("ok", str(code))
        if code == 415 and proto == 2:
            return Outcome("unsupported", str(code), message=self._read_body(resp))
        if 300 <= code < 400:
            # A redirect means a wrong URL: keep everything, as for refused credentials.
            where = self.redact(_limit(resp.headers.get("Location", "")), cut=True)
            return Outcome("hold", str(code), message=f"redirect to {where!r} refused")
        text, complete = self._read_text(resp)
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        if code >= 500 or code == 429:
            return Outcome("retry", str(code), retry_after, message=text)
        if code in (401, 403):
            return Outcome("hold", str(code), retry_after, message=text)
        if code == 413:
            return Outcome("too_large", str(code), message=text)
        if 400 <= code < 500:
            why = mimir.reason(text, code, complete)
            if why == mimir.TOO_LARGE:  # Mimir's answer to a body over its max_recv_msg_size
                return Outcome("too_large", str(code), reason=why, message=text)
            limit = mimir.learned_limit(text, why)
            return Outcome("reject", str(code), reason=why, message=text, limit=limit)
        # 1xx, or a number no receiver should answer: not a verdict on the data.
        return Outcome("retry", str(code), retry_after, message=f"unexpected status: {text}")

    def _read_body(self, resp: requests.Response) -> str:
        return self._read_text(resp)[0]

    def _read_text(self, resp: requests.Response) -> tuple[str, bool]:
        """Up to MAX_ERROR_BODY bytes of the body, within ERROR_BODY_SECONDS however slowly
        the receiver sends; undecoded (the request asked for no compression); and whether it
        was read to its end. A body read to its end leaves the connection open for the next
        request; any other is closed."""
        complete = False
        deadline = time.monotonic() + min(self.timeout, ERROR_BODY_SECONDS)
        conn = getattr(resp.raw, "connection", None) or getattr(resp.raw, "_connection", None)
        sock = getattr(conn, "sock", None)
        read1 = getattr(resp.raw, "read1", None)  # urllib3 2: what has arrived, up to n
        raw = bytearray()
        try:
            while len(raw) < MAX_ERROR_BODY:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if sock is not None:
                    sock.settimeout(left)  # bounds a read that gets nothing at all
                want = MAX_ERROR_BODY - len(raw)
                if read1 is not None:
                    chunk = read1(want, decode_content=False)
                else:
                    chunk = resp.raw.read(min(want, 64), decode_content=False)
                if not chunk:
                    complete = True
                    break
                raw += chunk
        except Exception:  # a body that breaks off is still an answer; its code decides
            pass
        finally:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(self.timeout)
        text = bytes(raw[:MAX_ERROR_BODY]).decode("utf-8", "replace")
        return self.redact(text, cut=len(raw) >= MAX_ERROR_BODY), complete

    def close(self) -> None:
        self.session.close()
