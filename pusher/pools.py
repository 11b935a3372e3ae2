"""The host's storage pools as libvirt knows them, read once per cycle (`collect.storage_pools`).

Through the read-only connection: one `listAllStoragePools`, then per pool its `info()` and,
for an active pool, `numOfVolumes()`; a pool's type comes from its XML, read once per pool
(`StoragePools`). No refresh, which would need a read-write connection: the figures are
libvirtd's own, as of the pool's last refresh (its start, `virsh pool-refresh`, or a volume
created, resized or deleted through libvirt). A file written into a `dir` pool by something
else shows in the pool's figures after the next refresh only. A call that fails leaves that
pool's part out for the cycle; it never fails the cycle.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import libvirt

from pusher import catalog
from pusher.catalog import LabelLimits, LabelPairs, Sample

__all__ = ["PoolStats", "StoragePools", "pool_samples", "pool_type"]

log = logging.getLogger(__name__)

# virStoragePoolState: 0 inactive, 1 building, 2 running, 3 degraded, 4 inaccessible.
POOL_RUNNING = 2
POOL_DEGRADED = 3
# States whose capacity figures are current; an inactive pool reports zeros and an
# inaccessible one the figures of its last refresh.
SIZED_STATES = (POOL_RUNNING, POOL_DEGRADED)


@dataclass(frozen=True)
class PoolStats:
    name: str
    uuid: str
    type: str  # dir, fs, logical, netfs, rbd… ("" when its XML could not be read)
    state: int  # virStoragePoolState
    capacity: int | None = None  # bytes; None when the pool is not running or degraded
    allocation: int | None = None
    available: int | None = None
    volumes: int | None = None  # None when libvirt would not count them (an inactive pool)


def pool_type(xml: str) -> str:
    """The `type` attribute of a pool's XML; "" when it cannot be read."""
    try:
        return ET.fromstring(xml).get("type", "")
    except (ET.ParseError, ValueError, RecursionError):
        return ""


class StoragePools:
    """Reads the pools each cycle; keeps each pool's type (read off its XML) by UUID."""

    def __init__(self) -> None:
        self._types: dict[str, str] = {}

    def read(self, conn: Any) -> tuple[PoolStats, ...]:
        try:
            pools = conn.listAllStoragePools(0)
        except libvirt.libvirtError as e:
            log.debug("listAllStoragePools failed: %s", e)
            return ()
        out = [s for pool in pools if (s := self._one(pool)) is not None]
        seen = {s.uuid for s in out}
        self._types = {u: t for u, t in self._types.items() if u in seen}
        return tuple(sorted(out, key=lambda s: s.name))

    def _one(self, pool: Any) -> PoolStats | None:
        try:
            name, uuid = pool.name(), pool.UUIDString()
            state, capacity, allocation, available = pool.info()
        except libvirt.libvirtError as e:
            log.debug("storage pool info failed: %s", e)  # undefined since the list
            return None
        if uuid not in self._types:
            try:
                self._types[uuid] = pool_type(pool.XMLDesc(0))
            except libvirt.libvirtError as e:
                log.debug("storage pool %s: no XML: %s", name, e)
                return PoolStats(name, uuid, "", state)
        volumes = None
        if state != 0:
            try:
                volumes = int(pool.numOfVolumes())
            except libvirt.libvirtError as e:
                log.debug("storage pool %s: no volume count: %s", name, e)
        sized = state in SIZED_STATES
        return PoolStats(
            name, uuid, self._types[uuid], int(state),
            int(capacity) if sized else None,
            int(allocation) if sized else None,
            int(available) if sized else None,
            volumes,
        )  # fmt: skip


def pool_samples(
    pools: tuple[PoolStats, ...] | None, external: LabelPairs, limits: LabelLimits | None = None
) -> list[Sample]:
    """The pools' series (`collect.storage_pools`), each labelled with its pool's name,
    UUID and type."""
    out: list[Sample] = []
    for p in pools or ():
        own = catalog.label_pairs({"pool": p.name, "pool_uuid": p.uuid, "pool_type": p.type},
                                  limits)  # fmt: skip
        out.append((("libvirt_storage_pool_state_code", own, external), float(p.state)))
        for metric, value in (
            ("libvirt_storage_pool_capacity_bytes", p.capacity),
            ("libvirt_storage_pool_allocation_bytes", p.allocation),
            ("libvirt_storage_pool_available_bytes", p.available),
            ("libvirt_storage_pool_volumes", p.volumes),
        ):
            if value is not None:
                out.append(((metric, own, external), float(value)))
    return out
