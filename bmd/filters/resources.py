"""RAM, disk and vcpu filters: with an allocation ratio (Nova's RamFilter, DiskFilter, CoreFilter) or exact
(``Exact*``: a bare-metal flavor that must match the node's free resources exactly).

Ratio filters follow Nova: the usable amount is ``total * ratio - (total - free)``, and an instance never
overcommits against itself (``total < requested`` fails whatever the ratio). A node that reports no vcpus
passes CoreFilter (Nova's fail-safe for broken CPU collection) and fails ExactCoreFilter. Disk requests count
root and ephemeral disks plus swap, in MB.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Hashable, Sequence
from typing import ClassVar

from bmd.errors import ConfigError
from bmd.filters.base import CORES, DISK, RAM, BaseHostFilter, Constraint, Facet
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec

__all__ = [
    "CoreFilter",
    "DiskFilter",
    "ExactCoreFilter",
    "ExactDiskFilter",
    "ExactRamFilter",
    "RamFilter",
]


def _fits(total: float, free: float, requested: float, ratio: float) -> bool:
    if total < requested:
        return False
    used = total - free
    return total * ratio - used >= requested


def _ratio(owner: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{owner}: allocation_ratio must be a positive number, not {value!r}")
    return float(value)


def _pair(key: Hashable) -> tuple[int, int]:
    assert isinstance(key, tuple) and len(key) == 2
    return key[0], key[1]


class _ResourceFilter(BaseHostFilter):
    """A filter on one resource, read through ``facet`` as a pair: (total, free) for RAM and disk,
    (total, used) for vcpus."""

    facet: ClassVar[Facet]

    @abstractmethod
    def _check(self, first: int, second: int, spec: RequestSpec) -> bool: ...

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return self._check(*_pair(self.facet.key(host_state)), spec)

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        def accepts(key: Hashable) -> bool:
            return self._check(*_pair(key), spec)

        return [Constraint(self.facet, accepts)]


class _RatioFilter(_ResourceFilter):
    def __init__(self, allocation_ratio: float = 1.0) -> None:
        self.allocation_ratio = _ratio(self.name, allocation_ratio)


class RamFilter(_RatioFilter):
    """Passes nodes with enough free RAM for the flavor."""

    facet = RAM

    def _check(self, total: int, free: int, spec: RequestSpec) -> bool:
        return _fits(total, free, spec.flavor.memory_mb, self.allocation_ratio)


class DiskFilter(_RatioFilter):
    """Passes nodes with enough free disk for the flavor's root, ephemeral and swap."""

    facet = DISK

    def _check(self, total_gb: int, free_mb: int, spec: RequestSpec) -> bool:
        return _fits(total_gb * 1024, free_mb, spec.flavor.disk_mb, self.allocation_ratio)


class CoreFilter(_RatioFilter):
    """Passes nodes with enough unused vcpus for the flavor."""

    facet = CORES

    def _check(self, total: int, used: int, spec: RequestSpec) -> bool:
        if not total:
            return True
        return _fits(total, total - used, spec.flavor.vcpus, self.allocation_ratio)


class ExactRamFilter(_ResourceFilter):
    """Passes nodes whose free RAM is exactly the flavor's."""

    facet = RAM

    def _check(self, total: int, free: int, spec: RequestSpec) -> bool:
        return free == spec.flavor.memory_mb


class ExactDiskFilter(_ResourceFilter):
    """Passes nodes whose free disk (MB) is exactly the flavor's root + ephemeral + swap."""

    facet = DISK

    def _check(self, total_gb: int, free_mb: int, spec: RequestSpec) -> bool:
        return free_mb == spec.flavor.disk_mb


class ExactCoreFilter(_ResourceFilter):
    """Passes nodes whose unused vcpus are exactly the flavor's."""

    facet = CORES

    def _check(self, total: int, used: int, spec: RequestSpec) -> bool:
        return bool(total) and total - used == spec.flavor.vcpus
