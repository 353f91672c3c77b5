"""Weighers: rank the hosts that passed the filters (Nova's weighing, normalised).

Each weigher gives every host a raw weight; the raw weights are clamped to ``[minval, maxval]`` when those
are set, normalised to ``[0, 1]`` (over the hosts' own range unless ``minval``/``maxval`` fix it; all equal
gives 0), multiplied by the weigher's ``multiplier`` and summed. Higher wins; ties keep host order. With one
host or none, every weight is 0.

A weigher whose weight depends only on some facets' keys (and the request) says so in ``facets``; the
selector then weighs one representative host per distinct key instead of every host.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from bmd.errors import ConfigError
from bmd.filters.base import CORES, DISK, RAM, Facet
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec

__all__ = ["BaseWeigher", "LeastWasteWeigher", "RAMWeigher", "combine_weights", "normalize", "weigh_hosts"]


class BaseWeigher(ABC):
    name: ClassVar[str] = "BaseWeigher"
    minval: ClassVar[float | None] = None
    maxval: ClassVar[float | None] = None
    facets: ClassVar[tuple[Facet, ...] | None] = None
    """The facets the weight depends on (with the request), or ``None``: weigh every host."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def __init__(self, multiplier: float = 1.0) -> None:
        if isinstance(multiplier, bool) or not isinstance(multiplier, int | float) or not math.isfinite(multiplier):
            raise ConfigError(f"{self.name}: multiplier must be a finite number, not {multiplier!r}")
        self.multiplier = float(multiplier)

    @abstractmethod
    def weigh(self, host_state: BaremetalNodeState, spec: RequestSpec) -> float:
        """The raw weight of one host for this request; higher is better."""


def normalize(weights: Sequence[float], minval: float | None = None, maxval: float | None = None) -> list[float]:
    """Scale ``weights`` to ``[0, 1]`` over ``[minval, maxval]`` (their own range by default)."""
    if not weights:
        return []
    low = float(min(weights) if minval is None else minval)
    high = float(max(weights) if maxval is None else maxval)
    if low == high:
        return [0.0] * len(weights)
    span = high - low
    return [(weight - low) / span for weight in weights]


def _clamp(weight: float, low: float | None, high: float | None) -> float:
    if low is not None:
        weight = max(weight, low)
    if high is not None:
        weight = min(weight, high)
    return weight


def combine_weights(
    weighers: Sequence[BaseWeigher], raw: Sequence[Sequence[float]], *, objects: int, hosts: int
) -> list[float]:
    """Total weight of each of ``objects`` from each weigher's raw weights (``raw[i][j]``: weigher i,
    object j). An object may stand for a group of hosts of equal weight; ``hosts`` is how many in all."""
    totals = [0.0] * objects
    if hosts <= 1:
        return totals
    for weigher, weights in zip(weighers, raw, strict=True):
        clamped = [_clamp(weight, weigher.minval, weigher.maxval) for weight in weights]
        for position, weight in enumerate(normalize(clamped, weigher.minval, weigher.maxval)):
            totals[position] += weigher.multiplier * weight
    return totals


def weigh_hosts(weighers: Sequence[BaseWeigher], hosts: Sequence[BaremetalNodeState], spec: RequestSpec) -> list[float]:
    """Total weight of each host (every weigher on every host)."""
    raw = [[weigher.weigh(host, spec) for host in hosts] for weigher in weighers]
    return combine_weights(weighers, raw, objects=len(hosts), hosts=len(hosts))


class RAMWeigher(BaseWeigher):
    """Nova's: more free RAM weighs more (spreading); a negative multiplier stacks instead."""

    minval = 0.0
    facets = (RAM,)

    def weigh(self, host_state: BaremetalNodeState, spec: RequestSpec) -> float:
        return float(host_state.free_ram_mb)


def _excess(free: int, requested: int) -> float:
    """The share of ``free`` the request would leave unused (0 when it fills or exceeds it)."""
    if free <= 0:
        return 0.0
    return max(free - requested, 0) / free


class LeastWasteWeigher(BaseWeigher):
    """Prefers the node whose free resources exceed the flavor least, so big machines stay free for big
    flavors. Waste is the mean, over RAM, disk and vcpus, of the share of the node's free amount the flavor
    would leave unused: 0 for an exact fit, towards 1 for a tiny flavor on a huge node. The weight is
    ``-waste`` on the fixed range ``[-1, 0]``, so it normalises to ``1 - waste`` whatever the other hosts."""

    minval = -1.0
    maxval = 0.0
    facets = (RAM, DISK, CORES)

    def weigh(self, host_state: BaremetalNodeState, spec: RequestSpec) -> float:
        flavor = spec.flavor
        waste = (
            _excess(host_state.free_ram_mb, flavor.memory_mb)
            + _excess(host_state.free_disk_mb, flavor.disk_mb)
            + _excess(host_state.vcpus_total - host_state.vcpus_used, flavor.vcpus)
        ) / 3
        return -waste
