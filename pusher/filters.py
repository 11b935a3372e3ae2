"""Which domains the agent exports: `filter.projects.*` and `filter.domains.*` (pure).

A domain is exported when it passes both include lists (an empty list includes every domain)
and matches neither exclude list; an exclude wins over an include. Projects match a domain's
Nova project uuid or name exactly; domain patterns are regular expressions that must match
the whole libvirt domain name. A domain without Nova metadata, or whose metadata names no
project, has no project: the project lists neither include nor exclude it, only the
domain-name lists decide about it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pusher.config import FilterConfig
from pusher.nova import NovaInstance

__all__ = ["DomainFilter"]


def _patterns(texts: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(t) for t in texts)


@dataclass(frozen=True)
class DomainFilter:
    projects_include: frozenset[str] = frozenset()
    projects_exclude: frozenset[str] = frozenset()
    domains_include: tuple[re.Pattern[str], ...] = ()
    domains_exclude: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def from_config(cls, cfg: FilterConfig) -> DomainFilter:
        """The filter of the `filter` section."""
        return cls.of(
            cfg.projects.include, cfg.projects.exclude, cfg.domains.include, cfg.domains.exclude
        )

    @classmethod
    def of(
        cls,
        projects_include: Iterable[str] = (),
        projects_exclude: Iterable[str] = (),
        domains_include: Iterable[str] = (),
        domains_exclude: Iterable[str] = (),
    ) -> DomainFilter:
        return cls(
            frozenset(projects_include),
            frozenset(projects_exclude),
            _patterns(domains_include),
            _patterns(domains_exclude),
        )

    def __bool__(self) -> bool:
        """Whether the filter can leave out any domain at all."""
        return bool(
            self.projects_include
            or self.projects_exclude
            or self.domains_include
            or self.domains_exclude
        )

    def admits(self, name: str, nova: NovaInstance | None) -> bool:
        """Whether the domain named `name` (libvirt name) with this Nova data is exported."""
        if any(p.fullmatch(name) for p in self.domains_exclude):
            return False
        if self.domains_include and not any(p.fullmatch(name) for p in self.domains_include):
            return False
        project = {nova.project_uuid, nova.project_name} - {""} if nova is not None else set()
        if not project:
            return True  # no project to match: only the domain-name lists apply
        if project & self.projects_exclude:
            return False
        return not self.projects_include or bool(project & self.projects_include)
