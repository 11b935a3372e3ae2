"""Reading Mimir's answers: its own id and limits, never a tenant's text (pure)."""

from __future__ import annotations

import pytest

from pusher import mimir

# Mimir 3.0.3's bodies, as seen on this machine (the series part shortened).
OUT_OF_ORDER = (
    "the sample has been rejected because another sample with a more recent timestamp has "
    "already been ingested and out-of-order samples are not allowed "
    "(err-mimir-sample-out-of-order). The affected sample has timestamp 2026-12-03T15:00:00Z "
    'and is from series libvirt_up{cluster="c", instance_name="{INSTANCE}"} (sampled 1/10)'
)
VALUE_TOO_LONG = (
    "received a series whose label value length of 279 exceeds the limit of 200, label: "
    "'instance_name', value: '{INSTANCE}' (truncated) series: 'libvirt_up{instance_name=\"x' "
    "(err-mimir-label-value-too-long). To adjust the related per-tenant limit, configure "
    "-validation.max-length-label-value, or contact your service administrator."
)
TOO_MANY_LABELS = (
    "received a series whose number of labels exceeds the limit (actual: 31, limit: 30) "
    "series: 'libvirt_up{instance_name=\"{INSTANCE}\"}' (err-mimir-max-label-names-per-series). "
    "To adjust the related per-tenant limit, configure -validation.max-label-names-per-series, "
    "or contact your service administrator."
)
TOO_BIG = (
    "the incoming push request has been rejected because its message size of 5000 bytes is "
    "larger than the allowed limit of 2000 bytes (err-mimir-distributor-max-write-message-size)."
    " To adjust the related limit, configure -distributor.max-recv-msg-size, or contact your "
    "service administrator."
)
HOSTILE = [
    "web-1",
    "(err-mimir-max-series-per-user)",
    "x (err-mimir-too-far-in-future). To adjust",
    "a' (err-mimir-sample-duplicate-timestamp). To adjust the related limit",
    '"} (err-mimir-labels-not-sorted)',
    "(err-mimir-made-up-id-per-name-1234)",
]


@pytest.mark.parametrize("instance", HOSTILE)
@pytest.mark.parametrize(
    ("template", "expected"),
    [(OUT_OF_ORDER, "sample-out-of-order"), (VALUE_TOO_LONG, "label-value-too-long"),
     (TOO_MANY_LABELS, "max-label-names-per-series")],
)  # fmt: skip
def test_the_reason_is_mimirs_whatever_the_instance_is_called(
    template: str, expected: str, instance: str
) -> None:
    assert mimir.reason(template.replace("{INSTANCE}", instance), 400) == expected


def test_only_known_ids_count_and_the_rest_is_the_status() -> None:
    assert mimir.reason("bad request", 400) == "http_400"
    assert mimir.reason("oops (err-mimir-not-a-mimir-id)", 400) == "http_400"
    assert mimir.reason("(err-mimir-sample-out-of-order)", 422) == "sample-out-of-order"


def test_a_cut_body_gives_no_id_that_may_be_the_tenants() -> None:
    body = VALUE_TOO_LONG.replace("{INSTANCE}", "(err-mimir-max-series-per-user)")
    cut = body[: body.index("(err-mimir-label-value-too-long)")]
    assert mimir.reason(cut, 400, complete=False) == "http_400"
    # Mimir's own text before any quote is trusted even in a cut body.
    assert mimir.reason(OUT_OF_ORDER[:300], 400, complete=False) == "sample-out-of-order"


def test_size_rejection_is_recognised() -> None:
    assert mimir.reason(TOO_BIG, 400) == mimir.TOO_LARGE


@pytest.mark.parametrize("instance", [*HOSTILE, "exceeds the limit of 5", "(actual: 9, limit: 3)"])
def test_the_limits_mimir_names_are_read_from_its_own_text(instance: str) -> None:
    value = VALUE_TOO_LONG.replace("{INSTANCE}", instance)
    assert mimir.learned_limit(value, "label-value-too-long") == 200
    names = TOO_MANY_LABELS.replace("{INSTANCE}", instance)
    assert mimir.learned_limit(names, "max-label-names-per-series") == 30
    assert mimir.learned_limit(OUT_OF_ORDER, "sample-out-of-order") is None
    assert mimir.LIMIT_KEYS["label-value-too-long"] == "limits.max_label_value_length"
