"""One RMCP+ session with one BMC: packet routing, retransmission and sequence numbers."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from bmd.errors import BMCTimeout
from bmd.ipmi.crypto import CipherSuite, SessionKeys
from bmd.ipmi.protocol import AppCmd, NetFn, PayloadType, ProtocolError
from bmd.ipmi.wire import Response, build_packet, build_request, open_packet, parse_header, parse_response

if TYPE_CHECKING:
    from bmd.ipmi.transport import Endpoint

log = structlog.get_logger(__name__)

T = TypeVar("T")
Sockaddr = tuple[Any, ...]

_WINDOW = 32  # inbound session sequence numbers accepted behind the highest one seen
_BACKOFF = 1.5  # each retransmission waits this much longer than the previous attempt


def _window(seq: int, high: int, seen: int) -> tuple[bool, int, int]:
    """One step of a sliding replay window: (accepted, new highest, new seen bitmap)."""
    if seq == 0:
        return False, high, seen
    if seq > high:
        shift = seq - high
        seen = ((seen << shift) | 1) & ((1 << _WINDOW) - 1) if shift < _WINDOW else 1
        return True, seq, seen
    behind = high - seq
    if behind >= _WINDOW or seen & (1 << behind):
        return False, high, seen
    return True, high, seen | (1 << behind)


@dataclass(slots=True)
class ClientStats:
    """Counters over the client's life; tests and benchmarks read them."""

    sessions_opened: int = 0
    sessions_reused: int = 0
    sessions_expired: int = 0
    suite_fallbacks: int = 0
    handshake_restarts: int = 0
    requests: int = 0
    retransmissions: int = 0
    stale_responses: int = 0  # authentic answers no request was waiting for (late duplicates)
    dropped_datagrams: int = 0  # unparseable, unauthenticated or for no known session


