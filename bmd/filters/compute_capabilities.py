"""ComputeCapabilitiesFilter: the flavor's extra specs against the node's capabilities (Nova's rules)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from bmd.filters.base import (
    BaseHostFilter,
    CapabilityValue,
    Constraint,
    capability_facet,
    capability_path,
    lookup_capability,
)
from bmd.filters.extra_specs_ops import equality_candidates, match
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec

__all__ = ["ComputeCapabilitiesFilter", "satisfies_extra_specs"]


def satisfies_extra_specs(capabilities: Mapping[str, Any], extra_specs: Mapping[str, str]) -> bool:
    """True when every extra spec in our scope is met by ``capabilities``.

    A key scoped other than ``capabilities:`` is ignored; ``capabilities:a:b`` walks nested dicts; an
    unscoped key is looked up at the top level; a missing capability fails; no extra specs pass.
    """
    for key, req in extra_specs.items():
        path = capability_path(key)
        if path is None:
            continue
        value = lookup_capability(capabilities, path)
        if value is None or not match(value, req):
            return False
    return True


def _matcher(req: str) -> Callable[[Hashable], bool]:
    def accepts(key: Hashable) -> bool:
        return isinstance(key, CapabilityValue) and match(key.value, req)

    return accepts


class ComputeCapabilitiesFilter(BaseHostFilter):
    """Passes nodes whose capabilities satisfy the flavor's extra specs."""

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        return satisfies_extra_specs(host_state.capabilities, spec.extra_specs)

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        result = []
        for key, req in spec.extra_specs.items():
            path = capability_path(key)
            if path is not None:
                result.append(Constraint(capability_facet(path), _matcher(req), equality_candidates(req)))
        return result
