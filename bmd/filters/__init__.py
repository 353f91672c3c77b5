"""Scheduler filters, weighers, host state and the reference (brute-force) chain.

Modules: ``extra_specs_ops`` (Nova's requirement operators), ``host_state`` (``BaremetalNodeState``,
``Flavor``, ``RequestSpec``), ``base`` (the filter contract and facets), one module per filter family,
``weighers``, ``chain`` (result types and Nova's algorithm) and ``registry`` (entry points). The indexed
selector lives in ``bmd.scheduling``.
"""
