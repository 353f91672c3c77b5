"""DeployReadyFilter: only nodes that could take a deploy at all, whatever the request.

Each node's capabilities carry its composed driver's verdict (``deploy_ready``, ``deploy_blocker``): every
interface's ``validate`` accepted the node (``NodeDriver.validate`` in :mod:`bmd.drivers.base`: power
accepts its BMC fields, deploy finds a MAC to PXE boot and a complete deploy config, vif, ...; no I/O).
A node that cannot is skipped here and counted in the chain's record, so the next candidate is tried and
the node is never claimed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from bmd.filters.base import DEPLOY_READY, BaseHostFilter, Constraint
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec

__all__ = ["DeployReadyFilter"]


def _accepts(key: Hashable) -> bool:
    assert isinstance(key, tuple)
    return bool(key[0])


class DeployReadyFilter(BaseHostFilter):
    """Drops nodes their driver's ``validate`` refuses (no interface, BMC fields its power driver refuses, ...)."""

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return host_state.deploy_ready

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        return [Constraint(DEPLOY_READY, _accepts)]
