"""IPMIClient: cached RMCP+ sessions per BMC over one shared UDP endpoint, every call bounded."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog

from bmd.errors import BMCAuthError, BMCError, BMCTimeout, BMCUnreachable, ConfigError, InvalidInput
from bmd.ipmi.commands import (
    BootFlags,
    ChassisStatus,
    DeviceId,
    decode_boot_flags,
    decode_chassis_status,
    decode_device_id,
    encode_boot_flags,
)
from bmd.ipmi.crypto import SUITES
from bmd.ipmi.handshake import Credentials, HandshakeRestart, SuiteRejected, Timing, establish
from bmd.ipmi.protocol import (
    BUSY_CODES,
    AppCmd,
    BootParam,
    BootTarget,
    ChassisCmd,
    ChassisControl,
    CompletionCodeError,
    NetFn,
    Privilege,
    describe_completion,
)
from bmd.ipmi.session import ClientStats, Session, Sockaddr
from bmd.ipmi.sol import SolConsole, SolSettings, activate
from bmd.ipmi.transport import Endpoint, open_endpoint
from bmd.ipmi.wire import Response

log = structlog.get_logger(__name__)
_LOST_PRIVILEGE = 0xD4  # "insufficient privilege level" on a session that had it


@dataclass(frozen=True, slots=True)
class IPMISettings:
    """Knobs of the native client. Validated on construction (ConfigError names the field)."""

    timeout: float = 5.0  # whole call, session setup included (waiting for an in-flight slot excluded)
    attempt_timeout: float = 1.0  # wait for one answer before retransmitting
    retries: int = 2  # retransmissions of one message (so retries + 1 sends), within ``timeout``
    max_in_flight: int = 128  # calls talking to BMCs at once; more wait for a slot
    cipher_suites: tuple[int, ...] = (17, 3)  # in order of preference; 17 falls back to 3 when refused
    privilege: Privilege = Privilege.ADMINISTRATOR
    session_idle_timeout: float = 25.0  # re-open a cached session idle longer (BMCs drop them at ~60 s)
    receive_buffer: int = 4 * 1024 * 1024  # SO_RCVBUF, for answer bursts from many BMCs
    bind_ipv4: str = "0.0.0.0"
    bind_ipv6: str = "::"
    bind_port: int = 0  # local UDP port (0: any), e.g. for a firewall rule
    busy_retry_delay: float = 0.1  # pause before asking again after "node busy"-like completion codes

    def __post_init__(self) -> None:
        for name in ("timeout", "attempt_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ipmi.{name} must be > 0")
        if self.retries < 0:
            raise ConfigError("ipmi.retries must be >= 0")
        if self.max_in_flight < 1:
            raise ConfigError("ipmi.max_in_flight must be >= 1")
        if not self.cipher_suites or any(s not in SUITES for s in self.cipher_suites):
            raise ConfigError(f"ipmi.cipher_suites must be a non-empty list of {sorted(SUITES)}")
        if self.session_idle_timeout < 0 or self.busy_retry_delay < 0:
            raise ConfigError("ipmi.session_idle_timeout and ipmi.busy_retry_delay must be >= 0")


@dataclass(frozen=True, slots=True)
class BMCTarget:
    """Where a BMC is and how to log in. ``password`` and ``kg`` never appear in repr or logs."""

    host: str
    port: int = 623
    username: str = ""
    password: str = field(default="", repr=False)
    kg: bytes | None = field(default=None, repr=False)
    # What the client files this BMC's session under: the secrets only as a digest. Computed here, once
    # per target, rather than on every call (a driver keeps one target per BMC).
    cache_key: tuple[str, int, str, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.host:
            raise InvalidInput("BMC host is empty", field="pm_address")
        if not 0 < self.port < 65536:
            raise InvalidInput(f"BMC port {self.port!r} out of range", field="pm_address")
        if len(self.username.encode()) > 16:
            raise InvalidInput("IPMI user names are at most 16 bytes", field="pm_user")
        if len(self.password.encode()) > 20:
            raise InvalidInput("IPMI 2.0 passwords are at most 20 bytes", field="pm_password")
        secret = hashlib.sha256(self.password.encode() + b"\0" + (self.kg or b"")).digest()
        object.__setattr__(self, "cache_key", (self.host, self.port, self.username, secret))

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(slots=True)
class _Entry:
    """Per BMC: one request at a time (BMCs are fragile), and the cached session."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    session: Session | None = None
    suite: int | None = None  # the cipher suite this BMC last agreed to


