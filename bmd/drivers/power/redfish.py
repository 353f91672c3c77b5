"""Redfish power driver: ComputerSystem power and boot source override over aiohttp.

Address convention (``BMCAccess.address``, the node's ``pm_address``):

* ``http(s)://host[:port]/redfish/v1/Systems/<id>`` -- the ComputerSystem resource itself (preferred);
* ``http(s)://host[:port]`` or ``http(s)://host[:port]/redfish/v1`` -- the service root. The system is
  ``access.options["system_id"]`` (its ``Id``, the last segment of its URL in the Systems collection); when
  that option is absent the Systems collection must hold exactly one member. The resolution is cached.

Credentials travel as HTTP Basic auth on every request (no Redfish session); ``username=None`` sends none.
Verbs return once the BMC has accepted the request; with ``RedfishSettings.power_wait`` set they also wait
(polling every ``poll_interval``) until ``PowerState`` reads the target, raising BMCTimeout past the deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import structlog

from bmd.drivers.power.base import BMCAccess, BootDevice, BootDeviceInfo, PowerInterface, PowerState
from bmd.errors import (
    BMCAuthError,
    BMCError,
    BMCTimeout,
    BMCUnreachable,
    InvalidInput,
    UnsupportedOperation,
)

if TYPE_CHECKING:
    from bmd.config import Settings

log = structlog.get_logger(__name__)

RESET_ACTION = "#ComputerSystem.Reset"
_POWER_STATES: dict[str, PowerState] = {
    "On": PowerState.ON,
    "PoweringOn": PowerState.ON,
    "Off": PowerState.OFF,
    "PoweringOff": PowerState.OFF,
}
_BOOT_TARGETS: dict[BootDevice, str] = {
    BootDevice.PXE: "Pxe",
    BootDevice.DISK: "Hdd",
    BootDevice.BIOS: "BiosSetup",
}
_BOOT_DEVICES: dict[str, BootDevice] = {v: k for k, v in _BOOT_TARGETS.items()}
_HEADERS = {"Accept": "application/json", "OData-Version": "4.0"}


@dataclass(frozen=True, slots=True)
class RedfishSettings:
    """Tunables of the Redfish driver (``[power.redfish]`` in the config).

    ``timeout`` bounds each HTTP request end to end, ``connect_timeout`` its TCP/TLS connect.
    ``verify_tls=False`` accepts any certificate (lab BMCs); ``ca_file`` trusts a private CA instead.
    ``power_wait`` (seconds, None = do not wait) makes set_power_state/reboot/soft_power_off wait until the
    BMC reports the target state. ``graceful_power_off`` makes set_power_state(OFF) use GracefulShutdown.
    """

    timeout: float = 10.0
    connect_timeout: float = 5.0
    verify_tls: bool = True
    ca_file: str | None = None
    max_connections: int = 100
    max_connections_per_host: int = 2
    power_wait: float | None = None
    poll_interval: float = 0.5
    graceful_power_off: bool = False

    def __post_init__(self) -> None:
        for name in ("timeout", "connect_timeout", "poll_interval"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"redfish.{name} must be > 0", field=f"redfish.{name}")
        if self.power_wait is not None and self.power_wait <= 0:
            raise InvalidInput("redfish.power_wait must be > 0 or unset", field="redfish.power_wait")
        if self.max_connections < 1 or self.max_connections_per_host < 1:
            raise InvalidInput("redfish connection limits must be >= 1", field="redfish.max_connections")


@dataclass(frozen=True, slots=True)
class _System:
    url: str
    body: Mapping[str, Any]


def _is_system_url(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return len(parts) >= 2 and parts[-2] == "Systems"


def redfish_error_message(body: Any, text: str) -> str:
    """The human message of a Redfish error body (``error.message`` + ExtendedInfo), else the raw text."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        err = body["error"]
        parts = [str(err["message"])] if err.get("message") else []
        for info in err.get("@Message.ExtendedInfo") or []:
            if isinstance(info, Mapping) and info.get("Message") and info["Message"] not in parts:
                parts.append(str(info["Message"]))
        if not parts and err.get("code"):
            parts.append(str(err["code"]))
        if parts:
            return "; ".join(parts)
    return text.strip()[:200] or "no error body"


