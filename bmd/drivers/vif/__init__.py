"""VIF drivers: the network side of plugging a node's interfaces into tenant networks.

- ``base``: :class:`~bmd.drivers.vif.base.VifDriver` (the interface) and :class:`VifBinding`.
- ``binding``: the database side, the seed's ``plug_vifs`` / ``unplug_vifs``: bind each VIF to a free
  interface, then ask the driver to wire it; undone when the driver fails.
- ``generic``: the binding only. ``openflow``: maps the switch port at the OpenFlow controller through
  ``vifinfo`` (its REST client; ``fake_controller`` is the loopback controller tests and the lab use).
  ``ovs``: puts the port on the network's VLAN on an Open vSwitch bridge (``ovs_bridge`` programs it).
"""
