"""Plugins found by short name through entry points (``bmd.drivers.power``, ``bmd.filters``, ...).

A third party adds a driver or filter by installing a package that declares the entry point; an unknown
name fails at start-up listing the names that are known.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from bmd.errors import ConfigError

POWER_GROUP = "bmd.drivers.power"
VIF_GROUP = "bmd.drivers.vif"
DEPLOY_GROUP = "bmd.drivers.deploy"
FILTER_GROUP = "bmd.filters"
WEIGHER_GROUP = "bmd.weighers"


def _entries(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


@cache
def _cached_entries(group: str) -> dict[str, EntryPoint]:
    return _entries(group)


def known_names(group: str) -> list[str]:
    return sorted(_cached_entries(group))


def load_plugin(group: str, name: str, *, what: str | None = None) -> Any:
    """The object an entry point names; ConfigError listing the known names when there is none."""
    entries = _cached_entries(group)
    if name not in entries:
        entries = _entries(group)  # a package may have been installed since the cache was filled
        _cached_entries.cache_clear()
    if name not in entries:
        known = ", ".join(sorted(entries)) or "(none installed)"
        raise ConfigError(f"{what or group}: unknown name {name!r}; known: {known}")
    return entries[name].load()
