"""``ipmi``: power through bmd's own asyncio RMCP+ client (:mod:`bmd.ipmi`)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from bmd.drivers.power.base import BMCAccess, BootDevice, BootDeviceInfo, PowerInterface, PowerState
from bmd.errors import BMCTimeout, ConfigError, InvalidInput
from bmd.ipmi import BMCTarget, BootTarget, ChassisControl, IPMIClient, IPMISettings

if TYPE_CHECKING:
    from bmd.config import Settings

log = structlog.get_logger(__name__)

DEFAULT_PORT = 623
_TO_TARGET = {
    BootDevice.PXE: BootTarget.PXE,
    BootDevice.DISK: BootTarget.DISK,
    BootDevice.BIOS: BootTarget.BIOS,
}
_FROM_TARGET = {v: k for k, v in _TO_TARGET.items()}


_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# Parsed addresses and built targets are kept for this many BMCs: a power sync pass asks for every node's
# target, and parsing it afresh each time was a fifth of bmd's CPU per BMC. Only valid ones are kept (an
# exception is not cached), so the bound is on enrolled addresses, not on what a client sends.
_CACHED_BMCS = 1 << 18


def _check_host(host: str, address: str, ipv6: bool) -> None:
    """An IPv6 literal where ``ipv6``, else an IPv4 literal or a DNS host name (RFC 1123 labels)."""
    if ipv6:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as err:
            raise InvalidInput(f"pm_address {address!r}: {host!r} is not an IPv6 address", "pm_address") from err
        return
    labels = host.rstrip(".").split(".") if len(host) <= 253 else []
    if not labels or not all(_LABEL.match(label) for label in labels):
        raise InvalidInput(f"pm_address {address!r}: {host!r} is not a host name or address", "pm_address")
    if all(label.isdigit() for label in labels):  # all numeric: it can only mean an IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError as err:
            raise InvalidInput(f"pm_address {address!r}: {host!r} is not an IPv4 address", "pm_address") from err


@functools.lru_cache(maxsize=_CACHED_BMCS)
def parse_pm_address(address: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (a bare IPv6 address takes the default port).

    ``host`` is a DNS name or an IPv4 literal; the port is 1-65535. The one parser of IPMI addresses:
    the API validates with it at enroll, the drivers use it to reach the BMC. Cheap, no I/O.
    """
    text = address.strip()
    port_text = ""
    ipv6 = True
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidInput(f"pm_address {address!r}: expected [ipv6]:port", field="pm_address")
        port_text = rest[1:]
        if rest and not port_text:
            raise InvalidInput(f"pm_address {address!r}: port must be 1-65535", field="pm_address")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        ipv6 = False
        if not port_text:
            raise InvalidInput(f"pm_address {address!r}: port must be 1-65535", field="pm_address")
    else:
        host = text
        ipv6 = ":" in text
    if not host:
        raise InvalidInput(f"pm_address {address!r} has no host", field="pm_address")
    _check_host(host, address, ipv6)
    if not port_text:
        return host, DEFAULT_PORT
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise InvalidInput(f"pm_address {address!r}: port must be 1-65535", field="pm_address")
    return host, int(port_text)


def validate_ipmi_address(address: str, driver: str) -> None:
    if not address:
        raise InvalidInput(f"pm_address is required for power driver {driver!r}", field="pm_address")
    parse_pm_address(address)


def validate_ipmi_access(access: BMCAccess, driver: str) -> None:
    _validated(access.address, access.username, access.password, driver)


@functools.lru_cache(maxsize=_CACHED_BMCS)
def _validated(address: str, username: str | None, password: str | None, driver: str) -> None:
    """:func:`validate_ipmi_access` on the fields, remembered when valid."""
    validate_ipmi_address(address, driver)
    if username is None:
        raise InvalidInput(f"pm_user is required for power driver {driver!r}", field="pm_user")
    if len(username.encode()) > 16:
        raise InvalidInput("pm_user: IPMI user names are at most 16 bytes", field="pm_user")
    if password is None:
        raise InvalidInput(f"pm_password is required for power driver {driver!r}", field="pm_password")
    if len(password.encode()) > 20:
        raise InvalidInput("pm_password: IPMI 2.0 passwords are at most 20 bytes", field="pm_password")


@functools.lru_cache(maxsize=_CACHED_BMCS)
def _target(address: str, username: str | None, password: str | None, driver: str) -> BMCTarget:
    """The validated target of these fields; one object per BMC, so the client's per-target work (its
    session key) is done once."""
    _validated(address, username, password, driver)
    host, port = parse_pm_address(address)
    return BMCTarget(host, port, username or "", password or "")


