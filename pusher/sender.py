"""The HTTP edge: one remote-write POST of one compressed body.

The sender sees bytes, never samples. Its `Outcome` carries the decision the remote-write
specification and Mimir's behaviour call for; the loop acts on it:

    ok          2xx: delivered
    retry       network error, timeout, 5xx, 429: send the same body again after a backoff
                (`retry_after` when the receiver said how long, capped at 10 minutes)
    hold        401, 403, 3xx: the credentials or the URL are wrong; keep everything and
                probe slowly
    too_large   413: split the request and send the halves
    reject      any other 4xx (400 above all): the receiver kept what was valid; never resend,
                count the samples under `reason` (Mimir's `err-mimir-…` id when it gave one)
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import requests

from pusher import __version__

__all__ = ["Outcome", "Sender", "mimir_reason", "parse_retry_after"]

USER_AGENT = f"libvirt-pusher/{__version__}"
# An error body is read up to this size: enough for Mimir's message, bounded against a
# receiver that answers with megabytes or never stops.
MAX_ERROR_BODY = 4096
# A receiver's Retry-After is honoured up to this; beyond it is a misconfiguration.
MAX_RETRY_AFTER = 600.0
_MIMIR_ID = re.compile(r"err-mimir-([a-z0-9-]+)")

Kind = Literal["ok", "retry", "hold", "too_large", "reject"]


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    code: str  # HTTP status, or "error" when no answer came
    retry_after: float | None = None
    reason: str = ""
    message: str = ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            return None
        return min(max(0.0, seconds), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, delay), MAX_RETRY_AFTER)


def mimir_reason(body: str, code: int) -> str:
    """The Mimir error id in a body (`sample-out-of-order`), else `http_<code>`."""
    m = _MIMIR_ID.search(body)
    return m.group(1) if m else f"http_{code}"


class Sender:
    def __init__(
        self,
        url: str,
        tenant: str = "",
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.session = session or requests.Session()
        base = dict(headers or {})
        base.update({
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": USER_AGENT,
        })  # fmt: skip
        if tenant:
            base["X-Scope-OrgID"] = tenant
        self.headers = base

    def send(self, body: bytes, attempt: int = 0) -> Outcome:
        headers = self.headers
        if attempt > 0:
            headers = {**headers, "Retry-Attempt": str(attempt)}
        try:
            resp = self.session.post(
                self.url, data=body, headers=headers, timeout=self.timeout,
                # Never follow a redirect: it could carry the body (and credentials) elsewhere.
                stream=True, allow_redirects=False,
            )  # fmt: skip
        except requests.RequestException as e:
            return Outcome("retry", "error", message=_short(e))
        try:
            return self._classify(resp)
        finally:
            resp.close()

    def _classify(self, resp: requests.Response) -> Outcome:
        code = resp.status_code
        if 200 <= code < 300:
            return Outcome("ok", str(code))
        text = _read_capped(resp)
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        if code >= 500 or code == 429:
            return Outcome("retry", str(code), retry_after, message=text)
        if code in (401, 403):
            return Outcome("hold", str(code), retry_after, message=text)
        if code == 413:
            return Outcome("too_large", str(code), message=text)
        if 300 <= code < 400:
            # A redirect means a wrong URL: keep everything, as for refused credentials.
            where = resp.headers.get("Location", "")
            return Outcome("hold", str(code), message=f"redirect to {where!r} refused")
        return Outcome("reject", str(code), reason=mimir_reason(text, code), message=text)

    def close(self) -> None:
        self.session.close()


def _read_capped(resp: requests.Response) -> str:
    try:
        raw = resp.raw.read(MAX_ERROR_BODY, decode_content=True)
    except Exception:  # a body that breaks off is still an answer; its code decides
        raw = b""
    return bytes(raw or b"").decode("utf-8", "replace").strip()


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 300 else text[:300] + "…"
