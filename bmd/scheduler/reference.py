"""The reference: Nova's algorithm ("brute force"), kept only to check the indexed selector against it
(tests/scheduler/test_equivalence.py) and to time it (bench/schedule.py). Production selects through
``HostSelector.select``.

Nova's loop, per instance of a request: run every filter in configured order on every remaining host
(the chain stops when a filter leaves none), weigh the survivors, take the best, consume it, and start the
next instance from this instance's survivors, the consumed node included, so the next instance's filters
see it used.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bmd.filters.base import BaseHostFilter
from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec
from bmd.scheduler.selection import NO_HOSTS, Candidate, FilterCount, Selection, candidate, no_host_reason
from bmd.scheduler.weighers import BaseWeigher, weigh_hosts

if TYPE_CHECKING:
    from bmd.scheduler.selector import HostSelector

__all__ = ["reference_chain", "reference_select"]


def reference_select(selector: HostSelector, spec: RequestSpec) -> Selection:
    """Nova's algorithm over the selector's ``hosts()`` and chain: what ``selector.select(spec)`` must equal."""
    return reference_chain(
        selector.hosts(), selector.filters, selector.weighers, spec, selector.candidates_per_instance
    )


def reference_chain(
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
