"""Filters and weighers by short name (groups ``bmd.filters``, ``bmd.weighers``), through the one plugin
loader, :mod:`bmd.plugins`, with the same rules as the drivers.

A third party adds a filter by installing a package that declares, e.g.::

    [project.entry-points."bmd.filters"]
    RackPowerFilter = "acme_bmd.filters:RackPowerFilter"

Names are loaded once, at start-up: an unknown name, a name two packages claim differently, or constructor
options the class does not take fail with ``ConfigError`` naming the known names or the offending key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bmd.errors import ConfigError
from bmd.filters.base import BaseHostFilter
from bmd.plugins import BUILTIN, FILTER_GROUP, WEIGHER_GROUP, build_plugin, known_names, load_plugin
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

FILTERS_GROUP = FILTER_GROUP
WEIGHERS_GROUP = WEIGHER_GROUP

BUILTIN_FILTERS: Mapping[str, str] = BUILTIN[FILTER_GROUP]
BUILTIN_WEIGHERS: Mapping[str, str] = BUILTIN[WEIGHER_GROUP]

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


def available_filters() -> list[str]:
    return known_names(FILTER_GROUP)


def available_weighers() -> list[str]:
    return known_names(WEIGHER_GROUP)


def load_filter(name: str) -> type[BaseHostFilter]:
    return load_plugin(FILTER_GROUP, name, BaseHostFilter, what="scheduler.filters")


def load_weigher(name: str) -> type[BaseWeigher]:
    return load_plugin(WEIGHER_GROUP, name, BaseWeigher, what="scheduler.weighers")


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
            built.append(build_plugin(cls, None, options.get(name, {})))
        except TypeError as err:
            raise ConfigError(f"scheduler.{kind}_options.{name}: {err}") from err
    return built


def build_filters(names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> list[BaseHostFilter]:
    """The configured chain, in order; ``options[name]`` are constructor keywords for that filter."""
    return _build("filter", load_filter, names, options)


def build_weighers(names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> list[BaseWeigher]:
    """The configured weighers; ``options[name]`` are constructor keywords (e.g. ``multiplier``)."""
    return _build("weigher", load_weigher, names, options)
