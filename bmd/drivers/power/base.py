"""The power interface every BMC driver implements.

A driver receives a :class:`BMCAccess` (decrypted credentials and address, built by the caller from a node
row) rather than the ORM object, so drivers never touch the database or the secret store.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any

from bmd.errors import InvalidInput


class PowerState(enum.StrEnum):
    ON = "power on"
    OFF = "power off"
    ERROR = "error"


class BootDevice(enum.StrEnum):
    PXE = "pxe"
    DISK = "disk"
    BIOS = "bios"


@dataclass(frozen=True, slots=True)
class BMCAccess:
    """Everything a power driver needs to reach one node's BMC.

    ``address`` is what the operator stored in ``pm_address``: ``host`` or ``host:port`` for IPMI, an
    ``http(s)://`` URL of the ComputerSystem for Redfish. ``password`` is already decrypted; it must never
    be logged (``__repr__`` hides it).
    """

    node_id: int
    address: str
    username: str | None
    password: str | None = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BootDeviceInfo:
    device: BootDevice | None
    persistent: bool


class PowerInterface(abc.ABC):
    """What bmd asks of a BMC. All verbs are bounded by the driver's timeout and raise BMC* errors."""

    name: str = ""

    def validate_address(self, address: str) -> None:
        """Cheap, no I/O: InvalidInput naming ``pm_address`` when this driver could never use ``address``.
        The API calls it at enroll and on change; ``validate`` calls it before every use. Accepts anything
        by default (a third-party driver that does not say)."""
        return None

    def validate(self, access: BMCAccess) -> None:
        """Cheap, no I/O: raise InvalidInput naming the field when the node cannot be driven."""
        if not access.address:
            raise InvalidInput(f"pm_address is required for power driver {self.name!r}", field="pm_address")
        self.validate_address(access.address)

    @abc.abstractmethod
    async def get_power_state(self, access: BMCAccess) -> PowerState: ...

    @abc.abstractmethod
    async def set_power_state(self, access: BMCAccess, state: PowerState) -> None: ...

    @abc.abstractmethod
    async def reboot(self, access: BMCAccess) -> None: ...

    @abc.abstractmethod
    async def set_boot_device(self, access: BMCAccess, device: BootDevice, persistent: bool = False) -> None: ...

    @abc.abstractmethod
    async def get_boot_device(self, access: BMCAccess) -> BootDeviceInfo: ...

    async def close(self) -> None:
        """Release sockets, sessions and threads. Called once at service stop."""
        return None
