"""The host's capacity as libvirt sees it, read once per cycle from the read-only connection.

Three light calls, none touching a guest: the node's CPU time by mode (`getCPUStats`), its
memory (`getMemoryStats`) and the free huge pages of each NUMA node and page size
(`getFreePages`). The page sizes and NUMA nodes to ask about come from the capabilities XML,
read once per connection (`HostLayout`). Measured on this project's test host: about 0.25 ms of
libvirtd CPU per call, 0.7-0.8 ms per cycle for the three (`benchmarks/host_cost.py`). A call that
fails leaves its series out for the cycle; it never fails the cycle.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import libvirt

__all__ = ["HostLayout", "HostStats", "parse_layout", "read_host_stats"]

log = logging.getLogger(__name__)

# VIR_NODE_CPU_STATS_ALL_CPUS / VIR_NODE_MEMORY_STATS_ALL_CELLS: the whole node.
ALL = -1
CPU_MODES = ("kernel", "user", "idle", "iowait")  # nanoseconds, as libvirt names them
MEMORY_KINDS = ("total", "free", "buffers", "cached")  # KiB


@dataclass(frozen=True)
class HostLayout:
    """What the capabilities say about the host's memory: the huge page sizes (KiB) and the
    number of NUMA nodes."""

    huge_page_kib: tuple[int, ...] = ()
    cells: int = 0


@dataclass(frozen=True)
class HostStats:
    cpu_ns: tuple[tuple[str, int], ...] = ()  # (mode, nanoseconds since boot)
    memory_kib: tuple[tuple[str, int], ...] = ()  # (kind, KiB)
    free_huge_pages: tuple[tuple[int, int, int], ...] = ()  # (NUMA node, page KiB, pages)


def _int(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def parse_layout(capabilities: str) -> HostLayout:
    """The host's huge page sizes and NUMA nodes from libvirt's capabilities XML: every page
    size the host CPU offers but the smallest (the base page), and the topology's cells.
    Never raises: what cannot be read is left out."""
    try:
        root = ET.fromstring(capabilities)
    except (ET.ParseError, ValueError, RecursionError):
        return HostLayout()
    sizes = sorted({s for p in root.iterfind("host/cpu/pages") if (s := _int(p.get("size")))})
    cells = len(root.findall("host/topology/cells/cell"))
    return HostLayout(tuple(sizes[1:]), cells)


def read_layout(conn: Any) -> HostLayout:
    try:
        return parse_layout(conn.getCapabilities())
    except libvirt.libvirtError as e:
        log.info("no host capabilities from libvirt (no huge page series): %s", e)
        return HostLayout()


def read_host_stats(conn: Any, layout: HostLayout) -> HostStats:
    """This cycle's host figures; a call libvirt refuses leaves its part empty."""
    cpu: dict[str, int] = _call(conn.getCPUStats, ALL, 0)
    memory: dict[str, int] = _call(conn.getMemoryStats, ALL, 0)
    pages: dict[int, dict[int, int]] = {}
    if layout.huge_page_kib and layout.cells:
        pages = _call(conn.getFreePages, list(layout.huge_page_kib), 0, layout.cells)
    return HostStats(
        tuple((m, int(cpu[m])) for m in CPU_MODES if isinstance(cpu.get(m), int)),
        tuple((k, int(memory[k])) for k in MEMORY_KINDS if isinstance(memory.get(k), int)),
        tuple(
            (int(cell), int(size), int(count))
            for cell, by_size in sorted(pages.items())
            for size, count in sorted(by_size.items())
        ),
    )


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args) or {}
    except libvirt.libvirtError as e:
        log.debug("host stats call failed: %s", e)
        return {}
