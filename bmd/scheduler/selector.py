"""HostSelector: the scheduler's in-memory core. It holds the node states, keeps them indexed, and answers
``select(spec)`` exactly as Nova's algorithm would (``bmd.scheduler.reference``), touching groups of hosts
rather than hosts.

How a selection runs, per instance of the request (Nova's loop):

* The surviving hosts are a bitset of slots: every host for the first instance, the previous instance's
  survivors for the next ones.
* Filters run in configured order. A filter with ``constraints`` is answered from the facet groupings: each
  constraint tests each distinct key once and unions the groups it accepts; the survivors are intersected
  with that. A filter without ``constraints`` (a custom one) calls ``host_passes`` on each survivor, so put
  such filters after the indexed ones: they then only see what the index let through.
* **Filter counts are exact**: ``before``/``after`` are the sizes of the survivor set around each filter, in
  configured order, so they, the stopping point and the reason equal the brute force's.
* Weighers with ``facets`` are evaluated once per distinct key of the weighers' combined facet, on a
  representative host; hosts of equal total weight are ordered by slot, as the brute force orders ties by
  its host list (``hosts()`` gives that list).
* With ``local_host`` (the service this selector schedules for), the nodes that service owns come first
  among hosts of equal total weight, each part still in slot order. Several services sharing one database
  (ring ownership) then each pick from their own share of a homogeneous fleet, instead of all picking the
  same lowest-slot node at the same moment and losing every other claim to each other in SQL; and the
  deploy of a local pick needs no forwarding to the owner. Weights still decide first: a better node of
  another service is picked before a local one. Without ``local_host`` the order is the brute force's.
* The pick is consumed on a copy (an overlay local to the call): the selector's states are not changed by
  ``select``.

Claiming: call ``consume(nodename)`` for the candidate you are about to claim right after ``select``, with
no ``await`` in between, so that other requests in this process stop seeing the node; then await the atomic
SQL claim. When the claim is decided, give every consumed node the view of its bm_nodes row (``set_node``):
the claimed ones and the one lost to another scheduler stay used, the others of the request are free again
(``bmd.scheduler.manager.HostManager.claim`` does this).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bmd.errors import ConfigError, InvalidInput, NotFound
from bmd.filters.base import AttributeFacet, BaseHostFilter, Constraint, Facet
from bmd.scheduler.bitset import bit_positions, lowest_bit, lowest_bits, mask_of
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec
from bmd.scheduler.index import HostIndex
from bmd.scheduler.selection import NO_HOSTS, Candidate, FilterCount, Selection, candidate, no_host_reason
from bmd.scheduler.weighers import BaseWeigher, combine_weights, weigh_hosts

__all__ = ["CombinedFacet", "HostSelector"]

Overlay = dict[int, BaremetalNodeState]
_SERVICE_HOST = AttributeFacet("service_host", ("host",))


class CombinedFacet(Facet):
    """The tuple of several facets' keys."""

    def __init__(self, facets: Iterable[Facet]) -> None:
        unique = {facet.name: facet for facet in facets}
        self._facets = tuple(unique.values())
        self.name = "(" + ",".join(unique) + ")"

    def key(self, host: BaremetalNodeState) -> Hashable:
        return tuple(facet.key(host) for facet in self._facets)


