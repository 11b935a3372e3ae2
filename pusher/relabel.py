"""Relabeling in Prometheus' `write_relabel_configs` syntax (`relabel_configs:`).

`parse_rules` turns the configuration's list into compiled `Rule`s (regexes compiled and
replacement templates parsed once, at load) or raises `RuleError` naming the rule and its
field. `relabel` runs the rules on one label set, `__name__` included; `Relabeler` runs them
on every series of a cycle and keeps what it computed while the series stay the same: a
domain's relabeled plan lives as long as its plan, other series' results are kept by key.

The actions are Prometheus' replace, keep, drop, labeldrop and labelmap, with its defaults
(action replace, separator ";", regex "(.*)", replacement "$1") and its anchoring (a regex
matches the whole value). Regexes are Python's `re` syntax, which agrees with Prometheus'
RE2 for the usual patterns. A replacement refers to groups as `$1`, `${1}` or `$name`;
`$$` is a dollar sign.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pusher.catalog import (
    DomainPlan,
    LabelLimits,
    LabelPairs,
    Reading,
    Sample,
    SeriesKey,
    reading,
    series_labels,
    truncate_label_value,
)

__all__ = ["ACTIONS", "Relabeler", "Rule", "RuleError", "parse_rules", "relabel"]

log = logging.getLogger(__name__)

ACTIONS = ("replace", "keep", "drop", "labeldrop", "labelmap")
_FIELDS = ("action", "source_labels", "separator", "regex", "target_label", "replacement")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# A group reference in a template: $$, ${name} or $name (a name runs over [a-zA-Z0-9_]).
_REF = re.compile(r"\$(?:(\$)|\{(\w+)\}|(\w+))", re.ASCII)
# What a target label (or labelmap's replacement) may be: a label name in which group
# references stand for parts.
# (Prometheus' own pattern nests repetitions, which Python's backtracking `re` would take
# exponential time over; this one says the same.)
_TARGET = re.compile(r"(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))(?:\w|\$(?:\{\w+\}|\w+))*", re.ASCII)
_LEADING_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")
MAX_REGEX_LENGTH = 1000
MAX_TEXT_LENGTH = 2048  # any other field: a label value at most
MAX_CACHED_NAMES = 10_000  # label names a rule remembers what it makes of
DEFAULT_REGEX = "(.*)"
# Why a series went: a keep or drop rule chose it; it was left without a valid metric name
# (`__name__`); another series of the cycle already had the labels it was given.
REASONS = ("rule", "invalid_name", "duplicate")


class RuleError(ValueError):
    """A rule that cannot be used: `where` is its place, e.g. "[2].regex"."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def _template(text: str) -> tuple[object, ...]:
    """A replacement or target_label as parts: strings, and group references as ints
    (numbers) or 1-tuples (names)."""
    parts: list[object] = []
    pos = 0
    for m in _REF.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        if m.group(1):
            parts.append("$")
        else:
            ref = m.group(2) or m.group(3)
            parts.append(int(ref) if ref.isdigit() else (ref,))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def _resolve(template: tuple[object, ...], regex: re.Pattern[str]) -> tuple[str | int, ...]:
    """Group references as group numbers; a reference to a group the regex lacks is empty,
    as in Prometheus."""
    out: list[str | int] = []
    for part in template:
        if isinstance(part, tuple):
            part = regex.groupindex.get(part[0], "")
        elif isinstance(part, int) and part > regex.groups:
            part = ""
        if part != "":
            out.append(part)  # type: ignore[arg-type]
    return tuple(out)


def _expand(template: tuple[str | int, ...], m: re.Match[str]) -> str:
    """The template with its group references filled in from the match (a group that did
    not take part is empty)."""
    return "".join(p if isinstance(p, str) else m.group(p) or "" for p in template)


@dataclass(frozen=True)
class Rule:
    """One compiled rule; `text` is its regex as written (for messages and tests)."""

    action: str
    source_labels: tuple[str, ...]
    separator: str
    regex: re.Pattern[str]
    target: tuple[str | int, ...]
    replacement: tuple[str | int, ...]
    text: str = DEFAULT_REGEX
    # labeldrop and labelmap: label name -> what the rule makes of it (None: nothing). The
    # agent's label names are few, and every series repeats them.
    _names: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    def _by_name(self, name: str) -> str | None:
        """labeldrop: the name when it matches; labelmap: the name it maps to."""
        if name in self._names:
            return self._names[name]
        m = self.regex.fullmatch(name)
        out = None
        if m is not None:
            out = name if self.action == "labeldrop" else _expand(self.replacement, m)
            if not _LABEL_NAME.fullmatch(out):
                out = None
        if len(self._names) < MAX_CACHED_NAMES:
            self._names[name] = out
        return out

    def apply(self, labels: dict[str, str]) -> bool:
        """Run the rule on `labels` (changed in place); False when the series is dropped."""
        action = self.action
        if action == "labeldrop":
            for name in [n for n in labels if self._by_name(n) is not None]:
                del labels[name]
            return True
        if action == "labelmap":
            for name, value in list(labels.items()):
                new = self._by_name(name)
                if new is not None:
                    labels[new] = value
            return True
        value = self.separator.join([labels.get(n, "") for n in self.source_labels])
        m = self.regex.fullmatch(value)
        if action == "keep":
            return m is not None
        if action == "drop":
            return m is None
        if m is not None:  # replace
            target = _expand(self.target, m)
            if _LABEL_NAME.fullmatch(target):
                result = _expand(self.replacement, m)
                if result:
                    labels[target] = result
                else:
                    labels.pop(target, None)
        return True


