"""DeployReadyFilter: only nodes that could take a deploy at all, whatever the request.

The driver publishes its verdict with each node's capabilities (``deploy_ready``, ``deploy_blocker``): the
node has an interface (PXE needs a MAC) and its power driver accepts its BMC fields (``validate``, no
I/O). A node that cannot is skipped here and counted in the chain's record, so the next candidate is
tried and the node is never claimed.
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
    """Drops nodes their driver says cannot be deployed (no interface, BMC fields its power driver refuses)."""

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return host_state.deploy_ready

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        return [Constraint(DEPLOY_READY, _accepts)]
