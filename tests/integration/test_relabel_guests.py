"""`relabel_configs` on real guests: the CloudKitty rules of config.example.yaml through
`--dry-run`, and through `--once` into a real remote-write receiver (Debian's Prometheus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from agent import assert_promtool_accepts, run_once, write_config
from guests import Guest
from receiver import Receiver

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def cloudkitty_rules() -> dict[str, Any]:
    """The commented CloudKitty example of config.example.yaml, as written there."""
    text = EXAMPLE.read_text(encoding="utf-8")
    block = text[text.index("# CloudKitty") : text.index("relabel_configs: []")]
    doc = "\n".join(line[4:] for line in block.splitlines() if line.startswith("#   "))
    loaded: dict[str, Any] = yaml.safe_load(doc)
    return loaded


def _config(tmp_path: Path, url: str, guests: list[Guest], *extra: dict[str, Any]) -> Path:
    example = cloudkitty_rules()
    rules = example["relabel_configs"] + list(extra)
    only_ours = {"domains": {"include": [g["name"] for g in guests]}}
    return write_config(tmp_path, url, nova=example["nova"], relabel_configs=rules,
                        filter=only_ours)  # fmt: skip


def _labels(line: str) -> dict[str, str]:
    inner = line[line.index("{") + 1 : line.rindex("}")]
    return dict(part.split("=", 1) for part in inner.replace('"', "").split(","))


def test_dry_run_on_real_guests_gives_cloudkitty_labels(
    guests: list[Guest], tmp_path: Path
) -> None:
    result = run_once(_config(tmp_path, "http://127.0.0.1:9/unused", guests), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [x for x in result.stdout.splitlines() if x and not x.startswith("#")]
    assert "project_uuid" not in result.stdout and "user_uuid" not in result.stdout
    for g in guests:
        mine = [_labels(x) for x in lines if f'domain="{g["name"]}"' in x]
        assert len(mine) > 30, g["name"]
        for labels in mine:
            assert labels["project_id"] == g["project_uuid"], labels
            assert labels["user_id"] == g["user_uuid"], labels
            assert labels["id"] == labels["uuid"] == g["uuid"], labels
    assert_promtool_accepts(result.stdout)


def test_relabeled_series_reach_the_receiver_and_drops_are_counted(
    guests: list[Guest], fresh_receiver: Receiver, tmp_path: Path
) -> None:
    drop_vcpu = {"action": "drop", "source_labels": ["__name__"],
                 "regex": "libvirt_domain_vcpu_.*"}  # fmt: skip
    cfg = _config(tmp_path, fresh_receiver.write_url, guests, drop_vcpu)
    result = run_once(cfg, "--once")
    assert result.returncode == 0, result.stderr
    g = guests[0]
    series = fresh_receiver.query(f'{{project_id="{g["project_uuid"]}", domain="{g["name"]}"}}')
    names = {s["metric"]["__name__"] for s in series}
    assert "libvirt_domain_info_cpu_time_seconds_total" in names
    assert not {n for n in names if n.startswith("libvirt_domain_vcpu_")}
    assert all(s["metric"]["user_id"] == g["user_uuid"] for s in series)
    assert not fresh_receiver.query('{project_uuid!=""}')
    assert not fresh_receiver.query('{__name__=~"libvirt_domain_vcpu_.*"}')
    (dropped,) = fresh_receiver.query('pusher_relabel_dropped_samples_total{reason="rule"}')
    # at least each guest's vCPU time series
    assert float(dropped["value"][1]) >= len(guests)