class RedfishPower(PowerInterface):
    """Power and boot control of one Redfish ComputerSystem per node, through one shared ClientSession."""

    name = "redfish"

    @classmethod
    def from_settings(cls, settings: Settings) -> RedfishPower:
        """From the ``[redfish]`` section."""
        return cls(RedfishSettings(timeout=settings.redfish.timeout, verify_tls=settings.redfish.verify_tls))

    def __init__(self, settings: RedfishSettings | None = None) -> None:
        self.settings = settings or RedfishSettings()
        self._session: aiohttp.ClientSession | None = None
        self._system_urls: dict[tuple[str, str | None], str] = {}

    # -- contract -------------------------------------------------------------------------------------
    def validate_address(self, address: str) -> None:
        try:
            url = urlsplit(address.strip())
            url.port  # noqa: B018 - raises ValueError when the port is not a number in 0-65535
        except ValueError as err:
            raise InvalidInput(f"pm_address is not a valid URL: {err}", field="pm_address") from err
        if url.scheme not in ("http", "https") or not url.hostname:
            raise InvalidInput(
                f"pm_address must be an http:// or https:// Redfish URL with a host, got {address!r}",
                field="pm_address",
            )
        if url.port == 0:
            raise InvalidInput("pm_address: port must be 1-65535", field="pm_address")
        path = url.path.rstrip("/")
        if not _is_system_url(path) and path not in ("", "/redfish/v1"):
            raise InvalidInput(
                "pm_address must be a Redfish service root or a .../Systems/<id> URL", field="pm_address"
            )

    def validate(self, access: BMCAccess) -> None:
        super().validate(access)
        if access.username is not None and ":" in access.username:
            raise InvalidInput("pm_user must not contain ':' (HTTP Basic auth)", field="pm_user")
        if access.username is not None and access.password is None:
            raise InvalidInput("pm_password is required when pm_user is set", field="pm_password")
        system_id = access.options.get("system_id")
        if system_id is not None and (not isinstance(system_id, str) or not system_id):
            raise InvalidInput("options.system_id must be a non-empty string", field="system_id")

    async def get_power_state(self, access: BMCAccess) -> PowerState:
        system = await self._get_system(access)
        return self._power_state(access, system)

    async def set_power_state(self, access: BMCAccess, state: PowerState) -> None:
        if state is PowerState.ON:
            await self._power(access, PowerState.ON, ("On", "ForceOn"))
        elif state is PowerState.OFF:
            graceful = self.settings.graceful_power_off
            await self._power(access, PowerState.OFF, ("GracefulShutdown",) if graceful else ("ForceOff",))
        else:
            raise InvalidInput(f"cannot set power state {str(state)!r}", field="target")

    async def soft_power_off(self, access: BMCAccess) -> None:
        """Ask the operating system to shut down (ResetType GracefulShutdown)."""
        await self._power(access, PowerState.OFF, ("GracefulShutdown",))

    async def reboot(self, access: BMCAccess) -> None:
        """Hard reboot (ForceRestart, else PowerCycle); a node that is off is powered on instead."""
        system = await self._get_system(access)
        if self._power_state(access, system) is PowerState.OFF:
            await self._power(access, PowerState.ON, ("On", "ForceOn"), system)
            return
        reset_type = await self._reset_type(access, system, ("ForceRestart", "PowerCycle"))
        await self._reset(access, system, reset_type)
        await self._maybe_wait(access, PowerState.ON)

    async def set_boot_device(self, access: BMCAccess, device: BootDevice, persistent: bool = False) -> None:
        system = await self._get_system(access)
        target = _BOOT_TARGETS[device]
        boot = system.body.get("Boot") or {}
        allowed = boot.get("BootSourceOverrideTarget@Redfish.AllowableValues")
        if isinstance(allowed, list) and target not in allowed:
            raise UnsupportedOperation(
                f"Redfish system {system.url} does not allow boot target {target} "
                f"(allowed: {', '.join(map(str, allowed))})"
            )
        enabled = "Continuous" if persistent else "Once"
        payload = {"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}}
        await self._request(access, "PATCH", system.url, payload)
        log.info("redfish_boot_device_set", node=access.node_id, target=target, enabled=enabled)

    async def get_boot_device(self, access: BMCAccess) -> BootDeviceInfo:
        system = await self._get_system(access)
        boot = system.body.get("Boot") or {}
        enabled = boot.get("BootSourceOverrideEnabled")
        if enabled == "Disabled":
            return BootDeviceInfo(device=None, persistent=False)
        target = boot.get("BootSourceOverrideTarget")
        device = _BOOT_DEVICES.get(str(target)) if target is not None else None
        if device is None and target not in (None, "None"):
            log.info("redfish_boot_target_unmapped", node=access.node_id, target=target)
        return BootDeviceInfo(device=device, persistent=enabled == "Continuous")

    async def wait_for_power_state(self, access: BMCAccess, state: PowerState, within: float) -> None:
        """Poll PowerState until it reads ``state``; BMCTimeout naming the last state seen after ``within`` s.

        Transitional states (PoweringOn/PoweringOff) do not count as arrived.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last = "unknown"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    system = await self._get_system(access)
            except TimeoutError:
                break
            last = str(system.body.get("PowerState"))
            if last in ("On", "Off") and _POWER_STATES[last] is state:
                return
            await asyncio.sleep(min(self.settings.poll_interval, max(deadline - loop.time(), 0)))
        raise BMCTimeout(
            f"Redfish system {access.address} did not reach {state} within {within:.1f}s (last PowerState {last})"
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- power helpers ---------------------------------------------------------------------------------
    async def _power(
        self,
        access: BMCAccess,
        target: PowerState,
        candidates: Sequence[str],
        system: _System | None = None,
    ) -> None:
        system = system or await self._get_system(access)
        current = self._power_state(access, system)
        if current is target:
            log.debug("redfish_power_already", node=access.node_id, state=str(target))
        else:
            reset_type = await self._reset_type(access, system, candidates)
            await self._reset(access, system, reset_type)
        await self._maybe_wait(access, target)

    async def _maybe_wait(self, access: BMCAccess, target: PowerState) -> None:
        if self.settings.power_wait is not None:
            await self.wait_for_power_state(access, target, self.settings.power_wait)

    async def _reset_type(self, access: BMCAccess, system: _System, candidates: Sequence[str]) -> str:
        """The first candidate the system advertises; the first candidate when it advertises nothing."""
        action = self._reset_action(system)
        allowed = action.get("ResetType@Redfish.AllowableValues")
        info_ref = action.get("@Redfish.ActionInfo")
        if not isinstance(allowed, list) and isinstance(info_ref, str):
            info = await self._request(access, "GET", urljoin(system.url, info_ref))
            for param in (info or {}).get("Parameters") or []:
                if isinstance(param, Mapping) and param.get("Name") == "ResetType":
                    allowed = param.get("AllowableValues")
        if not isinstance(allowed, list):
            return candidates[0]
        for candidate in candidates:
            if candidate in allowed:
                return candidate
        raise UnsupportedOperation(
            f"Redfish system {system.url} allows none of ResetType {', '.join(candidates)} "
            f"(allowed: {', '.join(map(str, allowed))})"
        )

    def _reset_action(self, system: _System) -> Mapping[str, Any]:
        actions = system.body.get("Actions") or {}
        action = actions.get(RESET_ACTION)
        if not isinstance(action, Mapping):
            raise UnsupportedOperation(f"Redfish system {system.url} has no {RESET_ACTION} action")
        return action

    async def _reset(self, access: BMCAccess, system: _System, reset_type: str) -> None:
        target = self._reset_action(system).get("target") or system.url + "/Actions/ComputerSystem.Reset"
        await self._request(access, "POST", urljoin(system.url, str(target)), {"ResetType": reset_type})
        log.info("redfish_reset_requested", node=access.node_id, reset_type=reset_type)

    @staticmethod
    def _power_state(access: BMCAccess, system: _System) -> PowerState:
        raw = system.body.get("PowerState")
        state = _POWER_STATES.get(str(raw))
        if state is None:
            log.warning("redfish_power_state_unknown", node=access.node_id, power_state=raw)
            return PowerState.ERROR
        return state

    # -- resources --------------------------------------------------------------------------------------
    async def _get_system(self, access: BMCAccess) -> _System:
        url = await self._system_url(access)
        body = await self._request(access, "GET", url)
        if not isinstance(body, Mapping):
            raise BMCError(f"Redfish system {url} returned no JSON object")
        return _System(url=url, body=body)

    async def _system_url(self, access: BMCAccess) -> str:
        system_id = access.options.get("system_id")
        key = (access.address, system_id)
        cached = self._system_urls.get(key)
        if cached is not None:
            return cached
        url = urlsplit(access.address)
        if _is_system_url(url.path.rstrip("/")):
            resolved = access.address.rstrip("/")
        else:
            origin = f"{url.scheme}://{url.netloc}"
            root = await self._request(access, "GET", origin + "/redfish/v1/")
            systems_ref = ((root or {}).get("Systems") or {}).get("@odata.id")
            if not isinstance(systems_ref, str):
                raise BMCError(f"Redfish service {origin} has no Systems collection")
            systems_url = urljoin(origin, systems_ref).rstrip("/")
            if system_id is not None:
                resolved = systems_url + "/" + quote(str(system_id), safe="")
            else:
                collection = await self._request(access, "GET", systems_url)
                members = [
                    m["@odata.id"]
                    for m in (collection or {}).get("Members") or []
                    if isinstance(m, Mapping) and isinstance(m.get("@odata.id"), str)
                ]
                if len(members) != 1:
                    raise BMCError(
                        f"Redfish service {origin} has {len(members)} systems; set options.system_id to choose one"
                    )
                resolved = urljoin(origin, members[0]).rstrip("/")
        self._system_urls[key] = resolved
        return resolved

    # -- HTTP ---------------------------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.settings
            tls: ssl.SSLContext | bool = True
            if not s.verify_tls:
                tls = False
            elif s.ca_file is not None:
                tls = ssl.create_default_context(cafile=s.ca_file)
            connector = aiohttp.TCPConnector(
                limit=s.max_connections, limit_per_host=s.max_connections_per_host, ssl=tls
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=s.timeout, connect=s.connect_timeout),
                headers=_HEADERS,
            )
        return self._session

    async def _request(self, access: BMCAccess, method: str, url: str, payload: Any = None) -> Any:
        """One HTTP exchange; the parsed JSON body (None when empty). Errors become BMC* exceptions."""
        headers = {}
        if access.username is not None:
            creds = f"{access.username}:{access.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(creds).decode("ascii")
        try:
            async with self._client().request(method, url, json=payload, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        except TimeoutError as err:
            limit = self.settings.timeout
            raise BMCTimeout(f"Redfish {method} {url}: no answer within {limit:.1f}s") from err
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as err:
            raise BMCError(f"Redfish {url}: TLS failure: {err}") from err
        except aiohttp.ClientConnectorError as err:
            raise BMCUnreachable(f"Redfish {url} unreachable: {err.os_error or err}") from err
        except aiohttp.ClientError as err:
            reason = str(err) or type(err).__name__
            raise BMCError(f"Redfish {method} {url} failed: {reason}") from err
        body: Any = None
        if text.strip():
            try:
                body = json.loads(text)
            except ValueError:
                body = None
        if status in (401, 403):
            raise BMCAuthError(
                f"Redfish {url} refused the credentials of user {access.username!r} "
                f"(HTTP {status}): {redfish_error_message(body, text)}"
            )
        if status >= 400:
            raise BMCError(f"Redfish {method} {url} failed (HTTP {status}): {redfish_error_message(body, text)}")
        if body is None and text.strip() and method == "GET":
            raise BMCError(f"Redfish {url} returned a body that is not JSON")
        return body
