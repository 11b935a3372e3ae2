"""pusher.filters: which domains are exported (filter.projects.*, filter.domains.*)."""

from __future__ import annotations

import pytest

from pusher.config import from_mapping
from pusher.filters import DomainFilter
from pusher.nova import NovaInstance

DEMO_UUID = "9f1c4e8a-5b2d-4c3e-8f7a-6b5c4d3e2f10"
DEMO = NovaInstance(name="web-1", project_name="demo", project_uuid=DEMO_UUID)
OPS = NovaInstance(name="db-1", project_name="ops", project_uuid="0a1b2c3d-0000-4000-8000-1")
NAMELESS = NovaInstance(name="x", project_uuid="77777777-0000-4000-8000-000000000000")


def test_an_empty_filter_admits_everything_and_is_false() -> None:
    f = DomainFilter()
    assert not f
    assert f.admits("instance-00000001", DEMO)
    assert f.admits("anything", None)


@pytest.mark.parametrize("project", ["demo", DEMO_UUID])
def test_project_include_matches_the_uuid_or_the_name(project: str) -> None:
    f = DomainFilter.of(projects_include=[project])
    assert f
    assert f.admits("instance-1", DEMO)
    assert not f.admits("instance-2", OPS)


def test_project_match_is_exact() -> None:
    f = DomainFilter.of(projects_include=["dem", DEMO_UUID.upper()])
    assert not f.admits("instance-1", DEMO)


def test_project_exclude_by_name_or_uuid() -> None:
    assert not DomainFilter.of(projects_exclude=["demo"]).admits("i-1", DEMO)
    assert not DomainFilter.of(projects_exclude=[DEMO_UUID]).admits("i-1", DEMO)
    assert DomainFilter.of(projects_exclude=["demo"]).admits("i-2", OPS)


def test_exclude_wins_over_include() -> None:
    f = DomainFilter.of(projects_include=["demo"], projects_exclude=[DEMO_UUID])
    assert not f.admits("i-1", DEMO)
    f = DomainFilter.of(domains_include=["instance-.*"], domains_exclude=["instance-0+1"])
    assert not f.admits("instance-0001", DEMO)
    assert f.admits("instance-0002", DEMO)
    f = DomainFilter.of(projects_include=["demo"], domains_exclude=["instance-0+1"])
    assert not f.admits("instance-0001", DEMO)


def test_domain_patterns_match_the_whole_name() -> None:
    f = DomainFilter.of(domains_include=["instance-[0-9a-f]{8}"])
    assert f.admits("instance-0000a001", DEMO)
    assert not f.admits("instance-0000a001-rescue", DEMO)
    assert not f.admits("my-instance-0000a001", DEMO)
    f = DomainFilter.of(domains_exclude=["test"])
    assert f.admits("test-vm", None)  # not a full match
    assert not f.admits("test", None)


def test_both_include_lists_must_admit() -> None:
    f = DomainFilter.of(projects_include=["demo"], domains_include=["instance-.*"])
    assert f.admits("instance-1", DEMO)
    assert not f.admits("instance-2", OPS)
    assert not f.admits("guest-1", DEMO)


def test_a_domain_without_nova_metadata_is_judged_by_its_name_only() -> None:
    f = DomainFilter.of(projects_include=["demo"])
    assert f.admits("plain-vm", None)  # the project lists do not apply to it
    assert DomainFilter.of(projects_exclude=["demo"]).admits("plain-vm", None)
    f = DomainFilter.of(projects_include=["demo"], domains_include=["instance-.*"])
    assert not f.admits("plain-vm", None)
    assert not DomainFilter.of(domains_exclude=["plain-.*"]).admits("plain-vm", None)


def test_nova_metadata_naming_no_project_is_judged_by_the_name_only() -> None:
    projectless = NovaInstance(name="x")
    assert DomainFilter.of(projects_include=["demo"]).admits("i", projectless)
    assert DomainFilter.of(projects_exclude=["demo"]).admits("i", projectless)
    assert not DomainFilter.of(projects_include=["demo"], domains_exclude=["i"]).admits(
        "i", projectless
    )


def test_a_project_with_only_a_uuid_matches_by_uuid() -> None:
    assert DomainFilter.of(projects_include=[NAMELESS.project_uuid]).admits("i", NAMELESS)
    # An empty project name never matches anything.
    assert not DomainFilter.of(projects_include=["demo"]).admits("i", NAMELESS)


def test_from_config() -> None:
    cfg = from_mapping(
        {
            "filter": {
                "projects": {"include": ["demo"], "exclude": ["ops"]},
                "domains": {"include": ["instance-.*"], "exclude": [".*-rescue"]},
            }
        },
        env={},
        hostname="h",
    )
    f = DomainFilter.from_config(cfg.filter)
    assert f.projects_include == {"demo"}
    assert f.projects_exclude == {"ops"}
    assert f.admits("instance-1", DEMO)
    assert not f.admits("instance-1-rescue", DEMO)
    assert not f.admits("instance-2", OPS)
    assert not DomainFilter.from_config(from_mapping(None, env={}, hostname="h").filter)
