"""RAM, disk and vcpu filters: with an allocation ratio (Nova's RamFilter, DiskFilter, CoreFilter) or exact
(``Exact*``: a bare-metal flavor that must match the node's free resources exactly).

Ratio filters follow Nova: the usable amount is ``total * ratio - (total - free)``, and an instance never
overcommits against itself (``total < requested`` fails whatever the ratio). A node that reports no vcpus
passes CoreFilter (Nova's fail-safe for broken CPU collection) and fails ExactCoreFilter. Disk requests count
root and ephemeral disks plus swap, in MB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

from bmd.errors import ConfigError
from bmd.filters.base import CORES, DISK, RAM, BaseHostFilter, Constraint
from bmd.filters.host_state import BaremetalNodeState, RequestSpec

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


def _on_pair(check: Callable[[int, int], bool]) -> Callable[[Hashable], bool]:
    def accepts(key: Hashable) -> bool:
        return check(*_pair(key))

    return accepts


class RamFilter(BaseHostFilter):
    """Passes nodes with enough free RAM for the flavor."""

    def __init__(self, allocation_ratio: float = 1.0) -> None:
        self.allocation_ratio = _ratio(self.name, allocation_ratio)

    def _check(self, total: int, free: int, spec: RequestSpec) -> bool:
        return _fits(total, free, spec.flavor.memory_mb, self.allocation_ratio)

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return self._check(host_state.total_usable_ram_mb, host_state.free_ram_mb, spec)

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        return [Constraint(RAM, _on_pair(lambda total, free: self._check(total, free, spec)))]


class DiskFilter(BaseHostFilter):
    """Passes nodes with enough free disk for the flavor's root, ephemeral and swap."""

    def __init__(self, allocation_ratio: float = 1.0) -> None:
        self.allocation_ratio = _ratio(self.name, allocation_ratio)

    def _check(self, total_gb: int, free_mb: int, spec: RequestSpec) -> bool:
        return _fits(total_gb * 1024, free_mb, spec.flavor.disk_mb, self.allocation_ratio)

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return self._check(host_state.total_usable_disk_gb, host_state.free_disk_mb, spec)

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        return [Constraint(DISK, _on_pair(lambda total, free: self._check(total, free, spec)))]


class CoreFilter(BaseHostFilter):
    """Passes nodes with enough unused vcpus for the flavor."""

    def __init__(self, allocation_ratio: float = 1.0) -> None:
        self.allocation_ratio = _ratio(self.name, allocation_ratio)

    def _check(self, total: int, used: int, spec: RequestSpec) -> bool:
        if not total:
            return True
        return _fits(total, total - used, spec.flavor.vcpus, self.allocation_ratio)

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return self._check(host_state.vcpus_total, host_state.vcpus_used, spec)

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        return [Constraint(CORES, _on_pair(lambda total, used: self._check(total, used, spec)))]


class ExactRamFilter(BaseHostFilter):
    """Passes nodes whose free RAM is exactly the flavor's."""

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return host_state.free_ram_mb == spec.flavor.memory_mb

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        need = spec.flavor.memory_mb
        return [Constraint(RAM, _on_pair(lambda _total, free: free == need))]


class ExactDiskFilter(BaseHostFilter):
    """Passes nodes whose free disk (MB) is exactly the flavor's root + ephemeral + swap."""

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return host_state.free_disk_mb == spec.flavor.disk_mb

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        need = spec.flavor.disk_mb
        return [Constraint(DISK, _on_pair(lambda _total, free: free == need))]


class ExactCoreFilter(BaseHostFilter):
    """Passes nodes whose unused vcpus are exactly the flavor's."""

    @staticmethod
    def _check(total: int, used: int, need: int) -> bool:
        return bool(total) and total - used == need

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return self._check(host_state.vcpus_total, host_state.vcpus_used, spec.flavor.vcpus)

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        need = spec.flavor.vcpus
        return [Constraint(CORES, _on_pair(lambda total, used: self._check(total, used, need)))]