class IPMIClient:
    """asyncio-native IPMI 2.0 RMCP+ client. Create inside the event loop; ``await close()`` at the end."""

    def __init__(self, settings: IPMISettings | None = None) -> None:
        self.settings = settings or IPMISettings()
        self.stats = ClientStats()
        self._slots = asyncio.Semaphore(self.settings.max_in_flight)
        self._entries: dict[tuple[str, int, str, bytes], _Entry] = {}
        self._endpoints: dict[int, Endpoint] = {}
        self._endpoint_lock = asyncio.Lock()
        self._closed = False

    # -- commands ----------------------------------------------------------------------------------
    async def command(self, target: BMCTarget, netfn: int, command: int, data: bytes = b"") -> bytes:
        """Like :meth:`call`, but a non-zero completion code raises CompletionCodeError."""
        response = await self.call(target, netfn, command, data)
        if response.code:
            raise CompletionCodeError(
                f"BMC {target.label}: netfn 0x{netfn:02X} command 0x{command:02X} failed: "
                f"{describe_completion(response.code)}",
                response.code,
            )
        return response.data

    async def get_device_id(self, target: BMCTarget) -> DeviceId:
        return decode_device_id(await self.command(target, NetFn.APP, AppCmd.GET_DEVICE_ID))

    async def get_chassis_status(self, target: BMCTarget) -> ChassisStatus:
        return decode_chassis_status(await self.command(target, NetFn.CHASSIS, ChassisCmd.GET_STATUS))

    async def get_power_state(self, target: BMCTarget) -> bool:
        """True when the chassis power is on."""
        return (await self.get_chassis_status(target)).power_on

    async def chassis_control(self, target: BMCTarget, action: ChassisControl) -> None:
        await self.command(target, NetFn.CHASSIS, ChassisCmd.CONTROL, bytes((action,)))

    async def get_boot_flags(self, target: BMCTarget) -> BootFlags:
        data = bytes((BootParam.BOOT_FLAGS, 0, 0))
        return decode_boot_flags(await self.command(target, NetFn.CHASSIS, ChassisCmd.GET_BOOT_OPTIONS, data))

    async def set_boot_device(
        self, target: BMCTarget, device: BootTarget, *, persistent: bool = False, efi: bool = False
    ) -> None:
        """Boot flags parameter 5, wrapped in the set-in-progress lock when the BMC implements it."""
        set_boot = (NetFn.CHASSIS, ChassisCmd.SET_BOOT_OPTIONS)
        locked = (await self.call(target, *set_boot, bytes((BootParam.SET_IN_PROGRESS, 1)))).code == 0
        try:
            # Keep the BMC from clearing the flags after 60 s without a chassis control (28.13, param 3).
            await self.call(target, *set_boot, bytes((BootParam.VALID_BIT_CLEARING, 0x08)))
            await self.command(target, *set_boot, encode_boot_flags(device, persistent, efi))
        finally:
            if locked:
                await self.call(target, *set_boot, bytes((BootParam.SET_IN_PROGRESS, 0)))

    # -- serial over LAN -----------------------------------------------------------------------------
    @asynccontextmanager
    async def sol(
        self, target: BMCTarget, *, take_over: bool = False, settings: SolSettings | None = None
    ) -> AsyncIterator[SolConsole]:
        """``async with client.sol(target) as console``: the SOL payload on a session of its own.

        ``take_over`` deactivates the payload when another session holds it (completion code 0x80 otherwise
        raises CompletionCodeError). Leaving the block deactivates the payload and closes the session.
        """
        console = await self.open_sol(target, take_over=take_over, settings=settings)
        try:
            yield console
        finally:
            await console.close()

    async def open_sol(
        self, target: BMCTarget, *, take_over: bool = False, settings: SolSettings | None = None
    ) -> SolConsole:
        """Open a dedicated session, activate SOL on it; the caller must ``await console.close()``."""
        if self._closed:
            raise BMCError("the IPMI client is closed")
        s = self.settings
        entry = _Entry()  # not cached: the console holds its session for as long as it lives
        for (host, port, _user, _secret), known in self._entries.items():
            if (host, port) == (target.host, target.port) and known.suite is not None:
                entry.suite = known.suite
        async with self._slots:
            try:
                async with asyncio.timeout(s.timeout):
                    session = await self._open(target, entry)
                    try:
                        return await activate(
                            session, settings or SolSettings(), s.retries + 1, s.attempt_timeout, take_over
                        )
                    except BaseException:
                        try:
                            session.endpoint.send(session.close_packet(), session.peer)
                        except BMCError:
                            pass
                        session.detach()
                        raise
            except TimeoutError as err:
                raise BMCTimeout(f"no SOL from BMC {target.label} within {s.timeout:.1f}s") from err

    # -- the one entry point every command goes through --------------------------------------------
    async def call(self, target: BMCTarget, netfn: int, command: int, data: bytes = b"") -> Response:
        """Send one command and return the BMC's response (any completion code) within the timeout."""
        if self._closed:
            raise BMCError("the IPMI client is closed")
        key = target.cache_key
        async with self._slots:
            try:
                async with asyncio.timeout(self.settings.timeout):
                    entry = self._entries.get(key)
                    if entry is None:
                        entry = self._entries[key] = _Entry()
                    async with entry.lock:
                        return await self._call_locked(entry, target, netfn, command, data)
            except TimeoutError as err:
                raise BMCTimeout(f"no answer from BMC {target.label} within {self.settings.timeout:.1f}s") from err

    async def _call_locked(self, entry: _Entry, target: BMCTarget, netfn: int, command: int, data: bytes) -> Response:
        s = self.settings
        loop = asyncio.get_running_loop()
        session = entry.session
        if session is not None and loop.time() - session.last_used > s.session_idle_timeout:
            self._drop(entry, polite=True)
            session = None
        reopened = False
        while True:
            reused = session is not None
            if session is not None:
                self.stats.sessions_reused += 1
                try:
                    # A cached session may have expired at the BMC, which then stays silent: allow one
                    # retransmission (a slow BMC answers the first), then set up a new session.
                    response = await session.request(netfn, command, data, min(2, s.retries + 1), s.attempt_timeout)
                except BMCTimeout:
                    self.stats.sessions_expired += 1
                    log.debug("ipmi_session_expired", bmc=target.label)
                    self._drop(entry, polite=False)
                    session = None
                    continue
            else:
                session = await self._open(target, entry)
                entry.session = session
                try:
                    response = await session.request(netfn, command, data, s.retries + 1, s.attempt_timeout)
                except BMCTimeout:
                    self._drop(entry, polite=False)
                    raise
            if response.code == _LOST_PRIVILEGE and reused and not reopened:
                # The BMC no longer grants this session its privilege (it was reset and the session ID
                # reused, or it dropped the session's state): log in again, once.
                self.stats.sessions_expired += 1
                self._drop(entry, polite=False)
                session, reopened = None, True
                continue
            if response.code in BUSY_CODES:
                log.debug("ipmi_bmc_busy", bmc=target.label, code=describe_completion(response.code))
                await asyncio.sleep(s.busy_retry_delay)
                continue
            return response

    def _drop(self, entry: _Entry, polite: bool) -> None:
        session, entry.session = entry.session, None
        if session is None:
            return
        if polite and not session.closed:
            try:  # Close Session, not waiting for the answer: frees the BMC's slot early
                session.endpoint.send(session.close_packet(), session.peer)
            except BMCError:
                pass
        session.detach()

    # -- session setup -----------------------------------------------------------------------------
    async def _open(self, target: BMCTarget, entry: _Entry) -> Session:
        """Set up a session, trying the cipher suites in order (the one that worked last time first).

        A refused suite falls back to the next at once. A proposal left unanswered after every attempt
        also falls back (OpenIPMI drops suite 17 proposals silently): that costs (retries + 1) attempt
        waits once per BMC, since the suite that worked is remembered. Falling back after a single
        unanswered attempt would downgrade BMCs that are merely busy.
        """
        s = self.settings
        family, peer = await self._resolve(target)
        endpoint = await self._endpoint(family)
        creds = Credentials(target.username.encode(), target.password.encode(), target.kg)
        restarts = 0
        suites = sorted(s.cipher_suites, key=lambda i: i != entry.suite)
        while suites:
            suite = SUITES[suites[0]]
            timing = Timing(s.retries + 1, s.attempt_timeout, silence_is_refusal=len(suites) > 1)
            session = self._new_session(endpoint, peer, target.label)
            try:
                await establish(session, creds, suite, s.cipher_suites, s.privilege, timing)
            except SuiteRejected as err:
                session.detach()
                suites.pop(0)
                self.stats.suite_fallbacks += 1
                log.debug("ipmi_cipher_suite_refused", bmc=target.label, cipher_suite=suite.id, reason=str(err))
                continue
            except HandshakeRestart as err:
                session.detach()
                restarts += 1
                self.stats.handshake_restarts += 1
                if restarts > s.retries:
                    raise BMCError(str(err)) from err
                continue
            except BMCAuthError:
                session.detach()
                log.debug("ipmi_auth_failed", bmc=target.label, user=target.username)
                raise
            except BaseException:
                session.detach()
                raise
            self.stats.sessions_opened += 1
            session.last_used = asyncio.get_running_loop().time()
            entry.suite = session.suite.id if session.suite else None
            return session
        raise BMCError(f"BMC {target.label} accepts none of the cipher suites {list(s.cipher_suites)}")

    def _new_session(self, endpoint: Endpoint, peer: Sockaddr, label: str) -> Session:
        console_id = random.randrange(1, 1 << 32)
        while endpoint.in_use(console_id):
            console_id = random.randrange(1, 1 << 32)
        session = Session(endpoint, peer, console_id, self.stats, label)
        endpoint.register(session)
        return session

    async def _resolve(self, target: BMCTarget) -> tuple[int, Sockaddr]:
        try:
            ip = ipaddress.ip_address(target.host)
        except ValueError:
            pass
        else:
            if ip.version == 6:
                return socket.AF_INET6, (target.host, target.port, 0, 0)
            return socket.AF_INET, (target.host, target.port)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
        except OSError as err:
            raise BMCUnreachable(f"cannot resolve BMC host {target.host!r}: {err}") from err
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr

    async def _endpoint(self, family: int) -> Endpoint:
        endpoint = self._endpoints.get(family)
        if endpoint is None:
            async with self._endpoint_lock:
                endpoint = self._endpoints.get(family)
                if endpoint is None:
                    bind = self.settings.bind_ipv6 if family == socket.AF_INET6 else self.settings.bind_ipv4
                    endpoint = await open_endpoint(
                        family, (bind, self.settings.bind_port), self.settings.receive_buffer, self.stats
                    )
                    self._endpoints[family] = endpoint
        return endpoint

    # -- lifecycle ---------------------------------------------------------------------------------
    async def close_session(self, target: BMCTarget) -> None:
        """Log out of ``target`` if a session is cached (Close Session, answer awaited briefly)."""
        for key, entry in list(self._entries.items()):
            if key[:3] == (target.host, target.port, target.username):
                await self._locked_logout(entry)

    async def _locked_logout(self, entry: _Entry) -> None:
        async with self._slots, entry.lock:
            await self._logout(entry)

    async def _logout(self, entry: _Entry) -> None:
        session = entry.session
        if session is None:
            return
        entry.session = None
        try:
            async with asyncio.timeout(min(1.0, self.settings.timeout)):
                await session.request(NetFn.APP, AppCmd.CLOSE_SESSION, session.bmc_id.to_bytes(4, "little"), 1, 1.0)
        except (TimeoutError, BMCError) as err:
            log.debug("ipmi_close_session_failed", bmc=session.label, error=str(err))
        finally:
            session.detach()

    async def close(self) -> None:
        """Close every cached session (best effort, bounded) and the sockets."""
        if self._closed:
            return
        self._closed = True
        entries = [e for e in self._entries.values() if e.session is not None]
        await asyncio.gather(*(self._locked_logout(e) for e in entries))
        for endpoint in self._endpoints.values():
            await endpoint.close()
        self._endpoints.clear()
        self._entries.clear()
