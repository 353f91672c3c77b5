"""What a selection answers: per instance, the ordered candidates and the chain's record (how many hosts
each filter removed), and the reason when no host was left."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bmd.errors import NoValidHost
from bmd.scheduler.host_state import BaremetalNodeState

__all__ = ["NO_HOSTS", "Candidate", "FilterCount", "Selection", "candidate", "no_host_reason"]

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
