"""What Grafana Mimir's error answers say, read without trusting the tenant's text (pure).

Mimir's validation messages quote the offending series, and a series' label values are chosen
by cloud users (a Nova instance name). A message reads like one of:

    the sample has been rejected because … (err-mimir-sample-out-of-order). The affected
        sample has timestamp … and is from series metric{instance_name="…"}
    received a series whose label value length of 279 exceeds the limit of 200, label:
        'instance_name', value: '…' (truncated) series: 'metric{…' (err-mimir-label-value-too-long).
        To adjust the related per-tenant limit, configure -validation.max-length-label-value, …

Everything a tenant can choose sits in quotes or braces. Mimir's id is therefore the first one
that comes before any quote or brace (the first form), or else the last one in a body read to
its end (the second form: the series comes before the id). Only Mimir's own ids count, so a
user who names an instance `(err-mimir-anything)` neither picks the reason nor mints a label
value. The limits Mimir names in its text (before any quote) tell the agent the tenant's real
limits when they are lower than its configuration.
"""

from __future__ import annotations

import re

__all__ = ["KNOWN_IDS", "LIMIT_KEYS", "TOO_LARGE", "learned_limit", "reason"]

# Mimir's error ids (pkg/util/globalerror): immutable by Mimir's own rule.
KNOWN_IDS = frozenset({
    "missing-metric-name", "metric-name-invalid", "max-label-names-per-series",
    "max-native-histogram-buckets", "label-invalid", "label-name-too-long",
    "label-value-too-long", "duplicate-label-names", "labels-not-sorted", "too-far-in-future",
    "max-series-per-metric", "max-metadata-per-metric", "max-series-per-user",
    "max-metadata-per-user", "distributor-max-ingestion-rate",
    "distributor-max-inflight-push-requests", "distributor-max-inflight-push-requests-bytes",
    "ingester-max-ingestion-rate", "ingester-max-tenants", "ingester-max-series",
    "ingester-max-inflight-push-requests", "exemplar-labels-missing",
    "exemplar-labels-too-long", "exemplar-timestamp-invalid", "metadata-missing-metric-name",
    "metric-name-too-long", "unit-too-long", "tenant-max-request-rate",
    "tenant-max-ingestion-rate", "tenant-too-many-ha-clusters", "sample-timestamp-too-old",
    "sample-out-of-order", "sample-duplicate-timestamp", "exemplar-series-missing",
    "distributor-max-write-message-size",
})  # fmt: skip
# A request over the distributor's max_recv_msg_size: Mimir answers 400 with this, not 413.
TOO_LARGE = "distributor-max-write-message-size"
# The agent's config key for each limit a Mimir id names.
LIMIT_KEYS = {
    "label-value-too-long": "limits.max_label_value_length",
    "label-name-too-long": "limits.max_label_name_length",
    "max-label-names-per-series": "limits.max_label_names_per_series",
}

_ID = re.compile(r"\(err-mimir-([a-z0-9-]{1,64})\)")
_TENANT_TEXT = re.compile(r"['\"{]")
_LIMIT = {
    "label-value-too-long": re.compile(r"length of \d+ exceeds the limit of (\d+)"),
    "label-name-too-long": re.compile(r"length of \d+ exceeds the limit of (\d+)"),
    "max-label-names-per-series": re.compile(r"\(actual: \d+, limit: (\d+)\)"),
}


def _own_text(body: str) -> str:
    """The part of a body before anything a tenant chose (quotes, braces)."""
    m = _TENANT_TEXT.search(body)
    return body if m is None else body[: m.start()]


def reason(body: str, code: int, complete: bool = True) -> str:
    """Mimir's error id in an answer (`sample-out-of-order`), else `http_<code>`.
    `complete`: the body was read to its end (a cut one may have lost the real id)."""
    ids = [m for m in _ID.finditer(body) if m.group(1) in KNOWN_IDS]
    if not ids:
        return f"http_{code}"
    cut = len(_own_text(body))
    if ids[0].end() <= cut:
        return ids[0].group(1)
    return ids[-1].group(1) if complete else f"http_{code}"


def learned_limit(body: str, mimir_id: str) -> int | None:
    """The tenant's limit a rejection names (label value length, label name length, label
    names per series), read from Mimir's own text only; None when it names none."""
    pattern = _LIMIT.get(mimir_id)
    if pattern is None:
        return None
    m = pattern.search(_own_text(body))
    return int(m.group(1)) if m else None
