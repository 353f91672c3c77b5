"""Power drivers by name (``pm_driver``), built once from the settings and shared by every node.

Drivers are entry points of group ``bmd.drivers.power``. A driver class with a ``from_settings(settings)``
classmethod is built with it, any other with no arguments. ``for_node`` also builds the node's
``BMCAccess``, decrypting its BMC password (which never leaves this path in clear text).
"""

from __future__ import annotations

from typing import Any

from bmd.config import Settings
from bmd.db.models import BareMetalNode
from bmd.drivers.power.base import BMCAccess, PowerInterface
from bmd.plugins import POWER_GROUP, load_plugin
from bmd.secrets import SecretBox


def _ipmi(cls: Any, s: Settings) -> PowerInterface:
    from bmd.drivers.power.ipmi import IPMIPowerSettings
    from bmd.ipmi import IPMISettings

    client = IPMISettings(timeout=s.ipmi.timeout, retries=s.ipmi.retries, max_in_flight=s.ipmi.max_in_flight)
    return cls(IPMIPowerSettings(client=client, min_command_interval=s.ipmi.min_command_interval))  # type: ignore[no-any-return]


def _pyghmi(cls: Any, s: Settings) -> PowerInterface:
    from bmd.drivers.power.ipmi_pyghmi import PyghmiPowerSettings

    return cls(PyghmiPowerSettings(timeout=s.ipmi.timeout * 2, min_command_interval=s.ipmi.min_command_interval))  # type: ignore[no-any-return]


def _redfish(cls: Any, s: Settings) -> PowerInterface:
    from bmd.drivers.power.redfish import RedfishSettings

    return cls(RedfishSettings(timeout=s.redfish.timeout, verify_tls=s.redfish.verify_tls))  # type: ignore[no-any-return]


# bmd's own drivers take their settings from the config sections; a third-party driver class provides
# ``from_settings(settings)`` or takes no arguments.
BUILDERS = {"ipmi": _ipmi, "ipmi-pyghmi": _pyghmi, "redfish": _redfish}


class PowerRegistry:
    def __init__(self, settings: Settings, secret_box: SecretBox) -> None:
        self.settings = settings
        self.secret_box = secret_box
        self._drivers: dict[str, PowerInterface] = {}
        # Decrypting a password costs ~20 µs: a sync pass over 10,000 nodes reuses the access it built last time.
        self._access: dict[int, tuple[tuple[Any, ...], BMCAccess]] = {}

    def get(self, name: str) -> PowerInterface:
        driver = self._drivers.get(name)
        if driver is None:
            cls: Any = load_plugin(POWER_GROUP, name, what="pm_driver")
            if name in BUILDERS:
                driver = BUILDERS[name](cls, self.settings)
            elif hasattr(cls, "from_settings"):
                driver = cls.from_settings(self.settings)
            else:
                driver = cls()
            self._drivers[name] = driver
        return driver

    def register(self, name: str, driver: PowerInterface) -> None:
        """Use this driver instance for ``name`` (tests keep a handle on a fake this way)."""
        self._drivers[name] = driver

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
        driver = self.get(node.pm_driver)
        access = self.access(node)
        driver.validate(access)
        return driver, access

    async def close(self) -> None:
        for driver in self._drivers.values():
            await driver.close()
        self._drivers.clear()