class HostSelector:
    """Node states, their index, and the configured chain (``filters`` in order, then ``weighers``)."""

    def __init__(
        self,
        filters: Sequence[BaseHostFilter],
        weighers: Sequence[BaseWeigher],
        *,
        candidates_per_instance: int = 8,
        local_host: str | None = None,
    ) -> None:
        if candidates_per_instance < 1:
            raise ConfigError("candidates_per_instance must be at least 1")
        self.filters = tuple(filters)
        self.weighers = tuple(weighers)
        self.candidates_per_instance = candidates_per_instance
        self.local_host = local_host
        self._index = HostIndex()
        # Nodes whose state is exactly what their last capability dict made it (no consume or compute
        # node row since): the same dict again changes nothing, so it is not re-applied and re-indexed.
        self._as_published: set[str] = set()
        self._service_up: dict[str, bool] = {}  # by service host, as its heartbeat last said
        facets = [facet for weigher in self.weighers for facet in weigher.facets or ()]
        indexable = all(weigher.facets is not None for weigher in self.weighers)
        self._weigh_facet = CombinedFacet(facets) if indexable else None

    # -- what the host manager feeds in ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, nodename: object) -> bool:
        return nodename in self._index

    def get(self, nodename: str) -> BaremetalNodeState:
        host = self._index.get(nodename)
        if host is None:
            raise NotFound(f"node {nodename} is not known to the scheduler")
        return host

    def hosts(self) -> list[BaremetalNodeState]:
        """Every state, in the order that breaks weight ties."""
        return [host for _, host in self._index.slots()]

    def _upsert(self, nodename: str, host: str, change: Callable[[BaremetalNodeState], None]) -> BaremetalNodeState:
        state = self._index.get(nodename)
        if state is None:
            state = BaremetalNodeState(host=host, nodename=nodename)
            change(state)
            self._service_liveness(state)
            self._index.add(state)
        else:
            change(state)
            self._service_liveness(state)  # (its service may be another now)
            self._index.reindex(nodename)
        return state

    def _service_liveness(self, state: BaremetalNodeState) -> None:
        up = self._service_up.get(state.host)
        if up is not None:
            state.service_up = up

    def update_capabilities(self, caps: Mapping[str, Any], *, at: datetime | None = None) -> BaremetalNodeState:
        """One node's capability dict from the bus; adds the node when new. A dict equal to the one that
        last set the node's state only refreshes ``updated`` (published dicts must not be mutated later)."""
        nodename = str(caps.get("hypervisor_hostname") or caps.get("node") or "")
        if not nodename:
            raise InvalidInput("capabilities carry no hypervisor_hostname", field="hypervisor_hostname")
        known = self._index.get(nodename)
        if known is not None and nodename in self._as_published and known.capabilities == caps:
            known.updated = at or datetime.now(UTC)
            return known
        state = self._upsert(
            nodename, str(caps.get("host", "")), lambda state: state.update_from_capabilities(caps, at=at)
        )
        self._as_published.add(nodename)
        return state

    def sync_service(
        self,
        host: str,
        capabilities: Sequence[Mapping[str, Any]],
        on_error: Callable[[str, Exception], object] | None = None,
    ) -> list[str]:
        """A service's whole published list: update each node, drop the service's nodes that are gone.
        Returns the nodenames dropped. With ``on_error``, a dict that cannot be taken in is passed to it
        (nodename, error) and that node keeps the state it had; the others are taken in."""
        seen: set[str] = set()
        for caps in capabilities:
            try:
                seen.add(self.update_capabilities(caps).nodename)
            except Exception as err:
                if on_error is None:
                    raise
                nodename = str(caps.get("hypervisor_hostname") or caps.get("node") or "")
                seen.add(nodename)
                on_error(nodename, err)
        gone = [state.nodename for state in self._nodes_of(host) if state.nodename not in seen]
        for nodename in gone:
            self.remove(nodename)
        return gone

    def set_node(self, nodename: str, *, free: bool, maintenance: bool, power_fault: bool) -> None:
        """What the node's bm_nodes row says (see ``BaremetalNodeState.set_node``) and its power health."""
        state = self.get(nodename)
        state.set_node(free=free, maintenance=maintenance)
        state.power_fault = power_fault
        self._index.reindex(nodename)

    def set_health(self, nodename: str, *, power_fault: bool | None = None, service_up: bool | None = None) -> None:
        state = self.get(nodename)
        if power_fault is not None:
            state.power_fault = power_fault
        if service_up is not None:
            state.service_up = service_up
        self._index.reindex(nodename)

    def set_service_up(self, host: str, up: bool) -> None:
        """Mark every node of service ``host`` up or down (its heartbeat). The nodes are visited only when
        the service's liveness changes: a node taken in later gets its service's (``_upsert``)."""
        if self._service_up.get(host) == up:
            return
        self._service_up[host] = up
        for state in self._nodes_of(host):
            if state.service_up != up:
                self.set_health(state.nodename, service_up=up)

    def _nodes_of(self, host: str) -> list[BaremetalNodeState]:
        members = self._index.facet(_SERVICE_HOST).groups.get((host,), 0)
        return [self._index.state(slot) for slot in bit_positions(members)]

    def consume(self, nodename: str, spec: RequestSpec | None = None) -> None:
        """The node now holds an instance: call it when claiming (see the module's note on claiming)."""
        self.get(nodename).consume_from_instance(spec)
        self._as_published.discard(nodename)
        self._index.reindex(nodename)

    def remove(self, nodename: str) -> None:
        self.get(nodename)
        self._as_published.discard(nodename)
        self._index.remove(nodename)

    def prepare(self, spec: RequestSpec) -> None:
        """Build the facet groupings ``spec`` needs now rather than on its first ``select``."""
        for host_filter in self.filters:
            for constraint in host_filter.constraints(spec) or ():
                self._index.facet(constraint.facet)
        if self._weigh_facet is not None:
            self._index.facet(self._weigh_facet)

    # -- selection ------------------------------------------------------------------------------------

    def select(self, spec: RequestSpec) -> Selection:
        """Ordered candidates per instance, the chain's counts, and the reason when nothing fits."""
        survivors = self._index.live()
        if not survivors:
            return Selection((), (), NO_HOSTS)
        count = survivors.bit_count()
        overlay: Overlay = {}
        chosen: list[BaremetalNodeState] = []
        picks: list[tuple[Candidate, ...]] = []
        records: list[tuple[FilterCount, ...]] = []
        for index in range(spec.num_instances):
            request = spec.for_instance(index, tuple(chosen))
            counts: list[FilterCount] = []
            for host_filter in self.filters:
                survivors = self._apply(host_filter, request, survivors, overlay)
                after = survivors.bit_count()
                counts.append(FilterCount(host_filter.name, count, after))
                count = after
                if not survivors:
                    break
            records.append(tuple(counts))
            if not survivors:
                return Selection(tuple(picks), tuple(records), no_host_reason(counts))
            ranked = self._rank(request, survivors, count, overlay)
            picks.append(tuple(candidate(self._state(slot, overlay), weight) for slot, weight in ranked))
            best = ranked[0][0]
            used = copy.copy(self._state(best, overlay))
            used.consume_from_instance(request)
            overlay[best] = used
            chosen.append(used)
        return Selection(tuple(picks), tuple(records))

    def _state(self, slot: int, overlay: Overlay) -> BaremetalNodeState:
        return overlay.get(slot) or self._index.state(slot)

    def _apply(self, host_filter: BaseHostFilter, request: RequestSpec, survivors: int, overlay: Overlay) -> int:
        constraints = host_filter.constraints(request)
        if constraints is None:
            passing = [
                slot
                for slot in bit_positions(survivors)
                if host_filter.host_passes(self._state(slot, overlay), request)
            ]
            return mask_of(passing)
        result = survivors
        for constraint in constraints:
            result &= self._index.facet(constraint.facet).passing(constraint, self._index.live())
        for slot, used in overlay.items():
            bit = 1 << slot
            if survivors & bit:
                if _satisfies(constraints, used):
                    result |= bit
                elif result & bit:
                    result ^= bit
        return result

    def _rank(self, request: RequestSpec, survivors: int, count: int, overlay: Overlay) -> list[tuple[int, float]]:
        """The best ``candidates_per_instance`` survivors as (slot, total weight), best first."""
        limit = self.candidates_per_instance
        local = self._local()
        if self._weigh_facet is None:
            slots = bit_positions(survivors)
            totals = weigh_hosts(self.weighers, [self._state(slot, overlay) for slot in slots], request)
            # stable: equal keys keep slot order
            order = sorted(range(len(slots)), key=lambda i: (totals[i], local >> slots[i] & 1), reverse=True)
            return [(slots[i], totals[i]) for i in order[:limit]]
        groups: list[tuple[int, BaremetalNodeState]] = []
        plain = survivors
        for slot, used in overlay.items():
            if survivors >> slot & 1:
                plain ^= 1 << slot
                groups.append((1 << slot, used))
        for members in self._index.facet(self._weigh_facet).groups.values():
            subset = plain & members
            if subset:
                groups.append((subset, self._index.state(lowest_bit(subset))))
        raw = [[weigher.weigh(host, request) for _, host in groups] for weigher in self.weighers]
        totals = combine_weights(self.weighers, raw, objects=len(groups), hosts=count)
        order = sorted(range(len(groups)), key=totals.__getitem__, reverse=True)
        ranked: list[tuple[int, float]] = []
        position = 0
        while position < len(order) and len(ranked) < limit:
            weight = totals[order[position]]
            tied = 0
            while position < len(order) and totals[order[position]] == weight:
                tied |= groups[order[position]][0]
                position += 1
            for part in (tied & local, tied & ~local):
                ranked.extend((slot, weight) for slot in lowest_bits(part, limit - len(ranked)))
        return ranked

    def _local(self) -> int:
        """The slots of ``local_host``'s nodes."""
        if self.local_host is None:
            return 0
        return self._index.facet(_SERVICE_HOST).groups.get((self.local_host,), 0)


def _satisfies(constraints: Sequence[Constraint], host: BaremetalNodeState) -> bool:
    return all(constraint.accepts(constraint.facet.key(host)) for constraint in constraints)