class CommandThrottle:
    """At most one change command per BMC per ``interval`` seconds (real BMCs crash under rapid commands).

    Reads are not throttled. The interval runs from the end of one command to the start of the next.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, float] = {}

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            wait = self._last.get(key, float("-inf")) + self.interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._last[key] = loop.time()


@dataclass(frozen=True, slots=True)
class IPMIPowerSettings:
    """``ipmi`` driver settings (config section ``ipmi``)."""

    client: IPMISettings = field(default_factory=IPMISettings)
    min_command_interval: float = 1.0  # between change commands to one BMC
    confirm_timeout: float = 30.0  # how long set_power_state/reboot wait for the BMC to report the state
    confirm_interval: float = 0.5  # between power reads while waiting
    # Report the boot device only while the BMC marks the boot flags valid (28.13). OpenIPMI's ipmi_sim
    # never sets the valid bit, so a deployment driving such BMCs turns this off.
    honour_boot_valid_bit: bool = True

    def __post_init__(self) -> None:
        if self.min_command_interval < 0:
            raise ConfigError("ipmi.min_command_interval must be >= 0")
        if not self.confirm_timeout > 0 or not self.confirm_interval > 0:
            raise ConfigError("ipmi.confirm_timeout and ipmi.confirm_interval must be > 0")


class IPMIPower(PowerInterface):
    """Power and boot device over IPMI 2.0 lanplus, with confirmation of every power change.

    ``set_power_state`` and ``reboot`` return once the BMC reports the requested state (polled every
    ``confirm_interval`` up to ``confirm_timeout``; BMCTimeout otherwise): callers record the state they
    read back, not the one they asked for.
    """

    name = "ipmi"

    @classmethod
    def from_settings(cls, settings: Settings) -> IPMIPower:
        """From the ``[ipmi]`` section."""
        s = settings.ipmi
        client = IPMISettings(timeout=s.timeout, retries=s.retries, max_in_flight=s.max_in_flight)
        return cls(IPMIPowerSettings(client=client, min_command_interval=s.min_command_interval))

    def __init__(self, settings: IPMIPowerSettings | None = None, client: IPMIClient | None = None) -> None:
        self.settings = settings or IPMIPowerSettings()
        self._own_client = client is None
        self._client = client
        self._throttle = CommandThrottle(self.settings.min_command_interval)

    @property
    def client(self) -> IPMIClient:
        if self._client is None:  # created lazily: it needs the running loop
            self._client = IPMIClient(self.settings.client)
        return self._client

    def validate_address(self, address: str) -> None:
        validate_ipmi_address(address, self.name)

    def validate(self, access: BMCAccess) -> None:
        validate_ipmi_access(access, self.name)

    def target(self, access: BMCAccess) -> BMCTarget:
        return _target(access.address, access.username, access.password, self.name)

    async def get_power_state(self, access: BMCAccess) -> PowerState:
        on = await self.client.get_power_state(self.target(access))
        return PowerState.ON if on else PowerState.OFF

    async def set_power_state(self, access: BMCAccess, state: PowerState) -> None:
        if state not in (PowerState.ON, PowerState.OFF):
            raise InvalidInput(f"cannot set power state {state!r}", field="target")
        target = self.target(access)
        want_on = state is PowerState.ON
        if await self.client.get_power_state(target) == want_on:
            return
        action = ChassisControl.POWER_ON if want_on else ChassisControl.POWER_OFF
        async with self._throttle.slot(target.label):
            await self.client.chassis_control(target, action)
        await self._confirm(target, want_on)
        log.info("power_state_changed", node=access.node_id, state=str(state))

    async def reboot(self, access: BMCAccess) -> None:
        """Power cycle when on, power on when off; returns when the BMC reports power on."""
        target = self.target(access)
        on = await self.client.get_power_state(target)
        async with self._throttle.slot(target.label):
            await self.client.chassis_control(target, ChassisControl.POWER_CYCLE if on else ChassisControl.POWER_ON)
        await self._confirm(target, True)
        log.info("node_rebooted", node=access.node_id)

    async def _confirm(self, target: BMCTarget, want_on: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.confirm_timeout
        while await self.client.get_power_state(target) != want_on:
            if loop.time() + self.settings.confirm_interval > deadline:
                raise BMCTimeout(
                    f"BMC {target.label} did not report power {'on' if want_on else 'off'} "
                    f"within {self.settings.confirm_timeout:.0f}s"
                )
            await asyncio.sleep(self.settings.confirm_interval)

    async def set_boot_device(self, access: BMCAccess, device: BootDevice, persistent: bool = False) -> None:
        target = self.target(access)
        async with self._throttle.slot(target.label):
            await self.client.set_boot_device(target, _TO_TARGET[device], persistent=persistent)

    async def get_boot_device(self, access: BMCAccess) -> BootDeviceInfo:
        flags = await self.client.get_boot_flags(self.target(access))
        if self.settings.honour_boot_valid_bit and not flags.valid:
            return BootDeviceInfo(device=None, persistent=False)
        device = _FROM_TARGET.get(flags.target) if isinstance(flags.target, BootTarget) else None
        return BootDeviceInfo(device=device, persistent=flags.persistent)

    async def close(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.close()
