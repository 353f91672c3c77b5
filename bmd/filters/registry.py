"""Filters and weighers by short name, through entry points (groups ``bmd.filters``, ``bmd.weighers``).

A third party adds a filter by installing a package that declares, e.g.::

    [project.entry-points."bmd.filters"]
    RackPowerFilter = "acme_bmd.filters:RackPowerFilter"

bmd's own are declared the same way in its ``pyproject.toml``, and also listed here so that a source
checkout that is not pip-installed finds them (a test keeps both lists equal). Names are loaded once, at
start-up: an unknown name, a name two packages claim differently, or constructor options the class does not
take fail with ``ConfigError`` naming the known names or the offending key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from bmd.errors import ConfigError
from bmd.filters.base import BaseHostFilter
from bmd.scheduler.weighers import BaseWeigher

__all__ = [
    "BUILTIN_FILTERS",
    "BUILTIN_WEIGHERS",
    "DEFAULT_FILTERS",
    "DEFAULT_WEIGHERS",
    "FILTERS_GROUP",
    "WEIGHERS_GROUP",
    "available_filters",
    "available_weighers",
    "build_filters",
    "build_weighers",
    "load_filter",
    "load_weigher",
]

FILTERS_GROUP = "bmd.filters"
WEIGHERS_GROUP = "bmd.weighers"

BUILTIN_FILTERS: Mapping[str, str] = {
    "DeployReadyFilter": "bmd.filters.deploy_ready:DeployReadyFilter",
    "ComputeFilter": "bmd.filters.compute:ComputeFilter",
    "ComputeCapabilitiesFilter": "bmd.filters.compute_capabilities:ComputeCapabilitiesFilter",
    "ImagePropertiesFilter": "bmd.filters.image_props:ImagePropertiesFilter",
    "RamFilter": "bmd.filters.resources:RamFilter",
    "DiskFilter": "bmd.filters.resources:DiskFilter",
    "CoreFilter": "bmd.filters.resources:CoreFilter",
    "ExactRamFilter": "bmd.filters.resources:ExactRamFilter",
    "ExactDiskFilter": "bmd.filters.resources:ExactDiskFilter",
    "ExactCoreFilter": "bmd.filters.resources:ExactCoreFilter",
    "SameCapabilityFilter": "bmd.filters.grouping:SameCapabilityFilter",
    "DifferentCapabilityFilter": "bmd.filters.grouping:DifferentCapabilityFilter",
}
BUILTIN_WEIGHERS: Mapping[str, str] = {
    "RAMWeigher": "bmd.scheduler.weighers:RAMWeigher",
    "LeastWasteWeigher": "bmd.scheduler.weighers:LeastWasteWeigher",
}

DEFAULT_FILTERS: tuple[str, ...] = (
    "DeployReadyFilter",
    "ComputeFilter",
    "ImagePropertiesFilter",
    "ComputeCapabilitiesFilter",
    "RamFilter",
    "DiskFilter",
    "CoreFilter",
    "SameCapabilityFilter",
    "DifferentCapabilityFilter",
)
DEFAULT_WEIGHERS: tuple[str, ...] = ("LeastWasteWeigher",)


def _available(group: str, builtin: Mapping[str, str]) -> dict[str, list[EntryPoint]]:
    """Name -> the distinct entry points claiming it (more than one is a conflict)."""
    found: dict[str, list[EntryPoint]] = {name: [EntryPoint(name, value, group)] for name, value in builtin.items()}
    for entry in entry_points(group=group):
        claims = found.setdefault(entry.name, [])
        if all(entry.value != claim.value for claim in claims):
            claims.append(entry)
    return found


def available_filters() -> list[str]:
    return sorted(_available(FILTERS_GROUP, BUILTIN_FILTERS))


def available_weighers() -> list[str]:
    return sorted(_available(WEIGHERS_GROUP, BUILTIN_WEIGHERS))


def _load(kind: str, group: str, builtin: Mapping[str, str], base: type, name: str) -> type[Any]:
    known = _available(group, builtin)
    claims = known.get(name)
    if not claims:
        raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known))}")
    if len(claims) > 1:
        raise ConfigError(f"{kind} {name!r} is registered twice: {', '.join(c.value for c in claims)}")
    try:
        loaded = claims[0].load()
    except Exception as err:
        raise ConfigError(f"{kind} {name!r}: cannot load {claims[0].value}: {err}") from err
    if not isinstance(loaded, type) or not issubclass(loaded, base):
        raise ConfigError(f"{kind} {name!r}: {claims[0].value} is not a {base.__name__}")
    return loaded


def load_filter(name: str) -> type[BaseHostFilter]:
    return _load("filter", FILTERS_GROUP, BUILTIN_FILTERS, BaseHostFilter, name)


def load_weigher(name: str) -> type[BaseWeigher]:
    return _load("weigher", WEIGHERS_GROUP, BUILTIN_WEIGHERS, BaseWeigher, name)


def _build(
    kind: str,
    load: Any,
    names: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None,
) -> list[Any]:
    options = options or {}
    for name in options:
        if name not in names:
            raise ConfigError(f"scheduler.{kind}_options.{name}: {name} is not in scheduler.{kind}s")
    built = []
    for name in names:
        cls = load(name)
        try:
            built.append(cls(**options.get(name, {})))
        except TypeError as err:
            raise ConfigError(f"scheduler.{kind}_options.{name}: {err}") from err
    return built


def build_filters(names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> list[BaseHostFilter]:
    """The configured chain, in order; ``options[name]`` are constructor keywords for that filter."""
    return _build("filter", load_filter, names, options)


def build_weighers(names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> list[BaseWeigher]:
    """The configured weighers; ``options[name]`` are constructor keywords (e.g. ``multiplier``)."""
    return _build("weigher", load_weigher, names, options)
