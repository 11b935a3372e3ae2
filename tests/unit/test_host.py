"""The host's capacity (`pusher.host`): the capabilities XML read on literal strings, the
figures turned into series in base units."""

from __future__ import annotations

import pytest

from pusher.host import HostLayout, HostStats, parse_layout
from pusher.series import host_stats_samples

# Trimmed from a real `virsh capabilities`: two NUMA nodes, 4 KiB, 2 MiB and 1 GiB pages.
CAPABILITIES = """<capabilities><host><uuid>x</uuid>
  <cpu><arch>x86_64</arch><model>Skylake-Server-IBRS</model>
    <pages unit='KiB' size='4'/><pages unit='KiB' size='2048'/><pages unit='KiB' size='1048576'/>
  </cpu>
  <topology><cells num='2'>
    <cell id='0'><memory unit='KiB'>98304000</memory>
      <pages unit='KiB' size='4'>24000000</pages><pages unit='KiB' size='2048'>1024</pages>
    </cell>
    <cell id='1'><memory unit='KiB'>98304000</memory></cell>
  </cells></topology>
</host></capabilities>"""
EXT = (("host", "h1"),)


def test_the_layout_names_the_huge_page_sizes_and_numa_nodes() -> None:
    assert parse_layout(CAPABILITIES) == HostLayout((2048, 1048576), 2)


@pytest.mark.parametrize(
    "xml",
    ["", "not xml", "<capabilities/>", "<a>" * 5000,
     CAPABILITIES.replace("size='2048'", "size='-2048'").replace("size='1048576'", "size='x'")],
)  # fmt: skip
def test_an_odd_capabilities_document_gives_no_huge_pages(xml: str) -> None:
    layout = parse_layout(xml)
    assert layout.huge_page_kib == ()


def test_host_figures_become_series_in_base_units() -> None:
    stats = HostStats(
        cpu_ns=(("kernel", 636_240_000_000), ("idle", 2_109_180_000_000)),
        memory_kib=(("total", 24_683_664), ("cached", 2_072_452)),
        free_huge_pages=((0, 2048, 512), (1, 1048576, 0)),
    )
    got = {(name, own): value for (name, own, shared), value in host_stats_samples(stats, EXT)}
    assert got == {
        ("libvirt_node_cpu_seconds_total", (("mode", "kernel"),)): pytest.approx(636.24),
        ("libvirt_node_cpu_seconds_total", (("mode", "idle"),)): pytest.approx(2109.18),
        ("libvirt_node_memory_total_bytes", ()): 24_683_664 * 1024.0,
        ("libvirt_node_memory_cached_bytes", ()): 2_072_452 * 1024.0,
        (
            "libvirt_node_hugepages_free",
            (("numa_node", "0"), ("page_size_bytes", "2097152")),
        ): 512.0,
        (
            "libvirt_node_hugepages_free",
            (("numa_node", "1"), ("page_size_bytes", "1073741824")),
        ): 0.0,
    }
    assert host_stats_samples(None, EXT) == []


def test_host_stats_are_off_by_default_and_can_be_switched_on() -> None:
    from pusher.config import ConfigError, from_mapping

    # Off: the defaults must not cost libvirtd more per cycle than before (issue 17).
    assert from_mapping(None, hostname="h").collect.host_stats is False
    assert from_mapping({"collect": {"host_stats": True}}, hostname="h").collect.host_stats is True
    with pytest.raises(ConfigError) as e:
        from_mapping({"collect": {"host_stats": "yes"}}, hostname="h")
    assert e.value.key == "collect.host_stats"
