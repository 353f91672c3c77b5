"""Drivers: the BareMetalDriver (every node as a host, with its driver's verdict) and each node's driver, a
composition of interfaces (``base``: power, deploy, vif, console, inspect) built by ``factory`` through the
one plugin loader. Implementations live in ``power/``, ``deploy/`` and ``vif/``."""
