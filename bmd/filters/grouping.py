"""Physical grouping of the instances of one request, driven by hints.

``{"same_capability": "location"}`` puts every instance of the request on nodes sharing one ``location``;
``{"different_capability": "location"}`` puts each on a distinct one. The name is a capability path, looked
up like an extra-spec key (``cpu_info:vendor`` or ``capabilities:cpu_info:vendor`` walk nested dicts).

The selection loop places instances one at a time (Nova's loop): the filter sees the nodes chosen for the
earlier instances in ``spec.chosen``. It is greedy: the first instance goes to the best node, and the rest
must follow its value (same) or avoid the values taken (different). A node without the capability never
passes while the hint is given. Values are compared with ``==``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

from bmd.filters.base import (
    BaseHostFilter,
    CapabilityValue,
    Constraint,
    Facet,
    capability_facet,
    lookup_capability,
)
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec

__all__ = ["DifferentCapabilityFilter", "SameCapabilityFilter", "hint_path"]


def hint_path(name: str) -> tuple[str, ...]:
    return tuple(name.removeprefix("capabilities:").split(":"))


class _GroupingFilter(BaseHostFilter):
    hint: ClassVar[str]

    def _allowed(self, value: Any, taken: list[Any]) -> bool:
        raise NotImplementedError

    def _path(self, spec: RequestSpec) -> tuple[str, ...] | None:
        name = spec.hints.get(self.hint)
        return None if name is None else hint_path(name)

    def host_passes(self, host_state: BaremetalNodeState, spec: RequestSpec) -> bool:
        path = self._path(spec)
        if path is None:
            return True
        value = lookup_capability(host_state.capabilities, path)
        taken = [lookup_capability(chosen.capabilities, path) for chosen in spec.chosen]
        return value is not None and self._allowed(value, taken)

    def constraints(self, spec: RequestSpec) -> Sequence[Constraint]:
        path = self._path(spec)
        if path is None:
            return []
        taken = [lookup_capability(chosen.capabilities, path) for chosen in spec.chosen]
        return [self._constraint(capability_facet(path), taken)]

    def _constraint(self, facet: Facet, taken: list[Any]) -> Constraint:
        def accepts(key: Hashable) -> bool:
            return isinstance(key, CapabilityValue) and self._allowed(key.value, taken)

        return Constraint(facet, accepts)


class SameCapabilityFilter(_GroupingFilter):
    """All instances of a request on nodes with one value of the hinted capability."""

    hint = "same_capability"

    def _allowed(self, value: Any, taken: list[Any]) -> bool:
        return all(bool(value == other) for other in taken)

    def _constraint(self, facet: Facet, taken: list[Any]) -> Constraint:
        if taken and all(isinstance(other, str) for other in taken) and len(set(taken)) == 1:
            # Only a string equals a string: look the one allowed value up by its alias.
            target = taken[0]

            def accepts(key: Hashable) -> bool:
                return isinstance(key, CapabilityValue) and bool(key.value == target)

            return Constraint(facet, accepts, frozenset({target}))
        return super()._constraint(facet, taken)


class DifferentCapabilityFilter(_GroupingFilter):
    """Each instance of a request on a node with a value of the hinted capability no other one has."""

    hint = "different_capability"

    def _allowed(self, value: Any, taken: list[Any]) -> bool:
        return all(not bool(value == other) for other in taken)

    def _constraint(self, facet: Facet, taken: list[Any]) -> Constraint:
        if all(isinstance(other, str) for other in taken):
            # Only a string equals a string: a set look-up instead of comparing with each taken value.
            excluded = frozenset(taken)

            def accepts(key: Hashable) -> bool:
                return isinstance(key, CapabilityValue) and not (isinstance(key.value, str) and key.value in excluded)

            return Constraint(facet, accepts)
        return super()._constraint(facet, taken)
