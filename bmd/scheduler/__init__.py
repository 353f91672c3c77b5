"""The scheduler: which nodes take a request, and the atomic claim of them.

Modules, in the order a request goes through them:

* ``host_state`` — ``BaremetalNodeState`` (one node as the scheduler sees it) and ``RequestSpec``.
* ``selector`` — ``HostSelector``: the states, their ``index`` (facet groupings over ``bitset`` slots)
  and the configured filter chain (pure filters from ``bmd.filters``) and ``weighers``; answers ``select``
  with a ``selection.Selection``.
* ``manager`` — ``HostManager``: the host feed (capabilities from the bus, node change events, the
  periodic resync from ``bm_nodes``), ``select_destinations`` and ``claim`` through ``claims.ClaimWriter``.
* ``reference`` — Nova's brute-force chain, only the reference the equivalence tests and
  ``bench/schedule.py`` compare the selector with.

The public names are importable from here; they are loaded on first use, because the pure filters in
``bmd.filters`` import ``host_state`` and the selector imports the filters.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bmd.scheduler.claims import ClaimWriter
    from bmd.scheduler.host_state import BaremetalNodeState, RequestSpec
    from bmd.scheduler.manager import HostManager, Placement, SchedulerRefresh
    from bmd.scheduler.reference import reference_select
    from bmd.scheduler.selection import Candidate, FilterCount, Selection
    from bmd.scheduler.selector import HostSelector
    from bmd.scheduler.weighers import BaseWeigher

_WHERE = {
    "BaremetalNodeState": "host_state",
    "RequestSpec": "host_state",
    "HostSelector": "selector",
    "Candidate": "selection",
    "FilterCount": "selection",
    "Selection": "selection",
    "BaseWeigher": "weighers",
    "ClaimWriter": "claims",
    "HostManager": "manager",
    "Placement": "manager",
    "SchedulerRefresh": "manager",
    "reference_select": "reference",
}

__all__ = [
    "BaremetalNodeState",
    "BaseWeigher",
    "Candidate",
    "ClaimWriter",
    "FilterCount",
    "HostManager",
    "HostSelector",
    "Placement",
    "RequestSpec",
    "SchedulerRefresh",
    "Selection",
    "reference_select",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
