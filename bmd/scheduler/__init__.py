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

Import from the modules themselves (the pure filters in ``bmd.filters`` import ``host_state`` and the
selector imports the filters, so this package re-exports nothing).
"""
