"""Shared by the benchmarks: the recorded snapshot scaled to any number of guests."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from pusher.collect import DomainStats, Snapshot
from pusher.nova import parse_domain_xml

SNAPSHOT = Path(__file__).parent / "data" / "snapshot.json"


def recorded() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(SNAPSHOT.read_text())
    return data


def scaled_domains(count: int) -> list[DomainStats]:
    """`count` guests cloned from the recorded ones, each with its own name, UUID and Nova
    instance name, so every series is distinct (as on a real node)."""
    base = recorded()
    out = []
    for i in range(count):
        src = base[i % len(base)]
        new_uuid = str(uuid.uuid5(uuid.NAMESPACE_OID, f"guest-{i}"))
        name = f"instance-{i + 1:08x}"
        xml = src["xml"].replace(src["uuid"], new_uuid).replace(src["name"], name)
        xml = re.sub(r"<nova:name>[^<]*</nova:name>", f"<nova:name>vm-{i}</nova:name>", xml)
        stats = dict(src["stats"])
        for key, value in stats.items():
            if key.endswith(".path") and isinstance(value, str):
                stats[key] = value.replace(src["name"], name)
        out.append(DomainStats(name, new_uuid, stats, parse_domain_xml(xml)))
    return out


def snapshot(count: int, ts_ms: int) -> Snapshot:
    return Snapshot(ts_ms, scaled_domains(count), 0.0, 0)
