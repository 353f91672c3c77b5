"""``ipmi-pyghmi``: power through pyghmi's IPMI client, the cross-check and baseline for ``ipmi``.

pyghmi is blocking and, measured here (shared/notes/bmc-peers.md), not safe from several threads. So:

- every pyghmi call runs on ONE dedicated thread (a single-worker executor), which also owns the cache of
  ``Command`` objects (one per BMC and credentials); calls queue behind each other;
- credentials are passed as bytes (with str, pyghmi's session cache mixes str and bytes keys and a
  second ``Command`` to the same BMC hangs forever);
- pyghmi's ``_io_sendto`` is replaced by one that does not switch the shared socket to blocking mode
  from the caller's thread (that races the I/O thread's non-blocking reads and can stall every session);
- each call is bounded by ``asyncio.wait_for`` around the executor future. The thread itself cannot be
  interrupted: after a timeout it finishes pyghmi's own wait (about 5 s for a dead BMC) before it takes
  the next call.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from bmd.drivers.power.base import BMCAccess, BootDevice, BootDeviceInfo, PowerInterface, PowerState
from bmd.drivers.power.ipmi import CommandThrottle, parse_pm_address, validate_ipmi_access, validate_ipmi_address
from bmd.errors import BMCAuthError, BMCError, BMCTimeout, BMCUnreachable, ConfigError, InvalidInput

if TYPE_CHECKING:
    from bmd.config import Settings

log = structlog.get_logger(__name__)
T = TypeVar("T")

_TO_PYGHMI = {BootDevice.PXE: "network", BootDevice.DISK: "hd", BootDevice.BIOS: "setup"}
_FROM_PYGHMI = {v: k for k, v in _TO_PYGHMI.items()}
_AUTH_MARKERS = (
    "password",
    "unauthorized name",
    "invalid role",
    "unauthorized role",
    "integrity check",
    "kg",
)
_TIMEOUT_MARKERS = ("timeout", "no longer connected", "timed out")
_patch_lock = threading.Lock()


def patch_pyghmi() -> None:
    """Install the ``_io_sendto`` workaround once per process (idempotent)."""
    from pyghmi.ipmi.private import session as pyghmi_session

    with _patch_lock:
        if getattr(pyghmi_session, "_bmd_patched", False):
            return

        def _io_sendto(mysocket: Any, packet: bytes, sockaddr: Any) -> None:
            if hasattr(mysocket, "fd"):
                mysocket = mysocket.fd
            try:
                mysocket.sendto(packet, sockaddr)
            except OSError:
                pass  # as pyghmi does: the datagram is lost and pyghmi's retry sends it again

        pyghmi_session._io_sendto = _io_sendto
        pyghmi_session._bmd_patched = True


def map_pyghmi_error(err: BaseException, label: str) -> BMCError:
    text = str(err) if str(err) not in ("", "None") else "timeout"
    lowered = text.lower()
    if isinstance(err, socket.gaierror):
        return BMCUnreachable(f"BMC {label}: {text}")
    if any(m in lowered for m in _AUTH_MARKERS):
        return BMCAuthError(f"BMC {label} refused the credentials: {text}")
    if any(m in lowered for m in _TIMEOUT_MARKERS):
        return BMCTimeout(f"BMC {label}: {text}")
    return BMCError(f"BMC {label}: {text}")


@dataclass(frozen=True, slots=True)
class PyghmiPowerSettings:
    timeout: float = 10.0  # per call, around the executor future
    min_command_interval: float = 1.0
    confirm_timeout: float = 30.0
    confirm_interval: float = 0.5

    def __post_init__(self) -> None:
        if not self.timeout > 0 or not self.confirm_timeout > 0 or not self.confirm_interval > 0:
            raise ConfigError("ipmi-pyghmi timeouts must be > 0")
        if self.min_command_interval < 0:
            raise ConfigError("ipmi-pyghmi min_command_interval must be >= 0")


class PyghmiPower(PowerInterface):
    name = "ipmi-pyghmi"

    @classmethod
    def from_settings(cls, settings: Settings) -> PyghmiPower:
        """From the ``[ipmi]`` section (pyghmi's own retries make one command take up to twice the timeout)."""
        s = settings.ipmi
        return cls(PyghmiPowerSettings(timeout=s.timeout * 2, min_command_interval=s.min_command_interval))

    def __init__(self, settings: PyghmiPowerSettings | None = None) -> None:
        self.settings = settings or PyghmiPowerSettings()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmd-pyghmi")
        self._commands: dict[tuple[str, int, str, bytes], Any] = {}  # only touched on the pyghmi thread
        self._throttle = CommandThrottle(self.settings.min_command_interval)
        patch_pyghmi()

    def validate_address(self, address: str) -> None:
        validate_ipmi_address(address, self.name)

    def validate(self, access: BMCAccess) -> None:
        validate_ipmi_access(access, self.name)

    # -- the pyghmi thread -------------------------------------------------------------------------
    def _command(self, host: str, port: int, user: str, password: str) -> Any:
        from pyghmi.ipmi import command

        key = (host, port, user, hashlib.sha256(password.encode()).digest())
        cmd = self._commands.get(key)
        if cmd is None or getattr(cmd.ipmi_session, "broken", False):
            cmd = command.Command(bmc=host, userid=user.encode(), password=password.encode(), port=port)
            self._commands[key] = cmd
        return cmd

    def _invoke(self, host: str, port: int, user: str, password: str, fn: Callable[[Any], T]) -> T:
        label = f"{host}:{port}"
        try:
            return fn(self._command(host, port, user, password))
        except Exception as err:
            for key in [k for k in self._commands if k[:3] == (host, port, user)]:
                del self._commands[key]  # a failed session is not reused
            raise map_pyghmi_error(err, label) from err

    async def _run(self, access: BMCAccess, fn: Callable[[Any], T]) -> T:
        self.validate(access)
        host, port = parse_pm_address(access.address)
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._invoke, host, port, access.username or "", access.password or "", fn
        )
        try:
            return await asyncio.wait_for(future, self.settings.timeout)
        except TimeoutError as err:
            raise BMCTimeout(f"BMC {host}:{port} did not answer within {self.settings.timeout:.1f}s") from err

    # -- verbs -------------------------------------------------------------------------------------
    async def get_power_state(self, access: BMCAccess) -> PowerState:
        result = await self._run(access, lambda c: c.get_power())
        return PowerState.ON if result.get("powerstate") == "on" else PowerState.OFF

    async def set_power_state(self, access: BMCAccess, state: PowerState) -> None:
        if state not in (PowerState.ON, PowerState.OFF):
            raise InvalidInput(f"cannot set power state {state!r}", field="target")
        if await self.get_power_state(access) == state:
            return
        word = "on" if state is PowerState.ON else "off"
        async with self._throttle.slot(access.address):
            await self._run(access, lambda c: c.set_power(word, wait=False))
        await self._confirm(access, state)

    async def reboot(self, access: BMCAccess) -> None:
        async with self._throttle.slot(access.address):
            await self._run(access, lambda c: c.set_power("boot", wait=False))  # on if off, else reset
        await self._confirm(access, PowerState.ON)

    async def _confirm(self, access: BMCAccess, state: PowerState) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.confirm_timeout
        while await self.get_power_state(access) != state:
            if loop.time() + self.settings.confirm_interval > deadline:
                raise BMCTimeout(f"BMC {access.address} did not report {state} in time")
            await asyncio.sleep(self.settings.confirm_interval)

    async def set_boot_device(self, access: BMCAccess, device: BootDevice, persistent: bool = False) -> None:
        name = _TO_PYGHMI[device]
        async with self._throttle.slot(access.address):
            result = await self._run(access, lambda c: c.set_bootdev(name, persist=persistent))
        if isinstance(result, dict) and "error" in result:
            raise BMCError(f"BMC {access.address}: {result['error']}")

    async def get_boot_device(self, access: BMCAccess) -> BootDeviceInfo:
        result = await self._run(access, lambda c: c.get_bootdev())
        device = _FROM_PYGHMI.get(result.get("bootdev"))
        # pyghmi reports flags without the valid bit as {"bootdev": "default", "persistent": True}
        return BootDeviceInfo(device=device, persistent=device is not None and bool(result.get("persistent")))

    async def close(self) -> None:
        def logout_all() -> None:
            for cmd in self._commands.values():
                try:
                    cmd.ipmi_session.logout()
                except Exception as err:  # noqa: BLE001 - logout is best effort
                    log.debug("pyghmi_logout_failed", error=str(err))
            self._commands.clear()

        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._executor, logout_all), 5.0)
        except TimeoutError:
            log.warning("pyghmi_close_timed_out")
        finally:
            self._executor.shutdown(wait=False)
