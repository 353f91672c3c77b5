"""Serial over LAN: the SOL payload (IPMI 2.0 chapter 15) inside an RMCP+ session.

A console is one dedicated RMCP+ session (never the cached command session) on which the SOL payload
(type 1, instance 1) was activated with Activate Payload (24.1, App 0x48), encrypted and authenticated
with the session's cipher suite like every other payload. SOL packets (15.9, table 15-2) carry a packet
sequence number 1-15 (0: an ACK-only packet), the sequence number they acknowledge, the number of
characters accepted from the acknowledged packet, and an operation/status byte.

- BMC → console: every data packet is acknowledged with its accepted character count (all of them);
  a retransmission (the same sequence number again: the BMC sends the next packet only once the previous
  one is acknowledged) is acknowledged again but not delivered twice.
- console → BMC: one packet in flight at a time. Characters written while one is in flight accumulate and
  go in the next packet (up to the BMC's inbound payload size). An unacknowledged packet is sent again with
  the same SOL sequence number; a partial ACK sends the rest in a new packet; a NACK pauses and resends.
- A break is a packet with the "generate break" operation bit.
- An idle session is kept alive with Get Device ID; Deactivate Payload (24.2, 0x49) and Close Session end it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from bmd.errors import BMCError, BMCTimeout
from bmd.ipmi.protocol import AppCmd, CompletionCodeError, NetFn, PayloadType, describe_completion
from bmd.ipmi.session import Session

log = structlog.get_logger(__name__)

SOL_PAYLOAD = 1
SOL_INSTANCE = 1
# Activate Payload auxiliary data byte 1 (24.1): encrypt + authenticate the payload, serial alerts deferred.
_ACTIVATE_AUX = 0x80 | 0x40 | 0x04
# console → BMC operation bits (table 15-2, byte 4)
OP_NACK = 0x40
OP_BREAK = 0x10
# BMC → console status bits
ST_NACK = 0x40
ST_UNAVAILABLE = 0x20
ST_DEACTIVATING = 0x10
ST_OVERRUN = 0x08
ST_BREAK = 0x04
# Activate Payload completion codes (24.1)
ACTIVATE_CODES = {
    0x80: "payload already active on another session",
    0x81: "payload type is disabled",
    0x82: "payload activation limit reached",
    0x83: "cannot activate payload with encryption",
    0x84: "cannot activate payload without encryption",
}
ALREADY_ACTIVE = 0x80


@dataclass(frozen=True, slots=True)
class SolSettings:
    ack_timeout: float = 1.0  # wait for the ACK of one packet before sending it again
    retries: int = 6  # re-sends of one packet (timeouts and NACKs) before the console fails
    nack_pause: float = 0.1  # after a NACK / "character transfer unavailable", before sending again
    keepalive: float = 15.0  # seconds of no command on the session before a Get Device ID
    max_chunk: int = 200  # characters per packet at most (also bounded by the BMC's inbound size)


class SolClosed(BMCError):
    """The console is closed (by us or the BMC); nothing more can be written."""


class SolConsole:
    """An active SOL payload. Use through :meth:`bmd.ipmi.IPMIClient.sol`."""

    def __init__(
        self,
        session: Session,
        settings: SolSettings,
        attempts: int,
        wait: float,
        inbound_size: int,
    ) -> None:
        self.session = session
        self.settings = settings
        self.label = session.label
        self._attempts = attempts
        self._wait = wait
        self._chunk = max(1, min(settings.max_chunk, (inbound_size or 0) - 4 if inbound_size > 4 else 200))
        self._commands = asyncio.Lock()  # one IPMI request at a time on the session
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._out = bytearray()  # accumulated, not yet accepted characters
        self._queued = 0  # characters ever queued
        self._accepted = 0  # characters ever accepted by the BMC
        self._breaks = 0  # breaks asked for and not yet sent
        self._changed = asyncio.Condition()
        self._pokes: set[asyncio.Task[None]] = set()
        self._out_seq = 0
        self._in_seq = 0  # last BMC packet sequence number delivered
        self._ack: tuple[int, asyncio.Future[tuple[int, int]]] | None = None
        self._error: BaseException | None = None
        self.closed = False
        self.break_seen = False  # the BMC reported a break on the serial line
        self.overruns = 0  # BMC reports of characters it dropped
        self.retransmissions = 0
        self.received = 0  # characters delivered to the reader
        loop = asyncio.get_running_loop()
        self._last_command = loop.time()
        session.sol_sink = self._received
        self._sender = asyncio.create_task(self._send_loop(), name=f"sol-send-{self.label}")
        self._keeper = asyncio.create_task(self._keepalive_loop(), name=f"sol-keepalive-{self.label}")

    @property
    def end_reason(self) -> str | None:
        """Why the console ended (None while it runs)."""
        return None if self._error is None else str(self._error)

    # -- reading -------------------------------------------------------------------------------------
    async def read(self) -> AsyncIterator[bytes]:
        """The characters from the BMC as they come, until the console is closed."""
        while True:
            chunk = await self._incoming.get()
            if chunk is None:
                self._incoming.put_nowait(None)  # other readers end too
                return
            yield chunk

    async def read_until(self, marker: bytes, within: float) -> bytes:
        """Accumulate characters until ``marker`` appears; return everything read (BMCTimeout otherwise)."""
        seen = bytearray()
        try:
            async with asyncio.timeout(within):
                async for chunk in self.read():
                    seen += chunk
                    if marker in seen:
                        return bytes(seen)
        except TimeoutError as err:
            raise BMCTimeout(f"SOL {self.label}: {marker!r} not seen within {within}s; got {bytes(seen)!r}") from err
        raise SolClosed(f"SOL {self.label} closed before {marker!r}; got {bytes(seen)!r}")

    def _received(self, payload: bytes) -> None:
        if len(payload) < 4:
            return
        seq, ack_seq, count, status = payload[0] & 0x0F, payload[1] & 0x0F, payload[2], payload[3]
        chars = payload[4:]
        if ack_seq and self._ack is not None and self._ack[0] == ack_seq and not self._ack[1].done():
            self._ack[1].set_result((count, status))
        if status & ST_OVERRUN:
            self.overruns += 1
        if status & ST_BREAK:
            self.break_seen = True
        if seq:
            if seq != self._in_seq:
                self._in_seq = seq
                if chars:
                    self.received += len(chars)
                    self._incoming.put_nowait(bytes(chars))
            self._send(bytes((0, seq, len(chars), 0)))
        if status & ST_DEACTIVATING:
            self._fail(SolClosed(f"SOL {self.label}: the BMC deactivated the payload"))

    # -- writing -------------------------------------------------------------------------------------
    def write_nowait(self, data: bytes) -> int:
        """Queue characters; returns the count to wait for with :meth:`drain`."""
        self._check()
        self._out += data
        self._queued += len(data)
        self._poke()
        return self._queued

    async def write(self, data: bytes) -> None:
        """Send characters and return once the BMC accepted all of them."""
        await self.drain(self.write_nowait(data))

    async def drain(self, upto: int | None = None) -> None:
        target = self._queued if upto is None else upto
        async with self._changed:
            await self._changed.wait_for(lambda: self._accepted >= target or self._error is not None)
        if self._accepted < target:
            self._check()

    async def send_break(self) -> None:
        """Ask the BMC to generate a break on the serial line (after the characters queued before it)."""
        self._check()
        self._breaks += 1
        self._poke()
        async with self._changed:
            await self._changed.wait_for(lambda: self._breaks == 0 or self._error is not None)
        self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error if isinstance(self._error, BMCError) else SolClosed(str(self._error))

    def _poke(self) -> None:
        task = asyncio.get_running_loop().create_task(self._notify())
        self._pokes.add(task)
        task.add_done_callback(self._pokes.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _send(self, payload: bytes) -> None:
        if self.session.closed:
            return
        try:
            self.session.endpoint.send(self.session.seal(payload, PayloadType.SOL), self.session.peer)
        except BMCError as err:
            self._fail(err)

    async def _send_loop(self) -> None:
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: bool(self._out) or self._breaks > 0)
                chars = bytes(self._out[: self._chunk])
                op = OP_BREAK if self._breaks and not chars else 0
                accepted = await self._send_packet(chars, op)
                del self._out[:accepted]
                self._accepted += accepted
                if op:
                    self._breaks -= 1
                async with self._changed:
                    self._changed.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001 - ends the console, raised to writers
            self._fail(err)

    async def _send_packet(self, chars: bytes, op: int) -> int:
        """Send one packet until acknowledged; the number of characters the BMC accepted (> 0 with chars)."""
        self._out_seq = self._out_seq % 15 + 1
        seq = self._out_seq
        packet = bytes((seq, 0, 0, op)) + chars
        loop = asyncio.get_running_loop()
        for attempt in range(self.settings.retries + 1):
            future: asyncio.Future[tuple[int, int]] = loop.create_future()
            self._ack = (seq, future)
            if attempt:
                self.retransmissions += 1
            self._send(packet)
            try:
                count, status = await asyncio.wait_for(future, self.settings.ack_timeout)
            except TimeoutError:
                continue
            finally:
                self._ack = None
            if status & (ST_NACK | ST_UNAVAILABLE) or (chars and count == 0):
                await asyncio.sleep(self.settings.nack_pause)  # the BMC cannot take characters now
                continue
            return min(count, len(chars))
        raise BMCTimeout(f"SOL {self.label}: packet {seq} not acknowledged after {self.settings.retries + 1} sends")

    # -- session upkeep ------------------------------------------------------------------------------
    async def command(self, command: int, data: bytes) -> bytes:
        async with self._commands:
            response = await self.session.request(NetFn.APP, command, data, self._attempts, self._wait)
            self._last_command = asyncio.get_running_loop().time()
        if response.code:
            raise CompletionCodeError(
                f"BMC {self.label}: command 0x{command:02X} failed: "
                f"{ACTIVATE_CODES.get(response.code) or describe_completion(response.code)}",
                response.code,
            )
        return response.data

    async def _keepalive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(max(0.0, self._last_command + self.settings.keepalive - loop.time()))
                if loop.time() - self._last_command >= self.settings.keepalive:
                    await self.command(AppCmd.GET_DEVICE_ID, b"")
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001
            self._fail(SolClosed(f"SOL {self.label}: the session was lost ({err})"))

    def _fail(self, err: BaseException) -> None:
        if self._error is None:
            self._error = err
            log.debug("sol_ended", bmc=self.label, reason=str(err))
        self._incoming.put_nowait(None)
        if self._ack is not None and not self._ack[1].done():
            self._ack[1].cancel()
        self._poke()

    async def close(self) -> None:
        """Deactivate the payload and close the session (best effort, bounded)."""
        if self.closed:
            return
        self.closed = True
        deactivated = self._error is not None and isinstance(self._error, SolClosed)
        self._fail(SolClosed(f"SOL {self.label} is closed"))
        for task in (self._sender, self._keeper):
            task.cancel()
        for task in (self._sender, self._keeper):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        session = self.session
        try:
            async with asyncio.timeout(2 * self._wait + 0.5):
                if not deactivated:
                    await self.command(AppCmd.DEACTIVATE_PAYLOAD, bytes((SOL_PAYLOAD, SOL_INSTANCE, 0, 0, 0, 0)))
                await self.command(AppCmd.CLOSE_SESSION, session.bmc_id.to_bytes(4, "little"))
        except (TimeoutError, BMCError) as err:
            log.debug("sol_close_failed", bmc=self.label, error=str(err))
        finally:
            session.sol_sink = None
            session.detach()


async def activate(session: Session, settings: SolSettings, attempts: int, wait: float, take_over: bool) -> SolConsole:
    """Activate the SOL payload on an established session; ``take_over`` deactivates another holder first."""
    request = bytes((SOL_PAYLOAD, SOL_INSTANCE, _ACTIVATE_AUX, 0, 0, 0))
    response = await session.request(NetFn.APP, AppCmd.ACTIVATE_PAYLOAD, request, attempts, wait)
    if response.code == ALREADY_ACTIVE and take_over:
        log.info("sol_take_over", bmc=session.label)
        await session.request(
            NetFn.APP, AppCmd.DEACTIVATE_PAYLOAD, bytes((SOL_PAYLOAD, SOL_INSTANCE, 0, 0, 0, 0)), attempts, wait
        )
        response = await session.request(NetFn.APP, AppCmd.ACTIVATE_PAYLOAD, request, attempts, wait)
    if response.code:
        reason = ACTIVATE_CODES.get(response.code) or describe_completion(response.code)
        raise CompletionCodeError(f"BMC {session.label}: cannot activate SOL: {reason}", response.code)
    data = response.data
    inbound = int.from_bytes(data[4:6], "little") if len(data) >= 6 else 0
    if len(data) >= 10:
        port = int.from_bytes(data[8:10], "little")
        if port not in (0, session.peer[1]):
            log.debug("sol_port_differs", bmc=session.label, port=port)  # payload stays on the session's port
    return SolConsole(session, settings, attempts, wait, inbound)
