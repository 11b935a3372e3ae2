"""Secrets: reading credential files, checking tokens, and keeping secrets out of print.

Credentials live in files (`remote_write.bearer_token_file`, `basic_auth.password_file`):
`read_secret` reads one and says why it cannot be used, never what it holds; `FileSecret`
re-reads it when it changes, so a rotated token is used without a restart. What the agent
prints of a URL goes through `redact_url`, and every message from a remote party through a
`Redactor`, which removes the secrets it was told, URL userinfo and control characters.

Used by the config (to check the files at start) and the sender (to use them); it imports
neither.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MAX_SECRET_BYTES",
    "REDACTED",
    "FileSecret",
    "Redactor",
    "read_secret",
    "redact_url",
    "valid_token",
]

log = logging.getLogger(__name__)

REDACTED = "<redacted>"
# Credential files are small; anything larger is the wrong file.
MAX_SECRET_BYTES = 64 * 1024
# `scheme://anything@`: userinfo in any URL a message quotes.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@'\"]*@")
# C0 and C1 controls, line and paragraph separators, bidi overrides: nothing a log line
# should carry from a remote party.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")
# Secrets shorter than this are not scrubbed from messages (they would garble every word).
_MIN_SECRET = 4


def redact_url(url: str) -> str:
    """`url` fit to print: its userinfo (`user:password@`) and query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{p.partition('=')[0]}={REDACTED}" if "=" in p else p for p in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def read_secret(path: str) -> bytes:
    """A credential file's content without surrounding whitespace.

    Raises ValueError saying why it cannot be used, never what it holds.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"{path} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    data = data.strip()
    if not data:
        raise ValueError(f"{path} is empty")
    return data


def valid_token(token: bytes) -> bool:
    """A bearer token fit for a header: printable ASCII without spaces (RFC 6750)."""
    return bool(token) and all(0x21 <= b <= 0x7E for b in token)


class Redactor:
    """Removes known secrets, URL userinfo and control characters from text to be printed."""

    def __init__(self) -> None:
        self._known: list[str] = []  # oldest first
        self._secrets: list[str] = []  # longest first, so one inside another goes whole
        self._lock = threading.Lock()

    def add(self, secret: str | bytes) -> None:
        text = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret
        if len(text) < _MIN_SECRET:
            return
        with self._lock:
            if text not in self._known:
                self._known = [*self._known, text][-32:]  # rotations add; the oldest go
                self._secrets = sorted(self._known, key=len, reverse=True)

    def __call__(self, text: str, cut: bool = False) -> str:
        """`text` fit to print. `cut`: the text was truncated, so a secret may have been
        cut in two; a tail that starts one is dropped too."""
        secrets = self._secrets
        for _ in range(4):  # until nothing changes: a replacement may join a new match
            before = text
            for s in secrets:
                text = text.replace(s, REDACTED)
            text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
            text = _UNPRINTABLE.sub(" ", text)
            if text == before:
                break
        if any(s in text for s in secrets):
            return REDACTED  # a pathological overlap: print nothing rather than a secret
        if cut:
            text = _cut_partial_secret(text, secrets)
        return text.strip()


def _cut_partial_secret(text: str, secrets: list[str]) -> str:
    """`text` without a tail of 3 characters or more that starts a secret."""
    cut = True
    while cut:
        cut = False
        for s in secrets:
            for n in range(min(len(s) - 1, len(text)), 2, -1):
                if text.endswith(s[:n]):
                    text, cut = text[: len(text) - n], True
                    break
    return text


class FileSecret:
    """A credential kept in a file, re-read when the file changes (or after the receiver
    refused it), so a rotated token is picked up without a restart. A file that is missing,
    empty or malformed for a moment (mid-rotation) leaves the last good value in use."""

    def __init__(self, path: str, key: str, redact: Redactor, token: bool = False) -> None:
        self.path = path
        self.key = key
        self._redact = redact
        self._token = token
        self._lock = threading.Lock()
        self._signature: tuple[int, ...] | None = None
        self._stale = True
        self._warned: tuple[int, ...] | None = None
        self.value = b""
        self.get()

    def invalidate(self) -> None:
        self._stale = True

    def get(self) -> bytes:
        with self._lock:
            try:
                st = os.stat(self.path)
                signature: tuple[int, ...] = (
                    st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                )  # fmt: skip
            except OSError:
                signature = ()
            if signature == self._signature and not self._stale:
                return self.value
            try:
                value = read_secret(self.path)
                if self._token and not valid_token(value):
                    raise ValueError(f"{self.path} holds characters a token cannot have")
            except ValueError as e:
                if signature != self._warned:
                    self._warned = signature
                    keeping = "keeping the previous value" if self.value else "sending none"
                    log.warning("%s: %s; %s", self.key, e, keeping)
                return self.value
            self._signature, self._stale, self._warned = signature, False, None
            if value != self.value:
                if self.value:
                    log.info("%s: %s changed; using the new credential", self.key, self.path)
                self._redact.add(value)
                self.value = value
            return self.value
