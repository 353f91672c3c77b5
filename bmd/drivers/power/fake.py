"""``fake``: in-process power state per node, no I/O. A real plugin, for tests, demos and dry runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bmd.drivers.power.base import BMCAccess, BootDevice, BootDeviceInfo, PowerInterface, PowerState
from bmd.errors import BMCError, InvalidInput


@dataclass(slots=True)
class FakeBMC:
    """What the fake driver keeps for one node (read it in tests)."""

    power: PowerState = PowerState.OFF
    boot: BootDeviceInfo = field(default_factory=lambda: BootDeviceInfo(device=None, persistent=False))
    failure: BMCError | None = None  # raised by every verb while set
    calls: list[str] = field(default_factory=list)
    boots: int = 0
    gate: asyncio.Event | None = None  # while set to an unset event, every verb waits for it (a slow BMC)
    in_flight: int = 0  # verbs running now
    max_in_flight: int = 0  # the most that ever ran at once


class FakePower(PowerInterface):
    name = "fake"

    def __init__(self, initial: PowerState = PowerState.OFF) -> None:
        self.initial = initial
        self._bmcs: dict[int, FakeBMC] = {}

    def validate_address(self, address: str) -> None:
        """Any non-empty text will do."""
        if not address.strip():
            raise InvalidInput("pm_address must not be empty", field="pm_address")

    def validate(self, access: BMCAccess) -> None:
        """The fake needs nothing: any node can use it."""

    def bmc(self, node_id: int) -> FakeBMC:
        state = self._bmcs.get(node_id)
        if state is None:
            state = self._bmcs[node_id] = FakeBMC(power=self.initial)
        return state

    def inject_failure(self, node_id: int, error: BMCError | None) -> None:
        """Make every verb on ``node_id`` raise ``error`` until called again with None."""
        self.bmc(node_id).failure = error

    async def _use(self, access: BMCAccess, verb: str) -> FakeBMC:
        state = self.bmc(access.node_id)
        state.calls.append(verb)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.gate is not None:
                await state.gate.wait()
            if state.failure is not None:
                raise state.failure
            return state
        finally:
            state.in_flight -= 1

    def _boot(self, state: FakeBMC) -> None:
        state.boots += 1
        if not state.boot.persistent:  # a next-boot override is consumed by the boot
            state.boot = BootDeviceInfo(device=None, persistent=False)

    async def get_power_state(self, access: BMCAccess) -> PowerState:
        return (await self._use(access, "get_power_state")).power

    async def set_power_state(self, access: BMCAccess, state: PowerState) -> None:
        if state not in (PowerState.ON, PowerState.OFF):
            raise InvalidInput(f"cannot set power state {state!r}", field="target")
        bmc = await self._use(access, f"set_power_state:{state.value}")
        if state is PowerState.ON and bmc.power is not PowerState.ON:
            self._boot(bmc)
        bmc.power = state

    async def reboot(self, access: BMCAccess) -> None:
        bmc = await self._use(access, "reboot")
        self._boot(bmc)
        bmc.power = PowerState.ON

    async def set_boot_device(self, access: BMCAccess, device: BootDevice, persistent: bool = False) -> None:
        (await self._use(access, f"set_boot_device:{device.value}")).boot = BootDeviceInfo(device, persistent)

    async def get_boot_device(self, access: BMCAccess) -> BootDeviceInfo:
        return (await self._use(access, "get_boot_device")).boot
