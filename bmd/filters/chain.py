"""The filter chain's result types, and Nova's algorithm as the reference ("brute force").

Nova's loop, per instance of a request: run every filter in configured order on every remaining host
(the chain stops when a filter leaves none), weigh the survivors, take the best, consume it, and start the
next instance from this instance's survivors, the consumed node included, so the next instance's filters
see it used. ``HostSelector`` gives the same answers through its index; this module is what it is checked
against, and what the benchmark compares it with.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from bmd.errors import NoValidHost
from bmd.filters.base import BaseHostFilter
from bmd.filters.host_state import BaremetalNodeState, RequestSpec
from bmd.filters.weighers import BaseWeigher, weigh_hosts

__all__ = ["NO_HOSTS", "Candidate", "FilterCount", "Selection", "no_host_reason", "select_brute_force"]

NO_HOSTS = "no hosts are known to the scheduler"


@dataclass(frozen=True)
class FilterCount:
    """How many hosts one filter saw and let through, for one instance."""

    filter: str
    before: int
    after: int

    @property
    def removed(self) -> int:
        return self.before - self.after


@dataclass(frozen=True)
class Candidate:
    """One node offered for one instance, with its total weight."""

    nodename: str
    node_id: int | None
    host: str
    weight: float


@dataclass(frozen=True)
class Selection:
    """The answer to one request.

    ``candidates[i]`` is the ordered list for instance ``i`` (best first, at most the selector's
    ``candidates_per_instance``); its head is the node picked for that instance. ``filter_counts[i]`` is the
    chain's record for instance ``i``. When instance ``k`` found no host, ``reason`` says which filter
    removed the last ones, ``candidates`` holds the ``k`` instances placed before it and ``filter_counts``
    ``k + 1`` records.
    """

    candidates: tuple[tuple[Candidate, ...], ...]
    filter_counts: tuple[tuple[FilterCount, ...], ...]
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def chosen(self) -> tuple[Candidate, ...]:
        return tuple(options[0] for options in self.candidates)

    def require(self) -> tuple[Candidate, ...]:
        """The chosen nodes, or ``NoValidHost`` carrying the reason."""
        if self.reason is not None:
            raise NoValidHost(self.reason)
        return self.chosen


def no_host_reason(counts: Sequence[FilterCount]) -> str:
    """``"<FilterName> removed the last N hosts"`` from the record of a chain that ended at zero."""
    if counts and counts[-1].after == 0 and counts[-1].before > 0:
        return f"{counts[-1].filter} removed the last {counts[-1].before} hosts"
    return NO_HOSTS


def candidate(host: BaremetalNodeState, weight: float) -> Candidate:
    return Candidate(host.nodename, host.node_id, host.host, weight)


def select_brute_force(
    hosts: Sequence[BaremetalNodeState],
    filters: Sequence[BaseHostFilter],
    weighers: Sequence[BaseWeigher],
    spec: RequestSpec,
    candidates_per_instance: int,
) -> Selection:
    """Nova's algorithm: every filter on every host, then weigh; ties keep the order of ``hosts``.
    The given states are not changed (consumption happens on copies)."""
    remaining = list(hosts)
    chosen: list[BaremetalNodeState] = []
    picks: list[tuple[Candidate, ...]] = []
    records: list[tuple[FilterCount, ...]] = []
    if not remaining:
        return Selection((), (), NO_HOSTS)
    for index in range(spec.num_instances):
        request = spec.for_instance(index, tuple(chosen))
        counts: list[FilterCount] = []
        for host_filter in filters:
            before = len(remaining)
            remaining = [host for host in remaining if host_filter.host_passes(host, request)]
            counts.append(FilterCount(host_filter.name, before, len(remaining)))
            if not remaining:
                break
        records.append(tuple(counts))
        if not remaining:
            return Selection(tuple(picks), tuple(records), no_host_reason(counts))
        totals = weigh_hosts(weighers, remaining, request)
        order = sorted(range(len(remaining)), key=totals.__getitem__, reverse=True)
        picks.append(tuple(candidate(remaining[i], totals[i]) for i in order[:candidates_per_instance]))
        best = order[0]
        used = copy.copy(remaining[best])
        used.consume_from_instance(request)
        remaining[best] = used
        chosen.append(used)
    return Selection(tuple(picks), tuple(records))
