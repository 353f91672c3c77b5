"""HostIndex: the node states, each in a numbered slot, grouped by facet key.

Every host lives in a slot (a small integer; freed slots are reused, lowest first). For each facet in use,
a ``FacetIndex`` maps each distinct key to the set of slots (a bitset int) whose host projects to it. A
facet is built on first use, from every host; from then on it is kept in step host by host: ``reindex``
re-projects one host on every built facet and moves its bit when its key changed.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator, Sequence
from functools import reduce
from operator import or_

from bmd.filters.base import Constraint, Facet
from bmd.scheduler.bitset import mask_of
from bmd.scheduler.host_state import BaremetalNodeState

__all__ = ["FacetIndex", "HostIndex"]

_ABSENT: Hashable = object()
"""The key of an empty slot."""


class FacetIndex:
    """One facet's grouping: key -> slots (bitset), slot -> key, and for aliased facets alias -> keys."""

    __slots__ = ("aliases", "facet", "groups", "keys")

    def __init__(self, facet: Facet, states: Sequence[BaremetalNodeState | None]) -> None:
        self.facet = facet
        key_of = facet.key
        self.keys: list[Hashable] = [_ABSENT if host is None else key_of(host) for host in states]
        self.aliases: dict[str, set[Hashable]] | None = {} if facet.aliased else None
        buckets: dict[Hashable, list[int]] = {}
        for slot, key in enumerate(self.keys):
            if key is not _ABSENT:
                buckets.setdefault(key, []).append(slot)
        self.groups: dict[Hashable, int] = {}
        for key, slots in buckets.items():
            self.groups[key] = mask_of(slots)
            self._alias_add(key)

    def _alias_add(self, key: Hashable) -> None:
        if self.aliases is not None:
            alias = self.facet.alias(key)
            if alias is not None:
                self.aliases.setdefault(alias, set()).add(key)

    def _alias_discard(self, key: Hashable) -> None:
        if self.aliases is not None:
            alias = self.facet.alias(key)
            if alias is not None:
                keys = self.aliases[alias]
                keys.discard(key)
                if not keys:
                    del self.aliases[alias]

    def _join(self, key: Hashable, bit: int) -> None:
        group = self.groups.get(key)
        if group is None:
            self.groups[key] = bit
            self._alias_add(key)
        else:
            self.groups[key] = group | bit

    def _leave(self, key: Hashable, bit: int) -> None:
        group = self.groups[key] ^ bit
        if group:
            self.groups[key] = group
        else:
            del self.groups[key]
            self._alias_discard(key)

    def put(self, slot: int, host: BaremetalNodeState) -> None:
        """Record ``host`` (new, or changed) in ``slot``."""
        key = self.facet.key(host)
        if slot >= len(self.keys):
            self.keys.extend([_ABSENT] * (slot + 1 - len(self.keys)))
        old = self.keys[slot]
        if old is not _ABSENT:
            if old == key:
                return
            self._leave(old, 1 << slot)
        self.keys[slot] = key
        self._join(key, 1 << slot)

    def drop(self, slot: int) -> None:
        self._leave(self.keys[slot], 1 << slot)
        self.keys[slot] = _ABSENT

    def passing(self, constraint: Constraint, live: int) -> int:
        """The slots whose key the constraint accepts. ``live`` is every slot: the groups partition it, so
        when most groups pass, removing the few that fail from ``live`` is cheaper than joining the rest
        (each join or removal costs a pass over a full-width int)."""
        accepts = constraint.accepts
        if constraint.aliases is not None and self.aliases is not None:
            keys = {key for alias in constraint.aliases for key in self.aliases.get(alias, ())}
            return reduce(or_, [self.groups[key] for key in keys if accepts(key)], 0)
        accepted: list[int] = []
        rejected: list[int] = []
        for key, members in self.groups.items():
            (accepted if accepts(key) else rejected).append(members)
        if len(rejected) < len(accepted):
            return live ^ reduce(or_, rejected, 0)
        return reduce(or_, accepted, 0)


class HostIndex:
    """Node states by nodename and by slot, with lazily built facet groupings."""

    def __init__(self) -> None:
        self._states: list[BaremetalNodeState | None] = []
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._facets: dict[str, FacetIndex] = {}
        self._live: int | None = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, nodename: object) -> bool:
        return nodename in self._slots

    def get(self, nodename: str) -> BaremetalNodeState | None:
        slot = self._slots.get(nodename)
        return None if slot is None else self._states[slot]

    def state(self, slot: int) -> BaremetalNodeState:
        host = self._states[slot]
        assert host is not None, f"slot {slot} is empty"
        return host

    def slots(self) -> Iterator[tuple[int, BaremetalNodeState]]:
        """Every (slot, state), in slot order."""
        return ((slot, host) for slot, host in enumerate(self._states) if host is not None)

    def nodenames(self) -> list[str]:
        return list(self._slots)

    def live(self) -> int:
        """The set of occupied slots."""
        if self._live is None:
            self._live = mask_of(self._slots.values())
        return self._live

    def add(self, host: BaremetalNodeState) -> int:
        if host.nodename in self._slots:
            raise ValueError(f"node {host.nodename} is already indexed")
        if self._free:
            slot = heapq.heappop(self._free)
            self._states[slot] = host
        else:
            slot = len(self._states)
            self._states.append(host)
        self._slots[host.nodename] = slot
        self._live = None
        for facet_index in self._facets.values():
            facet_index.put(slot, host)
        return slot

    def reindex(self, nodename: str) -> None:
        """Re-project a host whose state changed in place."""
        slot = self._slots[nodename]
        host = self.state(slot)
        for facet_index in self._facets.values():
            facet_index.put(slot, host)

    def remove(self, nodename: str) -> BaremetalNodeState:
        slot = self._slots.pop(nodename)
        host = self.state(slot)
        for facet_index in self._facets.values():
            facet_index.drop(slot)
        self._states[slot] = None
        heapq.heappush(self._free, slot)
        self._live = None
        return host

    def facet(self, facet: Facet) -> FacetIndex:
        """The grouping for ``facet``, built on first use."""
        facet_index = self._facets.get(facet.name)
        if facet_index is None:
            facet_index = self._facets[facet.name] = FacetIndex(facet, self._states)
        return facet_index

    def facet_names(self) -> list[str]:
        return list(self._facets)