class Session:
    """A session being set up or established; the endpoint routes datagrams here by console session ID."""

    def __init__(self, endpoint: Endpoint, peer: Sockaddr, console_id: int, stats: ClientStats, label: str) -> None:
        self.endpoint = endpoint
        self.peer = peer
        self.console_id = console_id
        self.console_id_bytes = struct.pack("<I", console_id)
        self.stats = stats
        self.label = label  # "host:port", for logs
        self.suite: CipherSuite | None = None
        self.keys: SessionKeys | None = None
        self.bmc_id = 0
        self.last_used = 0.0
        self.rtt: float | None = None  # smoothed answer time, from the first send of a message
        self.closed = False
        self._out_seq = 0
        self._rq_seq = random.randrange(64)
        self._in_high = 0
        self._in_seen = 0
        self._pending: tuple[Callable[[int, bytes], Any], asyncio.Future[Any]] | None = None
        # Set while a Serial-over-LAN payload is active (bmd.ipmi.sol): gets every clear SOL payload.
        self.sol_sink: Callable[[bytes], None] | None = None
        self._sol_high = 0
        self._sol_seen = 0

    # -- receiving ---------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Sockaddr) -> None:
        if addr[:2] != self.peer[:2]:
            self.stats.dropped_datagrams += 1
            return
        if self.sol_sink is not None and self.keys is not None and len(data) > 5 and data[5] & 0x3F == PayloadType.SOL:
            self._sol_received(data)
            return
        if self._pending is None or self._pending[1].done():
            self.stats.stale_responses += 1  # a late answer, e.g. to a retransmission already answered
            return
        expect, future = self._pending
        try:
            header = parse_header(data)
            if self.keys is not None and header.payload_type == PayloadType.IPMI:
                payload = open_packet(data, header, self.keys)
                if header.session_id != self.console_id or not self._accept_sequence(header.sequence):
                    raise ProtocolError("session ID or sequence number refused")
            else:
                payload = data[16 : 16 + header.payload_length]
            answer = expect(header.payload_type, payload)
        except ProtocolError as err:
            self.stats.dropped_datagrams += 1
            log.debug("ipmi_datagram_dropped", bmc=self.label, reason=str(err))
            return
        except Exception as err:  # noqa: BLE001 - a BMCError from the expectation fails the exchange
            future.set_exception(err)
            return
        if answer is None:
            self.stats.stale_responses += 1
        else:
            future.set_result(answer)

    def _sol_received(self, data: bytes) -> None:
        assert self.keys is not None and self.sol_sink is not None
        try:
            header = parse_header(data)
            payload = open_packet(data, header, self.keys)
            if header.session_id != self.console_id:
                raise ProtocolError("session ID refused")
            # SOL packets get their own replay window: some BMCs number them apart from IPMI responses.
            ok, self._sol_high, self._sol_seen = _window(header.sequence, self._sol_high, self._sol_seen)
            if not ok:
                raise ProtocolError("session sequence number refused")
        except ProtocolError as err:
            self.stats.dropped_datagrams += 1
            log.debug("ipmi_sol_datagram_dropped", bmc=self.label, reason=str(err))
            return
        self.sol_sink(payload)

    def _accept_sequence(self, seq: int) -> bool:
        """Sliding-window replay check on the BMC's session sequence numbers (13.28.3)."""
        ok, self._in_high, self._in_seen = _window(seq, self._in_high, self._in_seen)
        return ok

    # -- sending -----------------------------------------------------------------------------------
    async def exchange(
        self, build: Callable[[], bytes], expect: Callable[[int, bytes], T | None], attempts: int, wait: float
    ) -> T:
        """Send ``build()`` and wait for an answer ``expect`` accepts; resend up to ``attempts`` times.

        ``expect`` looks at (payload type, clear payload) and returns the parsed answer, or None when the
        datagram is not the awaited one; it may raise a BMCError to fail the exchange (bad RAKP 2 HMAC).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending = (expect, future)
        if self.rtt is not None:  # a BMC known to be slow gets the time it usually takes
            wait = max(wait, 2 * self.rtt)
        started = loop.time()
        # Retransmissions run from a timer callback: cheaper than a wait() per attempt, which matters
        # when a thousand sessions are set up at once.
        sent = 1
        timer: asyncio.TimerHandle | None = None

        def retransmit() -> None:
            nonlocal sent, timer
            if future.done():
                return
            if sent >= attempts:
                future.set_exception(BMCTimeout(f"no answer from BMC {self.label} after {attempts} attempts"))
                return
            self.stats.retransmissions += 1
            try:
                self.endpoint.send(build(), self.peer)
            except Exception as err:  # noqa: BLE001 - e.g. the client was closed meanwhile
                future.set_exception(err)
                return
            sent += 1
            timer = loop.call_later(wait * _BACKOFF ** (sent - 1), retransmit)

        self.endpoint.send(build(), self.peer)
        timer = loop.call_later(wait, retransmit)
        try:
            result = await future
        finally:
            timer.cancel()
            self._pending = None
            if not future.done():
                future.cancel()
        sample = loop.time() - started
        self.rtt = sample if self.rtt is None else 0.75 * self.rtt + 0.25 * sample
        return result

    def next_sequence(self) -> int:
        self._out_seq = self._out_seq % 0xFFFFFFFF + 1
        return self._out_seq

    def seal(self, payload: bytes, payload_type: PayloadType = PayloadType.IPMI) -> bytes:
        """A payload packet of this established session (encrypted, signed, next sequence number)."""
        return build_packet(payload_type, self.bmc_id, self.next_sequence(), payload, self.keys)

    async def request(self, netfn: int, command: int, data: bytes, attempts: int, wait: float) -> Response:
        """One IPMI command; retransmissions keep the rq_seq and take a new session sequence number."""
        rq_seq = self._rq_seq
        self._rq_seq = (rq_seq + 1) % 64
        message = build_request(netfn, command, rq_seq, data)
        self.stats.requests += 1

        def expect(payload_type: int, payload: bytes) -> Response | None:
            if payload_type != PayloadType.IPMI:
                return None
            response = parse_response(payload)
            if response.rq_seq != rq_seq or response.command != command or response.netfn != netfn + 1:
                return None
            return response

        response = await self.exchange(lambda: self.seal(message), expect, attempts, wait)
        self.last_used = asyncio.get_running_loop().time()
        return response

    def close_packet(self) -> bytes:
        """A Close Session request, for sending without waiting for the answer."""
        rq_seq = self._rq_seq
        self._rq_seq = (rq_seq + 1) % 64
        return self.seal(build_request(NetFn.APP, AppCmd.CLOSE_SESSION, rq_seq, struct.pack("<I", self.bmc_id)))

    def detach(self) -> None:
        """Stop receiving: the endpoint forgets this session's console ID."""
        self.closed = True
        self.endpoint.unregister(self.console_id, self)
