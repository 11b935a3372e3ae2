"""pusher.sender: one remote-write POST against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import pytest

from pusher import __version__
from pusher.config import RemoteWriteConfig
from pusher.mimir import reason as mimir_reason
from pusher.sender import MAX_ERROR_BODY, Outcome, Sender, parse_retry_after

BODY = b"\x1f\x00snappy-compressed-bytes"
OUT_OF_ORDER = (
    b"failed pushing to ingester ingester-zone-a-1: user=edge: received a series whose sample "
    b"timestamp is older than the newest sample already ingested for that series and "
    b"out-of-order ingestion is disabled (err-mimir-sample-out-of-order). The affected sample "
    b'has timestamp 2026-11-20T10:00:00Z and is from series {__name__="libvirt_up"}'
)


@pytest.fixture
def senders() -> Iterator[list[Sender]]:
    made: list[Sender] = []
    yield made
    for s in made:
        s.close()


def make_sender(senders: list[Sender], url: str, **kwargs: object) -> Sender:
    sender = Sender(RemoteWriteConfig(url=url, **kwargs))  # type: ignore[arg-type]
    senders.append(sender)
    return sender


# --- what goes on the wire ---------------------------------------------------------------


def test_required_remote_write_headers_and_body_are_sent(http_server, senders) -> None:
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert outcome == Outcome("ok", "204")
    (req,) = http_server.received
    assert req.method == "POST"
    assert req.path == "/api/v1/push"
    assert req.body == BODY
    assert req.headers["Content-Encoding"] == "snappy"
    assert req.headers["Content-Type"] == "application/x-protobuf"
    assert req.headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert req.headers["User-Agent"] == f"libvirt-pusher/{__version__}"
    assert req.headers["Content-Length"] == str(len(BODY))


def test_tenant_header_is_sent_when_a_tenant_is_set(http_server, senders) -> None:
    make_sender(senders, http_server.url, tenant="edge-eu-1").send(BODY)
    assert http_server.received[0].headers.get_all("X-Scope-OrgID") == ["edge-eu-1"]


def test_tenant_header_is_absent_without_a_tenant(http_server, senders) -> None:
    make_sender(senders, http_server.url, tenant="").send(BODY)
    assert "X-Scope-OrgID" not in http_server.received[0].headers


def test_user_headers_are_passed_along(http_server, senders) -> None:
    headers = {"Authorization": "Bearer s3cr3t", "X-Custom": "yes"}
    make_sender(senders, http_server.url, headers=headers).send(BODY)
    got = http_server.received[0].headers
    assert got["Authorization"] == "Bearer s3cr3t"
    assert got["X-Custom"] == "yes"


def test_user_headers_cannot_override_the_required_ones(http_server, senders) -> None:
    headers = {"content-type": "text/plain", "User-Agent": "curl/8", "x-scope-orgid": "evil"}
    make_sender(senders, http_server.url, tenant="good", headers=headers).send(BODY)
    got = http_server.received[0].headers
    assert got.get_all("Content-Type") == ["application/x-protobuf"]
    assert got.get_all("User-Agent") == [f"libvirt-pusher/{__version__}"]
    assert got.get_all("X-Scope-OrgID") == ["good"]


def test_retry_attempt_header_only_on_retries(http_server, senders) -> None:
    sender = make_sender(senders, http_server.url)
    for attempt in (0, 1, 2, 7):
        sender.send(BODY, attempt=attempt)
    values = [r.headers.get_all("Retry-Attempt") for r in http_server.received]
    assert values == [None, ["1"], ["2"], ["7"]]


# --- outcomes ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204])
def test_2xx_is_ok(http_server, senders, status: int) -> None:
    http_server.answer(status)
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.code) == ("ok", str(status))


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried(http_server, senders, status: int) -> None:
    http_server.answer(status, body=b"ingesters unavailable")
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.code, outcome.retry_after) == ("retry", str(status), None)
    assert "ingesters unavailable" in outcome.message


def test_503_with_retry_after_is_retried_after_that_long(http_server, senders) -> None:
    http_server.answer(503, {"Retry-After": "3"})
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.retry_after) == ("retry", 3.0)


def test_429_with_retry_after_seconds_is_retried_after_that_long(http_server, senders) -> None:
    http_server.answer(429, {"Retry-After": "7"}, b"(err-mimir-tenant-max-ingestion-rate)")
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.code, outcome.retry_after) == ("retry", "429", 7.0)


def test_429_with_retry_after_http_date(http_server, senders) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    http_server.answer(429, {"Retry-After": when})
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert outcome.kind == "retry"
    assert outcome.retry_after is not None
    assert 27.0 <= outcome.retry_after <= 31.0


def test_400_with_a_mimir_id_is_rejected_with_that_reason(http_server, senders) -> None:
    http_server.answer(400, {"Content-Type": "text/plain"}, OUT_OF_ORDER)
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.code, outcome.reason) == ("reject", "400", "sample-out-of-order")
    assert "err-mimir-sample-out-of-order" in outcome.message


def test_400_without_a_mimir_id_is_rejected_as_http_400(http_server, senders) -> None:
    http_server.answer(400, body=b"bad request")
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.reason, outcome.message) == ("reject", "http_400", "bad request")


@pytest.mark.parametrize("status", [404, 405, 415, 422])
def test_other_4xx_are_rejected(http_server, senders, status: int) -> None:
    http_server.answer(status)
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.reason) == ("reject", f"http_{status}")


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_hold(http_server, senders, status: int) -> None:
    http_server.answer(status, body=b"no org id")
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.code) == ("hold", str(status))
    assert outcome.message == "no org id"


def test_413_is_too_large(http_server, senders) -> None:
    http_server.answer(413, body=b"request entity too large")
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.code) == ("too_large", "413")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_to_another_port_is_not_followed(
    http_server, other_http_server, senders, status: int
) -> None:
    http_server.answer(status, {"Location": other_http_server.url})
    outcome = make_sender(senders, http_server.url, headers={"Authorization": "Bearer x"}).send(
        BODY
    )
    assert len(http_server.received) == 1
    assert other_http_server.received == []
    # Not delivered, and not a reason to throw the data away.
    assert outcome.kind not in ("ok", "reject")


def test_redirect_is_reported_with_its_status_code(http_server, other_http_server, senders) -> None:
    http_server.answer(302, {"Location": other_http_server.url})
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.code) == ("hold", "302")
    assert outcome.message.startswith("redirect to") and outcome.message.endswith("refused")


def test_connection_refused_is_retried_with_code_error(refused_url, senders) -> None:
    outcome = make_sender(senders, refused_url, timeout=2.0).send(BODY)
    assert (outcome.kind, outcome.code, outcome.retry_after) == ("retry", "error", None)
    assert outcome.message


@pytest.mark.timeout(10)
def test_a_huge_error_body_is_read_only_up_to_the_cap(http_server, senders) -> None:
    http_server.answer(500, body=b"err-mimir-", filler=10 * 1024 * 1024)
    start = time.monotonic()
    outcome = make_sender(senders, http_server.url, timeout=5.0).send(BODY)
    assert time.monotonic() - start < 1.0
    assert (outcome.kind, outcome.code) == ("retry", "500")
    assert len(outcome.message.encode()) <= MAX_ERROR_BODY


@pytest.mark.timeout(10)
def test_a_server_that_never_answers_is_retried_after_the_timeout(silent_server, senders) -> None:
    start = time.monotonic()
    outcome = make_sender(senders, silent_server, timeout=0.5).send(BODY)
    elapsed = time.monotonic() - start
    assert (outcome.kind, outcome.code) == ("retry", "error")
    assert 0.4 <= elapsed < 3.0


# --- Retry-After parsing -----------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("120", 120.0),
        (email.utils.formatdate(NOW + 42, usegmt=True), 42.0),
        ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0),  # NOW is 2027-01-15 08:00:00 UTC
    ],
)
def test_parse_retry_after(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["0", "0.0", "-5", "-0", email.utils.formatdate(NOW - 100, usegmt=True),
              email.utils.formatdate(NOW, usegmt=True)],
)  # fmt: skip
def test_retry_after_asking_for_no_wait_leaves_the_backoff_in_charge(value: str) -> None:
    # 0 or a date in the past would be a busy loop of retries if taken as the delay.
    assert parse_retry_after(value, now=NOW) is None


def test_503_with_retry_after_0_is_a_retry_with_backoff(http_server, senders) -> None:
    http_server.answer(503, {"Retry-After": "0"})
    outcome = make_sender(senders, http_server.url).send(BODY)
    assert (outcome.kind, outcome.retry_after) == ("retry", None)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "Fri, 99 Foo 2027", "7s", "1,5"])
def test_parse_retry_after_unreadable_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e999"])
def test_parse_retry_after_infinite_is_not_infinite(value: str) -> None:
    result = parse_retry_after(value, now=NOW)
    assert result is None or result < 1e9


def test_parse_retry_after_nan_is_not_nan() -> None:
    result = parse_retry_after("nan", now=NOW)
    assert result is None or result == result


def test_mimir_reason() -> None:
    assert mimir_reason(OUT_OF_ORDER.decode(), 400) == "sample-out-of-order"
    assert mimir_reason("x (err-mimir-max-label-names-per-series). more", 400) == (
        "max-label-names-per-series"
    )
    assert mimir_reason("plain text", 422) == "http_422"


def test_v2_requests_carry_the_2_0_headers(http_server, senders) -> None:
    http_server.answer(204, {"X-Prometheus-Remote-Write-Samples-Written": "3"})
    outcome = make_sender(senders, http_server.url).send(BODY, proto=2)
    headers = http_server.received[0].headers
    assert headers["Content-Type"] == "application/x-protobuf;proto=io.prometheus.write.v2.Request"
    assert headers["X-Prometheus-Remote-Write-Version"] == "2.0.0"
    assert (outcome.kind, outcome.written) == ("ok", 3)


def test_v2_2xx_without_written_header_is_a_1_x_receiver(http_server, senders) -> None:
    http_server.answer(204)
    assert make_sender(senders, http_server.url).send(BODY, proto=2).kind == "unsupported"


def test_415_means_unsupported_for_v2_only(http_server, senders) -> None:
    http_server.answer(415)
    sender = make_sender(senders, http_server.url)
    assert sender.send(BODY, proto=2).kind == "unsupported"
    assert sender.send(BODY, proto=1).kind == "reject"


# --- proxies from the environment ----------------------------------------------------------
# The recording server stands in for a forward proxy: requests sends a plain-http request to
# a proxy with the whole URL as its path.

_PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
               "all_proxy", "NO_PROXY", "no_proxy")  # fmt: skip


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _proxy_base(server_url: str) -> str:
    return server_url.rsplit("/api/", 1)[0]


def test_http_proxy_from_the_environment_is_used(
    http_server, refused_url, senders, no_proxy_env
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", _proxy_base(http_server.url))
    assert make_sender(senders, refused_url).send(BODY).kind == "ok"
    assert [r.path for r in http_server.received] == [refused_url]


def test_no_proxy_from_the_environment_bypasses_the_proxy(
    http_server, refused_url, senders, no_proxy_env
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", _proxy_base(refused_url))
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    assert make_sender(senders, http_server.url).send(BODY).kind == "ok"
    assert [r.path for r in http_server.received] == ["/api/v1/push"]


def test_proxy_url_wins_over_the_environment(
    http_server, refused_url, senders, no_proxy_env
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", _proxy_base(refused_url))
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    sender = make_sender(senders, refused_url, proxy_url=_proxy_base(http_server.url))
    assert sender.send(BODY).kind == "ok"
    assert [r.path for r in http_server.received] == [refused_url]


def test_the_environment_is_read_once_when_the_sender_is_made(
    http_server, refused_url, senders, no_proxy_env
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", _proxy_base(http_server.url))
    sender = make_sender(senders, refused_url)
    no_proxy_env.setenv("HTTP_PROXY", _proxy_base(refused_url))  # not read on every POST
    assert sender.send(BODY).kind == "ok"
    assert sender.send(BODY).kind == "ok"
    assert len(http_server.received) == 2
