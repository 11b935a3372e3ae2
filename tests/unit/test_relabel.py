"""`relabel_configs` (`pusher.relabel`): Prometheus' write_relabel_configs actions on one label
set, their validation at load, and the stage on every series of a cycle."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_series import domain, stats

from pusher import cli
from pusher.catalog import LabelLimits, series_labels
from pusher.collect import DomainStats, Snapshot
from pusher.config import ConfigError, from_mapping
from pusher.encode import Encoder, decompress, is_stale
from pusher.nova import DomainInfo, NovaInstance
from pusher.pb.remote_write_pb2 import WriteRequest
from pusher.relabel import Relabeler, fit_limits, parse_rules, relabel
from pusher.series import Cycle, Planner

REPO_EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def run(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    return relabel(parse_rules(rules), dict(labels))


SERIES = {"__name__": "libvirt_domain_info_cpu_time_seconds_total", "uuid": "u1",
          "project_uuid": "p-1", "user_uuid": "us-1", "host": "cn1"}  # fmt: skip


# --- the actions and their defaults --------------------------------------------------------


def test_replace_defaults_copy_the_source_label() -> None:
    # action replace, separator ";", regex (.*), replacement $1
    out = run([{"source_labels": ["project_uuid"], "target_label": "project_id"}], SERIES)
    assert out == {**SERIES, "project_id": "p-1"}
    rule = parse_rules([{"source_labels": ["a"], "target_label": "b"}])[0]
    assert (rule.action, rule.separator, rule.text, rule.replacement) == (
        "replace",
        ";",
        "(.*)",
        (1,),
    )


def test_replace_joins_sources_with_the_separator_and_missing_labels_are_empty() -> None:
    rules = [{"source_labels": ["uuid", "nope", "host"], "target_label": "k"}]
    assert run(rules, SERIES)["k"] == "u1;;cn1"  # type: ignore[index]
    rules[0]["separator"] = "/"
    assert run(rules, SERIES)["k"] == "u1//cn1"  # type: ignore[index]


def test_replace_without_sources_sets_a_constant_and_an_empty_result_deletes() -> None:
    assert run([{"target_label": "region", "replacement": "r1"}], SERIES)["region"] == "r1"  # type: ignore[index]
    out = run([{"target_label": "host", "replacement": ""}], SERIES)
    assert out is not None and "host" not in out


def test_replace_leaves_the_labels_alone_when_the_regex_does_not_match() -> None:
    rules = [
        {"source_labels": ["host"], "regex": "cn2", "target_label": "host", "replacement": "x"}
    ]
    assert run(rules, SERIES) == SERIES


def test_regexes_are_anchored_at_both_ends() -> None:
    # "cn" is in "cn1" but does not match all of it; "n1" neither; "cn.|x" does (alternation
    # inside the anchors, as Prometheus wraps it in ^(?:...)$).
    assert run([{"action": "keep", "source_labels": ["host"], "regex": "cn"}], SERIES) is None
    assert run([{"action": "keep", "source_labels": ["host"], "regex": "n1"}], SERIES) is None
    assert run([{"action": "keep", "source_labels": ["host"], "regex": "x|cn."}], SERIES) == SERIES
    rule = {"source_labels": ["host"], "regex": "c", "target_label": "t", "replacement": "y"}
    assert "t" not in run([rule], SERIES)  # type: ignore[operator]


def test_a_case_insensitive_flag_in_front_works_as_in_prometheus() -> None:
    rules = [{"action": "keep", "source_labels": ["host"], "regex": "(?i)CN1|cn2"}]
    assert run(rules, SERIES) == SERIES
    assert run(rules, {**SERIES, "host": "xCN1"}) is None  # still anchored


def test_group_references_by_number_braces_and_name() -> None:
    rules = [{
        "source_labels": ["project_uuid", "host"],
        "regex": r"(?P<kind>\w)-(\d);cn(\d)",
        "target_label": "t",
        "replacement": "$kind/${2}x/$3/$0/$$1",
    }]  # fmt: skip
    assert run(rules, SERIES)["t"] == "p/1x/1/p-1;cn1/$1"  # type: ignore[index]


def test_a_group_that_did_not_take_part_is_empty() -> None:
    rules = [{"source_labels": ["host"], "regex": "(x)?(cn1)", "target_label": "t",
              "replacement": "[$1]$2"}]  # fmt: skip
    assert run(rules, SERIES)["t"] == "[]cn1"  # type: ignore[index]


def test_the_target_label_may_use_groups_and_an_invalid_result_does_nothing() -> None:
    rules = [{"source_labels": ["host"], "regex": "(.*)", "target_label": "node_$1"}]
    assert run(rules, SERIES)["node_cn1"] == "cn1"  # type: ignore[index]
    bad = {**SERIES, "host": "c-1"}  # node_c-1 is no label name: the rule is skipped
    assert run(rules, bad) == bad


def test_keep_and_drop() -> None:
    keep = [{"action": "keep", "source_labels": ["__name__"], "regex": "libvirt_domain_.*"}]
    drop = [{**keep[0], "action": "drop"}]
    assert run(keep, SERIES) == SERIES
    assert run(drop, SERIES) is None
    other = {**SERIES, "__name__": "pusher_cycles_total"}
    assert run(keep, other) is None
    assert run(drop, other) == other


def test_labeldrop_deletes_matching_names() -> None:
    out = run([{"action": "labeldrop", "regex": "host|.*_uuid"}], SERIES)
    assert out == {"__name__": SERIES["__name__"], "uuid": "u1"}  # anchored: uuid stays


def test_labelmap_copies_matching_labels_to_the_replacement_name() -> None:
    rules = [{"action": "labelmap", "regex": "(project|user)_uuid", "replacement": "${1}_id"}]
    assert run(rules, SERIES) == {**SERIES, "project_id": "p-1", "user_id": "us-1"}
    default = [{"action": "labelmap", "regex": "(project)_uuid"}]  # replacement $1
    assert run(default, SERIES) == {**SERIES, "project": "p-1"}


def test_rules_run_in_order_on_the_result_of_the_previous_ones() -> None:
    rules = [
        {"action": "labelmap", "regex": "(project|user)_uuid", "replacement": "${1}_id"},
        {"action": "labeldrop", "regex": "(project|user)_uuid"},
        {"action": "drop", "source_labels": ["project_id"], "regex": "p-2"},
    ]
    assert run(rules, SERIES) == {"__name__": SERIES["__name__"], "uuid": "u1", "host": "cn1",
                                  "project_id": "p-1", "user_id": "us-1"}  # fmt: skip
    assert run(rules, {**SERIES, "project_uuid": "p-2"}) is None


def test_the_metric_name_can_be_matched_and_rewritten() -> None:
    rules = [{"source_labels": ["__name__"], "regex": "libvirt_(.*)", "target_label": "__name__",
              "replacement": "vm_$1"}]  # fmt: skip
    assert run(rules, SERIES)["__name__"] == "vm_domain_info_cpu_time_seconds_total"  # type: ignore[index]


# --- validation at load: exit 2 naming the rule ---------------------------------------------


@pytest.mark.parametrize(
    ("rules", "key", "message"),
    [
        ("[{action: rename}]", "relabel_configs[0].action", "'rename' is not one of"),
        ("[{target_label: a}, {source_labels: [a], regex: '(', target_label: b}]",
         "relabel_configs[1].regex", "not a usable regular expression"),
        ("[{source_labels: [a]}]", "relabel_configs[0].target_label", "required by action replace"),
        ("[{source_labels: [a], target_label: 1a}]", "relabel_configs[0].target_label",
         "not a label name"),
        ("[{source_labels: [a-b], target_label: c}]", "relabel_configs[0].source_labels",
         "'a-b' is not a valid label name"),
        ("[{action: labeldrop, source_labels: [a], regex: b}]",
         "relabel_configs[0].source_labels", "has no use with action labeldrop"),
        ("[{action: labelmap, regex: a, target_label: b}]", "relabel_configs[0].target_label",
         "has no use with action labelmap"),
        ("[{action: labeldrop, regex: a, replacement: b}]", "relabel_configs[0].replacement",
         "has no use with action labeldrop"),
        ("[{action: keep, regex: a}]", "relabel_configs[0].source_labels",
         "required by action keep"),
        ("[{action: drop, source_labels: [a], target_label: b}]",
         "relabel_configs[0].target_label", "has no use with action drop"),
        ("[{action: labelmap, regex: '(a)', replacement: '$1_id'}]",
         "relabel_configs[0].replacement", "$1_id refers to a group the regex lacks"),
        ("[{source_labels: [a], regex: '(a)', target_label: b, replacement: '$2'}]",
         "relabel_configs[0].replacement", "$2 refers to a group the regex lacks"),
        ("[{action: labelmap, regex: '(a)', replacement: 'x-$1'}]",
         "relabel_configs[0].replacement", "not a label name"),
        ("[{target_label: a, modulus: 3}]", "relabel_configs[0].modulus", "unknown field"),
        ("[{target_label: a, regex: [x]}]", "relabel_configs[0].regex", "expected a string"),
        ("[a]", "relabel_configs[0]", "expected a map"),
        ("{target_label: a}", "relabel_configs", "expected a list of rules"),
    ],
)  # fmt: skip
def test_a_bad_rule_is_a_config_error_naming_it(rules: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_mapping(yaml.safe_load(f"relabel_configs: {rules}"), env={}, hostname="h")
    assert e.value.key == key
    assert str(e.value).startswith(f"{key}: ")
    assert message in str(e.value)


def test_the_command_line_exits_2_naming_the_rule(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("relabel_configs:\n  - {action: labelmap, regex: 'a'}\n"
                    "  - {source_labels: [a], regex: '[', target_label: b}\n")  # fmt: skip
    assert cli.main(["-c", str(path), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("libvirt-pusher: config error: relabel_configs[1].regex: '[' is not")


def test_regexes_are_compiled_once_at_load() -> None:
    cfg = from_mapping(yaml.safe_load("relabel_configs: [{action: labeldrop, regex: 'a.*'}]"),
                       env={}, hostname="h")  # fmt: skip
    assert isinstance(cfg.relabel_configs[0].regex, re.Pattern)
    assert cfg.relabel_configs[0].regex.pattern == "(?:a.*)"


def test_the_example_config_documents_the_cloudkitty_rules() -> None:
    # The commented example under relabel_configs in config.example.yaml, taken as written.
    text = REPO_EXAMPLE.read_text(encoding="utf-8")
    block = text[text.index("# CloudKitty") : text.index("relabel_configs: []")]
    example = "\n".join(line[4:] for line in block.splitlines() if line.startswith("#   "))
    cfg = from_mapping(yaml.safe_load(example), env={}, hostname="h")
    assert cfg.nova.series_labels[-2] == "user_uuid"
    labels = {**SERIES, "domain": "instance-1"}
    assert relabel(cfg.relabel_configs, labels) == {
        "__name__": SERIES["__name__"], "uuid": "u1", "id": "u1", "host": "cn1",
        "domain": "instance-1", "project_id": "p-1", "user_id": "us-1",
    }  # fmt: skip


# --- label limits on what the rules make ----------------------------------------------------


def test_limits_apply_to_relabeled_labels_added_ones_go_first() -> None:
    limits = LabelLimits(max_names=4, max_value_bytes=3)
    labels = {"a": "1", "b": "2", "z_new": "long value", "y_new": "v"}
    assert fit_limits(labels, ["__name__", "a", "b"], limits) == (
        ("a", "1"), ("b", "2"), ("y_new", "v"),
    )  # fmt: skip
    assert (limits.dropped, limits.truncated) == (1, 0)
    limits = LabelLimits(max_names=30, max_value_bytes=4)
    assert fit_limits({"a": "12345"}, ["a"], limits) == (("a", "1234"),)
    assert limits.truncated == 1


# --- the stage on every series of a cycle ----------------------------------------------------

INFO = DomainInfo(nova=NovaInstance(name="web-1", project_uuid="p-1", user_uuid="us-1"))


def planner(rules: str, labels: str = "[project_uuid, user_uuid]") -> Planner:
    tree = yaml.safe_load(f"nova: {{series_labels: {labels}}}\nrelabel_configs: {rules}")
    return Planner.from_config(from_mapping(tree, env={}, hostname="cn1"))


def snap(*domains: DomainStats, ts: int = 1000) -> Snapshot:
    return Snapshot(ts, list(domains), 0.0, 0)


def d(uuid: str, st: dict[str, object] | None = None, info: DomainInfo = INFO) -> DomainStats:
    return domain(uuid, st or stats(), info)


def all_series(cycle: Cycle) -> list[dict[str, str]]:
    return [dict(series_labels(k)) for k, _ in cycle.all_samples()]


MAP = (
    "[{action: labelmap, regex: '(project|user)_uuid', replacement: '${1}_id'},"
    " {action: labeldrop, regex: '(project|user)_uuid|host'}]"
)


def test_without_rules_there_is_no_stage() -> None:
    p = planner("[]")
    assert p.relabeler is None
    cycle = p.cycle(snap(d("u1")), frozenset(), 0)
    assert any("project_uuid" in s for s in all_series(cycle))


def test_every_series_is_relabeled_external_and_own_ones_too() -> None:
    p = planner(MAP)
    cycle = p.cycle(snap(d("u1")), frozenset(), 0)
    p.add_own(cycle, [(("pusher_cycles_total", (), p.external), 1.0)])
    series = all_series(cycle)
    assert len(series) >= 8
    for s in series:
        assert "host" not in s and "project_uuid" not in s and "user_uuid" not in s, s
    domain = [s for s in series if s["__name__"].startswith("libvirt_domain_")]
    assert domain and all(s["project_id"] == "p-1" and s["user_id"] == "us-1" for s in domain)
    assert {"__name__": "pusher_cycles_total"} in series
    assert {"__name__": "libvirt_up"} in series


def test_a_domain_plan_is_relabeled_once_and_reused() -> None:
    p = planner(MAP)
    first = p.cycle(snap(d("u1")), frozenset(), 0)
    again = p.cycle(snap(d("u1"), ts=2000), frozenset(), 0)
    assert first.plans[0][0] is again.plans[0][0]
    assert first.plans[0][0] is not p.tracker.domains["u1"].plan  # the relabeled one is sent


def test_dropped_series_are_counted_by_reason_every_cycle() -> None:
    p = planner(
        "[{action: drop, source_labels: [__name__], regex: 'libvirt_domain_block_.*|libvirt_up'}]"
    )
    assert p.relabeler is not None
    for ts in (1000, 2000):
        cycle = p.cycle(snap(d("u1"), ts=ts), frozenset(), 0)
        names = {s["__name__"] for s in all_series(cycle)}
        assert not any(n.startswith("libvirt_domain_block_") for n in names)
        assert "libvirt_up" not in names and "libvirt_domain_state_code" in names
        values = {k[0]: v for k, v in cycle.all_samples()}  # the values still line up
        assert values["libvirt_domain_state_code"] == 1.0
        assert values["libvirt_domain_info_cpu_time_seconds_total"] == 5.0
    # each cycle: the disk's read bytes series and libvirt_up
    assert p.relabeler.dropped == {"rule": 4, "invalid_name": 0, "duplicate": 0}
    readings = {own[0][1]: v for _, own, v in p.relabeler.readings()}
    assert readings == {"rule": 4.0, "invalid_name": 0.0, "duplicate": 0.0}


def test_a_series_left_without_a_metric_name_is_dropped_and_counted() -> None:
    p = planner("[{action: labeldrop, regex: __name__}]")
    cycle = p.cycle(snap(d("u1")), frozenset(), 0)
    assert cycle.count() == 0
    assert p.relabeler is not None and p.relabeler.dropped["invalid_name"] > 5


def test_series_relabeled_into_the_same_labels_are_sent_once_and_counted() -> None:
    # Without domain and uuid, two guests of the same project and user are one series each.
    p = planner("[{action: labeldrop, regex: 'domain|uuid'}]")
    cycle = p.cycle(snap(d("u1"), d("u2")), frozenset(), 0)
    keys = [k for k, _ in cycle.all_samples()]
    assert len(keys) == len(set(keys))
    per_domain = len(cycle.plans[0][0].series)
    assert len(cycle.plans[1][0].series) == 0
    assert p.relabeler is not None
    # u2's plan series, and its Nova info series
    assert p.relabeler.dropped["duplicate"] == per_domain + 1
    # and the encoder writes each series once
    body = Encoder(10_000).encode(cycle.samples, 1000, b"", cycle.plans)[0].body
    wr = WriteRequest.FromString(decompress(body))
    written = [tuple((lb.name, lb.value) for lb in ts.labels) for ts in wr.timeseries]
    assert len(written) == len(set(written)) == len(keys)


def test_stale_markers_carry_the_relabeled_labels_and_skip_live_ones() -> None:
    p = planner(MAP)
    p.cycle(snap(d("u1", stats(disks=2)), d("u2")), frozenset(), 0)
    cycle = p.cycle(snap(d("u1", stats(disks=1)), ts=2000), frozenset(), 0)  # vdb, u2 gone
    stale = [dict(series_labels(k)) for k, v in cycle.samples if is_stale(v)]
    assert {s["uuid"] for s in stale} == {"u1", "u2"}
    assert all("project_id" in s and "project_uuid" not in s for s in stale)
    assert [s for s in stale if s["uuid"] == "u1"] == [
        {"__name__": "libvirt_domain_block_stats_read_bytes_total", "domain": "instance-u1",
         "project_id": "p-1", "target_device": "vdb", "user_id": "us-1", "uuid": "u1"},
    ]  # fmt: skip
    assert cycle.ended == {k for k, v in cycle.samples if is_stale(v)}
    # A guest whose series collide with a live guest's ends without a marker for them.
    q = planner("[{action: labeldrop, regex: 'domain|uuid'}]")
    q.cycle(snap(d("u1"), d("u2")), frozenset(), 0)
    gone = q.cycle(snap(d("u1"), ts=2000), frozenset(), 0)
    assert not [k for k, v in gone.samples if is_stale(v)]


def test_a_dropped_series_gets_no_stale_marker() -> None:
    p = planner("[{action: drop, source_labels: [uuid], regex: u2}]")
    p.cycle(snap(d("u1"), d("u2")), frozenset(), 0)
    cycle = p.cycle(snap(d("u1"), ts=2000), frozenset(), 0)
    assert not [k for k, v in cycle.samples if is_stale(v)]


def test_relabeled_labels_are_kept_within_the_limits() -> None:
    p = planner("[{target_label: note, replacement: '" + "x" * 40 + "'}]")
    p.limits.max_value_bytes = 10
    p.relabeler = Relabeler(p.relabeler.rules, p.limits)  # type: ignore[union-attr]
    cycle = p.cycle(snap(d("u1")), frozenset(), 0)
    assert all(s["note"] == "x" * 10 for s in all_series(cycle))


# --- end to end: --dry-run on the demo node (libvirt's test driver, the Nova guests of
# pusher/demo/testnode.xml) with the CloudKitty example of config.example.yaml -------------

EXPOSITION_LINE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")


def parse_exposition(text: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = EXPOSITION_LINE.match(line)
        assert m is not None, line
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        out.append((m.group(1), labels))
    return out


def test_dry_run_sends_project_id_and_user_id_from_the_nova_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = REPO_EXAMPLE.read_text(encoding="utf-8")
    block = text[text.index("# CloudKitty") : text.index("relabel_configs: []")]
    example = "\n".join(line[4:] for line in block.splitlines() if line.startswith("#   "))
    node = REPO_EXAMPLE.parent / "pusher" / "demo" / "testnode.xml"
    path = tmp_path / "config.yaml"
    path.write_text(f"libvirt: {{uri: 'test://{node}'}}\n{example}\n", encoding="utf-8")
    assert cli.main(["-c", str(path), "--dry-run"]) == 0
    series = parse_exposition(capsys.readouterr().out)
    domain = [(n, s) for n, s in series if n.startswith("libvirt_domain_")]
    assert {s["domain"] for _, s in domain} == {f"instance-0000000{i}" for i in (1, 2, 3)}
    for name, s in series:
        assert "project_uuid" not in s and "user_uuid" not in s, (name, s)
    for _, s in domain:
        assert s["id"] == s["uuid"]
    bob = {(s["project_id"], s["user_id"]) for _, s in domain if s["domain"] == "instance-00000003"}
    assert bob == {("1a2b3c4d5e6f47a8b9c0d1e2f3a4b5c6", "0f1e2d3c4b5a49687766554433221100")}
    info = [s for n, s in domain if n == "libvirt_domain_openstack_info"]
    assert len(info) == 3 and all(s["user_name"] for s in info)
    counted = {s["reason"] for n, s in series if n == "pusher_relabel_dropped_samples_total"}
    assert counted == {"rule", "invalid_name", "duplicate"}


def test_named_groups_in_braces_are_written_with_a_double_dollar_in_the_config() -> None:
    # The config expands ${VAR} from the environment: $${name} is the group.
    doc = """relabel_configs: [{source_labels: [host], regex: 'c(?P<n>.*)', target_label: t,
                                replacement: '${PREFIX}-$${n}'}]"""
    cfg = from_mapping(yaml.safe_load(doc), env={"PREFIX": "node"}, hostname="h")
    assert relabel(cfg.relabel_configs, {"host": "cn1"}) == {"host": "cn1", "t": "node-n1"}


def test_a_tenant_limit_learned_later_applies_to_relabeled_labels() -> None:
    p = planner("[{target_label: note, replacement: '" + "x" * 40 + "'}]")
    first = p.cycle(snap(d("u1")), frozenset(), 0)
    assert all(s["note"] == "x" * 40 for s in all_series(first))
    assert p.adopt_limit("label-value-too-long", 20)
    later = p.cycle(snap(d("u1"), ts=2000), frozenset(), 0)
    assert all(s["note"] == "x" * 20 for s in all_series(later))
