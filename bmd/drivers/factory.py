"""``DriverFactory``: the one place a node's driver is put together (Ironic's ``hardware_type.py`` role).

Built once at start-up from the settings and the secret box. Every interface comes through the one plugin
loader (:mod:`bmd.plugins`) and its one construction protocol:

- ``deploy`` from ``driver.deploy_driver`` (group ``bmd.drivers.deploy``; ``pxe``);
- ``vif`` from ``driver.vif_driver`` (group ``bmd.drivers.vif``; ``generic``, ``openflow``, ``ovs``);
- ``power`` per node from its ``pm_driver`` (group ``bmd.drivers.power``, through :class:`PowerRegistry`,
  which also builds the node's BMC access); ``driver.default_power_driver`` is checked at start-up;
- ``console`` from ``driver.console_interface`` (group ``bmd.drivers.console``; ``none``, ``tcp``);
- ``inspect``: :class:`~bmd.drivers.base.NoInspect`.

An unknown configured name fails here, at start-up, with ``ConfigError`` listing the known ones. Interface
instances are shared by every node (they keep no per-node state beyond caches); :meth:`for_node` pairs them
with the node's power driver and BMC access in a frozen :class:`~bmd.drivers.base.NodeDriver`.
"""

from __future__ import annotations

from typing import Any

from bmd.config import Settings
from bmd.drivers.base import (
    ConsoleInterface,
    DeployInterface,
    InspectInterface,
    NodeDriver,
    NodeFacts,
    NoInspect,
)
from bmd.drivers.power.base import PowerInterface
from bmd.drivers.power.registry import PowerRegistry
from bmd.drivers.vif.base import VifDriver
from bmd.errors import BmdError
from bmd.plugins import CONSOLE_GROUP, DEPLOY_GROUP, POWER_GROUP, VIF_GROUP, build_plugin, load_plugin
from bmd.secrets import SecretBox


class DriverFactory:
    """Builds each node's :class:`NodeDriver`; owns (and closes) every interface it built."""

    def __init__(self, settings: Settings, secret_box: SecretBox) -> None:
        d = settings.driver
        load_plugin(POWER_GROUP, d.default_power_driver, PowerInterface, what="driver.default_power_driver")
        deploy_cls = load_plugin(DEPLOY_GROUP, d.deploy_driver, DeployInterface, what="driver.deploy_driver")
        vif_cls = load_plugin(VIF_GROUP, d.vif_driver, VifDriver, what="driver.vif_driver")
        console_cls = load_plugin(CONSOLE_GROUP, d.console_interface, ConsoleInterface, what="driver.console_interface")
        self.settings = settings
        self.power = PowerRegistry(settings, secret_box)
        self.deploy: DeployInterface = build_plugin(deploy_cls, settings)
        self.vif: VifDriver = build_plugin(vif_cls, settings)
        self.console: ConsoleInterface = build_plugin(console_cls, settings)
        self.inspect: InspectInterface = NoInspect()

    def for_node(self, node: NodeFacts | Any) -> NodeDriver:
        """The node's composition. ConfigError for an unknown ``pm_driver``, ConfigError/InvalidInput when its
        BMC password does not decrypt; no I/O."""
        return NodeDriver(
            power=self.power.get(node.pm_driver),
            access=self.power.access(node),
            deploy=self.deploy,
            vif=self.vif,
            console=self.console,
            inspect=self.inspect,
        )

    def validate(self, node: NodeFacts) -> NodeDriver:
        """The node's composition, after every interface accepted the node (the spawn path's check)."""
        driver = self.for_node(node)
        driver.validate(node)
        return driver

    def blocker(self, node: NodeFacts) -> str:
        """Why the node cannot take a deploy, ``<slot>: <reason>`` ('' when it can): the selection's check,
        the same ``validate`` as :meth:`validate`. Cheap, no I/O."""
        try:
            driver = self.for_node(node)
        except BmdError as err:  # its pm_driver is unknown or its BMC fields cannot be read
            return f"power: {err}"
        return driver.blocker(node)

    async def close(self) -> None:
        """Close every interface: the deploy and vif interfaces, then the power drivers."""
        try:
            await self.deploy.close()
            await self.vif.close()
            await self.console.close()
        finally:
            await self.power.close()
