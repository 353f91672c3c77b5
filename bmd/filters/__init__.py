"""The pure scheduler filters: ``base`` (the filter contract and facets), ``extra_specs_ops`` (Nova's
requirement operators), one module per filter family, and ``registry`` (filters and weighers by short name,
through entry points). Host states, weighers, the selector and the claims are in ``bmd.scheduler``.
"""
