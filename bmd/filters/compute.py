"""ComputeFilter: only nodes that can be used at all."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from bmd.filters.base import HEALTH, BaseHostFilter, Constraint
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec

__all__ = ["ComputeFilter"]


def _usable(maintenance: bool, power_fault: bool, service_up: bool) -> bool:
    return not maintenance and not power_fault and service_up


def _accepts(key: Hashable) -> bool:
    assert isinstance(key, tuple)
    return _usable(*key)


class ComputeFilter(BaseHostFilter):
    """Drops nodes in maintenance, nodes whose power sync is failing, and nodes whose service is down."""

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return _usable(host_state.maintenance, host_state.power_fault, host_state.service_up)

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        return [Constraint(HEALTH, _accepts)]
