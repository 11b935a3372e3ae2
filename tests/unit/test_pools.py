"""Storage pools (`pusher.pools`): a pool's type off its XML, its figures as series."""

from __future__ import annotations

import pytest

from pusher.catalog import LabelLimits, by_name
from pusher.config import ConfigError, from_mapping
from pusher.pools import PoolStats, pool_samples, pool_type

EXT = (("host", "h1"),)


def test_the_type_comes_from_the_pool_xml() -> None:
    xml = "<pool type='logical'><name>vg0</name><uuid>x</uuid></pool>"
    assert pool_type(xml) == "logical"
    assert pool_type("<pool><name>x</name></pool>") == ""
    assert pool_type("not xml") == ""


def test_a_running_pool_has_every_series_with_its_name_uuid_and_type() -> None:
    pool = PoolStats("images", "u-1", "dir", 2, 10 << 30, 4 << 30, 6 << 30, 3)
    got = {name: (own, value) for (name, own, shared), value in pool_samples((pool,), EXT)}
    own = (("pool", "images"), ("pool_type", "dir"), ("pool_uuid", "u-1"))
    assert got == {
        "libvirt_storage_pool_state_code": (own, 2.0),
        "libvirt_storage_pool_capacity_bytes": (own, float(10 << 30)),
        "libvirt_storage_pool_allocation_bytes": (own, float(4 << 30)),
        "libvirt_storage_pool_available_bytes": (own, float(6 << 30)),
        "libvirt_storage_pool_volumes": (own, 3.0),
    }
    for name in got:  # each is declared, host-scoped, with the labels it gets
        assert by_name(name).scope == "host"
        assert by_name(name).labels == ("pool", "pool_uuid", "pool_type")
    assert all(shared == EXT for (_, _, shared), _ in pool_samples((pool,), EXT))


def test_an_inactive_pool_has_its_state_only() -> None:
    pool = PoolStats("spare", "u-2", "fs", 0)
    samples = pool_samples((pool,), EXT)
    assert [(key[0], value) for key, value in samples] == [("libvirt_storage_pool_state_code", 0.0)]


def test_no_pools_read_no_series() -> None:
    assert pool_samples(None, EXT) == []
    assert pool_samples((), EXT) == []


def test_a_long_pool_name_is_cut_to_the_label_limit() -> None:
    limits = LabelLimits(max_value_bytes=8)
    pool = PoolStats("a" * 20, "u-3", "dir", 2, 1, 1, 0, 0)
    (_, own, _), _ = pool_samples((pool,), EXT, limits)[0]
    assert dict(own)["pool"] == "a" * 8
    assert limits.truncated == 1


def test_storage_pools_are_off_by_default_and_the_key_is_checked() -> None:
    # Off: the defaults must not cost libvirtd more per cycle than before (issue 17).
    assert from_mapping(None, hostname="h").collect.storage_pools is False
    on = from_mapping({"collect": {"storage_pools": True}}, hostname="h")
    assert on.collect.storage_pools is True
    with pytest.raises(ConfigError) as e:
        from_mapping({"collect": {"storage_pools": "sometimes"}}, hostname="h")
    assert e.value.key == "collect.storage_pools"