def relabel(rules: Sequence[Rule], labels: dict[str, str]) -> dict[str, str] | None:
    """Run the rules in order on one label set (changed in place); None when dropped."""
    for rule in rules:
        if not rule.apply(labels):
            return None
    return labels


# --- parsing ------------------------------------------------------------------------------


def _compile(text: str) -> re.Pattern[str]:
    """The regex in a group of its own (anchored by `fullmatch`). Leading flags such as
    `(?i)`, which RE2 takes there, stay in front: Python takes global flags only first."""
    flags = _LEADING_FLAGS.match(text)
    lead = flags.group() if flags else ""
    return re.compile(f"{lead}(?:{text[len(lead) :]})")


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RuleError(where, f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LENGTH:
        raise RuleError(where, f"longer than {MAX_TEXT_LENGTH} characters")
    return value


def _rule(i: int, raw: Any) -> Rule:
    at = f"[{i}]"
    if not isinstance(raw, dict):
        raise RuleError(at, f"expected a map, got {type(raw).__name__}")
    for k in raw:
        if k not in _FIELDS:
            raise RuleError(f"{at}.{k}", f"unknown field; a rule has {', '.join(_FIELDS)}")
    action = _string(f"{at}.action", raw.get("action", "replace"))
    if action not in ACTIONS:
        raise RuleError(f"{at}.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
    sources = raw.get("source_labels", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise RuleError(f"{at}.source_labels", "expected a list of label names")
    for name in sources:
        if not _LABEL_NAME.fullmatch(name):
            raise RuleError(f"{at}.source_labels", f"{name!r} is not a valid label name")
    text = _string(f"{at}.regex", raw.get("regex", DEFAULT_REGEX))
    if len(text) > MAX_REGEX_LENGTH:
        raise RuleError(f"{at}.regex", f"longer than {MAX_REGEX_LENGTH} characters")
    try:
        regex = _compile(text)
    except (re.error, RecursionError, OverflowError) as e:
        raise RuleError(
            f"{at}.regex", f"{text!r} is not a usable regular expression: {e}"
        ) from None
    target = _template(_string(f"{at}.target_label", raw.get("target_label", "")))
    replacement = _template(_string(f"{at}.replacement", raw.get("replacement", "$1")))
    for name, template in (("target_label", target), ("replacement", replacement)):
        if name in raw:
            for ref in template:
                _check_ref(f"{at}.{name}", regex, ref)
    separator = _string(f"{at}.separator", raw.get("separator", ";"))
    rule = Rule(
        action,
        tuple(sources),
        separator,
        regex,
        _resolve(target, regex),
        _resolve(replacement, regex),
        text,
    )
    _check(at, rule, raw)
    return rule


def _check(at: str, rule: Rule, raw: dict[str, Any]) -> None:
    """What each action needs, and what it has no use for."""
    action = rule.action
    if action in ("keep", "drop") and not rule.source_labels:
        raise RuleError(f"{at}.source_labels", f"required by action {action}")
    if action == "replace":
        target = raw.get("target_label", "")
        if not target:
            raise RuleError(f"{at}.target_label", "required by action replace")
        if not _TARGET.fullmatch(target):
            raise RuleError(
                f"{at}.target_label", f"{target!r} is not a label name (group references allowed)"
            )
    if action == "labelmap" and not _TARGET.fullmatch(raw.get("replacement", "$1")):
        raise RuleError(
            f"{at}.replacement",
            f"{raw['replacement']!r} is not a label name (group references allowed)",
        )
    if action in ("labeldrop", "labelmap"):
        unused: list[str] = [k for k in ("source_labels", "target_label", "separator") if k in raw]
        if action == "labeldrop" and "replacement" in raw:
            unused.append("replacement")
        if unused:
            raise RuleError(f"{at}.{unused[0]}", f"has no use with action {action}")
    if action in ("keep", "drop") and ("target_label" in raw or "replacement" in raw):
        name = "target_label" if "target_label" in raw else "replacement"
        raise RuleError(f"{at}.{name}", f"has no use with action {action}")


def _check_ref(where: str, regex: re.Pattern[str], ref: object) -> None:
    """A group reference written out must name a group the regex has: Prometheus would put
    an empty string in its place, which is never what was meant. (The default replacement
    `$1` on a regex without groups stays allowed: it empties the target, as in
    Prometheus.)"""
    if isinstance(ref, int) and ref > regex.groups:
        raise RuleError(where, f"${ref} refers to a group the regex lacks")
    if isinstance(ref, tuple) and ref[0] not in regex.groupindex:
        raise RuleError(where, f"${ref[0]} refers to a group the regex lacks")


def parse_rules(value: Any) -> tuple[Rule, ...]:
    """The `relabel_configs` list -> compiled rules, or RuleError naming the rule."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RuleError("", f"expected a list of rules, got {type(value).__name__}")
    return tuple(_rule(i, raw) for i, raw in enumerate(value))


# --- a cycle's series ---------------------------------------------------------------------


def fit_limits(labels: dict[str, str], before: Iterable[str], limits: LabelLimits) -> LabelPairs:
    """A relabeled label set (without `__name__`) kept within the label limits: values cut
    (counted in `limits.truncated`), names too long left off, and while the series (with
    `__name__`) carries more than `limits.max_names` names, labels left off: first those the
    rules added, then the others, the last by name first (each counted in `limits.dropped`)."""
    for name in [n for n in labels if len(n) > limits.max_name_length]:
        del labels[name]
        limits.dropped += 1
    excess = len(labels) + 1 - limits.max_names
    if excess > 0:
        old = set(before)
        added = sorted((n for n in labels if n not in old), reverse=True)
        order = added + sorted((n for n in labels if n in old), reverse=True)
        for name in order[:excess]:
            del labels[name]
            limits.dropped += 1
    short = limits.max_value_bytes // 4  # no longer in UTF-8 than the limit: not cut
    return tuple(
        sorted(
            (k, v if len(v) <= short else truncate_label_value(v, limits))
            for k, v in labels.items()
            if v
        )
    )


def _subplan(plan: DomainPlan, keep: Sequence[int], series: Sequence[SeriesKey]) -> DomainPlan:
    """The plan with only the series at `keep` (indices into `plan`), named `series`."""
    return DomainPlan(
        plan.signature,
        plan.shared,
        tuple(plan.keys[i] for i in keep),
        tuple(plan.scales[i] for i in keep),
        tuple(series),
    )


def _take(key: SeriesKey, taken: set[SeriesKey]) -> bool:
    """Whether `key` is new to `taken` (and add it)."""
    if key in taken:
        return False
    taken.add(key)
    return True


# A domain relabeled: its plan, its XML series, the samples per cycle they drop by reason.
_Relabeled = tuple[DomainPlan, tuple[Sample, ...], "collections.Counter[str]"]


class Relabeler:
    """The rules applied to every series of a cycle, with what it computed kept.

    A series dropped by a rule, left without a valid `__name__`, or given the labels of a
    series already in the cycle (the first one, in the cycle's order, is kept) is left out
    and counted by reason (`pusher_relabel_dropped_samples_total`). Relabeled series are
    keyed `(name, all labels, ())`.
    """

    def __init__(self, rules: Sequence[Rule], limits: LabelLimits) -> None:
        self.rules = tuple(rules)
        self.limits = limits
        self.dropped: collections.Counter[str] = collections.Counter({r: 0 for r in REASONS})
        self._keys: dict[SeriesKey, SeriesKey | str] = {}  # key -> relabeled, or why dropped
        self._plans: weakref.WeakKeyDictionary[DomainPlan, _Relabeled] = weakref.WeakKeyDictionary()
        # The last cycle's domain plans, and what came of them: the plans and XML series to
        # send (without series that repeat an earlier one's labels), their keys, the
        # samples they drop.
        self._layout: tuple[DomainPlan, ...] | None = None
        self._final: list[tuple[DomainPlan, Sequence[Sample]]] = []
        self._deduped: dict[DomainPlan, tuple[tuple[int, ...], DomainPlan]] = {}
        self._taken: set[SeriesKey] = set()
        self._plan_drops: collections.Counter[str] = collections.Counter()
        self._seen: set[SeriesKey] = set()  # the other series of the current cycle

    def readings(self) -> list[Reading]:
        return [
            reading("pusher_relabel_dropped_samples_total", n, (("reason", r),))
            for r, n in self.dropped.items()
        ]

    def clear(self) -> None:
        """Forget what was computed (the label limits changed)."""
        self._keys.clear()
        self._plans = weakref.WeakKeyDictionary()
        self._layout = None
        self._deduped.clear()

    def relabel_key(self, key: SeriesKey, limits: LabelLimits | None = None) -> SeriesKey | str:
        """One series' relabeled key, or the reason it is dropped ("rule", "invalid_name").
        What keeping to the label limits costs is counted in `limits` (the agent's)."""
        labels = dict(series_labels(key))
        before = list(labels)
        out = relabel(self.rules, labels)
        if out is None:
            return "rule"
        name = out.pop("__name__", "")
        if not _METRIC_NAME.fullmatch(name):
            return "invalid_name"
        return (name, fit_limits(out, before, limits or self.limits), ())

    def _relabel_all(
        self, keys: Iterable[SeriesKey], drops: collections.Counter[str]
    ) -> tuple[list[int], list[SeriesKey]]:
        """The indices and relabeled keys of the series kept; the others counted in
        `drops` by reason."""
        keep: list[int] = []
        out: list[SeriesKey] = []
        for i, key in enumerate(keys):
            new = self.relabel_key(key)
            if isinstance(new, str):
                drops[new] += 1
            else:
                keep.append(i)
                out.append(new)
        return keep, out

    def domain(self, plan: DomainPlan, extra: Sequence[Sample]) -> _Relabeled:
        """A domain's plan and XML series relabeled (kept as long as its plan, which lives
        as long as they do), and the samples per cycle they drop, by reason."""
        cached = self._plans.get(plan)
        if cached is None:
            drops: collections.Counter[str] = collections.Counter()
            keep, series = self._relabel_all(plan.series, drops)
            kept, keys = self._relabel_all((key for key, _ in extra), drops)
            samples = tuple((k, extra[i][1]) for i, k in zip(kept, keys, strict=True))
            cached = self._plans[plan] = (_subplan(plan, keep, series), samples, drops)
        return cached

    def domains(
        self, domains: Sequence[tuple[DomainPlan, Sequence[Sample]]]
    ) -> list[tuple[DomainPlan, Sequence[Sample]]]:
        """This cycle's domains (plan, XML series) relabeled, without series whose labels
        an earlier series has; worked out again only when the plans change. Counts the
        drops."""
        layout = tuple(plan for plan, _ in domains)
        if layout != self._layout:
            self._layout = layout
            self._dedup([self.domain(plan, extra) for plan, extra in domains])
        self.dropped.update(self._plan_drops)
        return self._final

    def _dedup(self, relabeled: list[_Relabeled]) -> None:
        taken: set[SeriesKey] = set()
        drops: collections.Counter[str] = collections.Counter()
        final: list[tuple[DomainPlan, Sequence[Sample]]] = []
        deduped: dict[DomainPlan, tuple[tuple[int, ...], DomainPlan]] = {}
        for plan, extra, domain_drops in relabeled:
            drops.update(domain_drops)
            keep = [i for i, key in enumerate(plan.series) if _take(key, taken)]
            samples = [(key, value) for key, value in extra if _take(key, taken)]
            lost = len(plan.series) - len(keep) + len(extra) - len(samples)
            if lost:
                drops["duplicate"] += lost
                log.warning(
                    "relabel_configs give %d series of a domain the labels of another "
                    "series; only the first is sent", lost,
                )  # fmt: skip
            if len(keep) < len(plan.series):
                previous = self._deduped.get(plan)
                if previous is None or previous[0] != tuple(keep):
                    previous = (tuple(keep), _subplan(plan, keep, [plan.series[i] for i in keep]))
                deduped[plan] = previous
                plan = previous[1]
            final.append((plan, samples))
        self._deduped, self._taken, self._final, self._plan_drops = deduped, taken, final, drops

    def begin(self) -> None:
        """A new cycle: no other series seen yet."""
        self._seen = set()

    def samples(self, samples: Iterable[Sample]) -> list[Sample]:
        """The cycle's other series relabeled (after `plans` and `begin`), without those
        whose labels a series of this cycle already has."""
        out: list[Sample] = []
        keys, taken, seen = self._keys, self._taken, self._seen
        for key, value in samples:
            new = keys.get(key)
            if new is None:
                new = keys[key] = self.relabel_key(key)
            if isinstance(new, str):
                self.dropped[new] += 1
            elif new in taken or new in seen:
                self.dropped["duplicate"] += 1
            else:
                seen.add(new)
                out.append((new, value))
        return out

    def ended(self, keys: Iterable[SeriesKey]) -> set[SeriesKey]:
        """The relabeled keys of series that ended (and are forgotten here), but those
        dropped and those whose labels a series of this cycle still has."""
        out = set()
        for key in keys:
            new = self._keys.pop(key, None)
            if new is None:  # a domain plan's: worked out again, its costs already counted
                new = self.relabel_key(key, dataclasses.replace(self.limits))
            if not isinstance(new, str) and new not in self._taken and new not in self._seen:
                out.add(new)
        return out
