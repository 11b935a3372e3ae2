"""Shared by the benchmarks: the recorded snapshot scaled to any number of guests."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from pusher.catalog import DomainPlan
from pusher.collect import DomainStats, Snapshot
from pusher.nova import parse_domain_xml
from pusher.series import DomainSeries, plan_snapshot

SNAPSHOT = Path(__file__).parent / "data" / "snapshot.json"
# The agent's default Nova series labels, and external labels of a typical node.
SERIES_LABELS = ("instance_name", "project_name", "project_uuid", "flavor")
EXTERNAL = (("cluster", "region1"), ("host", "compute-0017"))


def cycle_plans(
    snap: Snapshot, cache: dict[str, DomainSeries]
) -> list[tuple[DomainPlan, list[float]]]:
    """A cycle's (plan, values) per domain, as the agent builds them, reusing and then
    updating `cache` (uuid -> the domain's series) like the agent's own."""
    domains = plan_snapshot(snap, SERIES_LABELS, EXTERNAL, cache)
    cache.clear()
    cache.update(domains)
    stats = {d.uuid: d.stats for d in snap.domains}
    return [(ds.plan, ds.plan.values(stats[u])) for u, ds in domains.items()]


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


def moved(
    snap: Snapshot, i: int, cache: dict[str, DomainSeries]
) -> list[tuple[DomainPlan, list[float]]]:
    """The snapshot's (plan, values) with every integer stat `i` higher, as counters move
    from one cycle to the next (the values are the catalog's conversions of integers, as
    the agent's are)."""
    domains = [
        DomainStats(d.name, d.uuid, {k: v + i if isinstance(v, int) else v
                                     for k, v in d.stats.items()}, d.info)
        for d in snap.domains
    ]  # fmt: skip
    return cycle_plans(Snapshot(snap.ts_ms, domains, 0.0, 0), cache)
