"""Power drivers by name (``pm_driver``), built once from the settings and shared by every node.

Drivers are entry points of group ``bmd.drivers.power``, loaded and built by the one plugin loader
(:mod:`bmd.plugins`: ``from_settings(settings)`` when the class has it, else no arguments). ``for_node``
also builds the node's ``BMCAccess``, decrypting its BMC password (which never leaves this path in clear
text), and wraps the driver in :class:`~bmd.drivers.power.metered.MeteredPower`: every BMC call goes through
``for_node``, so this is where their latency and errors are measured (``meter``, read by ``/metrics``).
:class:`~bmd.drivers.factory.DriverFactory` owns the registry and puts its drivers in each node's
composition.
"""

from __future__ import annotations

from typing import Any

from bmd.config import Settings
from bmd.db.models import BareMetalNode
from bmd.drivers.power.base import BMCAccess, PowerInterface
from bmd.drivers.power.metered import MeteredPower, PowerCallMeter
from bmd.plugins import POWER_GROUP, build_plugin, load_plugin
from bmd.secrets import SecretBox


class PowerRegistry:
    def __init__(self, settings: Settings, secret_box: SecretBox) -> None:
        self.settings = settings
        self.secret_box = secret_box
        self._drivers: dict[str, PowerInterface] = {}
        # Decrypting a password costs ~20 µs: a sync pass over 10,000 nodes reuses the access it built last time.
        self._access: dict[int, tuple[tuple[Any, ...], BMCAccess]] = {}
        self.meter = PowerCallMeter()
        self._metered: dict[str, MeteredPower] = {}

    def get(self, name: str) -> PowerInterface:
        driver = self._drivers.get(name)
        if driver is None:
            cls = load_plugin(POWER_GROUP, name, PowerInterface, what="pm_driver")
            driver = self._drivers[name] = build_plugin(cls, self.settings)
        return driver

    def register(self, name: str, driver: PowerInterface) -> None:
        """Use this driver instance for ``name`` (tests keep a handle on a fake this way)."""
        self._drivers[name] = driver
        self._metered.pop(name, None)

    def access(self, node: Any) -> BMCAccess:
        key = (node.pm_address, node.pm_user, node.pm_password)
        cached = self._access.get(node.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        password = self.secret_box.decrypt(node.pm_password) if node.pm_password else None
        access = BMCAccess(node_id=node.id, address=node.pm_address or "", username=node.pm_user, password=password)
        self._access[node.id] = (key, access)
        return access

    def for_node(self, node: BareMetalNode | Any) -> tuple[PowerInterface, BMCAccess]:
        """The node's driver, metered (its calls are timed and counted), and its access, validated."""
        name = node.pm_driver
        driver = self.get(name)
        metered = self._metered.get(name)
        if metered is None or metered.inner is not driver:
            metered = self._metered[name] = MeteredPower(name, driver, self.meter)
        access = self.access(node)
        driver.validate(access)
        return metered, access

    async def close(self) -> None:
        for driver in self._drivers.values():
            await driver.close()
        self._drivers.clear()
        self._metered.clear()
