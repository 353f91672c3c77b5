"""The lab BMC's side of Serial over LAN (IPMI 2.0 chapter 15), bridged to the machine's serial line.

Written here rather than taken from pyghmi's ``ServerConsole`` (which relies on pyghmi's I/O thread and
retry timers the lab does not run). One SOL payload per BMC; it lives on one RMCP+ session:

- machine → console: characters accumulate while a packet is in flight and go in the next one (up to
  ``CHUNK``); a packet not acknowledged within ``RETRY_WAIT`` is sent again with the same sequence number,
  ``RETRIES`` times, then dropped; a partial ACK leaves the rest for the next packet; a NACK resends later.
- console → machine: each data packet is acknowledged with its character count; a repeated sequence number
  (our ACK was lost) is acknowledged again, not typed twice; the break operation becomes a line break.
- Deactivation from another session (a take-over) tells the old console with the "SOL deactivating" bit.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from bmd.lab.serial import SerialLine

if TYPE_CHECKING:
    from bmd.lab.session import LabSession

log = structlog.get_logger(__name__)

SOL_PAYLOAD_TYPE = 1
CHUNK = 200  # characters per packet
INBOUND_SIZE = 252  # the largest SOL payload we accept from a console (4 header bytes + characters)
RETRY_WAIT = 0.5
RETRIES = 6
BUFFER_LIMIT = 64 * 1024  # characters kept for a console that does not keep up; the oldest are dropped
OP_NACK = 0x40
OP_BREAK = 0x10
ST_DEACTIVATING = 0x10
ST_OVERRUN = 0x08


class LabSol:
    def __init__(self, label: str, session: LabSession, line: SerialLine, drop_every: int = 0) -> None:
        self.label = label
        self.session = session
        self.line = line
        self.out = bytearray()
        self.in_flight: tuple[int, int] | None = None  # (sequence number, characters) awaiting an ACK
        self.seq = 0
        self.last_in: tuple[int, int] | None = None  # (sequence number, accepted) of the last console packet
        self.attempts = 0
        self.overrun = False
        self.timer: asyncio.TimerHandle | None = None
        self.active = True
        # lab fault: lose every Nth data packet we would send and every Nth packet from the console (0: none)
        self.drop_every = drop_every
        self.sent = 0
        self.heard = 0
        self.stats: dict[str, int] = {"packets": 0, "retransmissions": 0, "dropped": 0, "typed": 0}
        session.sol_handler = self.from_console
        line.listen(self.from_machine)

    # -- machine → console -----------------------------------------------------------------------------
    def from_machine(self, data: bytes) -> None:
        if not self.active:
            return
        self.out += data
        if len(self.out) > BUFFER_LIMIT:
            keep = self.in_flight[1] if self.in_flight else 0
            excess = len(self.out) - BUFFER_LIMIT
            del self.out[keep : keep + excess]
            self.overrun = True
        self._kick()

    def _kick(self) -> None:
        if self.in_flight is not None or not self.out or not self.active:
            return
        self.seq = self.seq % 15 + 1
        count = min(CHUNK, len(self.out))
        self.in_flight = (self.seq, count)
        self.attempts = 0
        self._send_data()

    def _send_data(self) -> None:
        assert self.in_flight is not None
        seq, count = self.in_flight
        status = ST_OVERRUN if self.overrun else 0
        self.overrun = False
        self.stats["packets"] += 1
        self._send(bytes((seq, 0, 0, status)) + bytes(self.out[:count]), faulty=True)
        self.timer = asyncio.get_running_loop().call_later(RETRY_WAIT, self._retransmit)

    def _retransmit(self) -> None:
        self.timer = None
        if self.in_flight is None or not self.active:
            return
        self.attempts += 1
        if self.attempts > RETRIES:  # the console is gone or deaf: drop the packet, carry on
            del self.out[: self.in_flight[1]]
            self.in_flight = None
            self.stats["dropped"] += 1
            self._kick()
            return
        self.stats["retransmissions"] += 1
        self._send_data()

    def _acked(self, accepted: int, nack: bool) -> None:
        assert self.in_flight is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if nack:  # the console cannot take characters now: same packet again later
            self.timer = asyncio.get_running_loop().call_later(RETRY_WAIT, self._retransmit)
            return
        del self.out[: min(accepted, self.in_flight[1])]
        self.in_flight = None
        self._kick()

    # -- console → machine -----------------------------------------------------------------------------
    def from_console(self, payload: Any) -> None:
        data = bytes(payload)
        if len(data) < 4 or not self.active:
            return
        if self.drop_every:
            self.heard += 1
            if self.heard % self.drop_every == 0:
                self.stats["lost"] = self.stats.get("lost", 0) + 1
                return  # lost on the way (lab fault)
        seq, ack, accepted, op = data[0] & 0x0F, data[1] & 0x0F, data[2], data[3]
        chars = data[4:]
        if ack and self.in_flight is not None and ack == self.in_flight[0]:
            self._acked(accepted, bool(op & OP_NACK))
        if not seq:
            return
        if self.last_in is not None and self.last_in[0] == seq:
            self._send(bytes((0, seq, self.last_in[1], 0)))  # a retransmission: our ACK was lost
            return
        self.last_in = (seq, len(chars))
        if chars:
            self.stats["typed"] += len(chars)
            self.line.write(chars)
        if op & OP_BREAK:
            self.line.send_break()
        self._send(bytes((0, seq, len(chars), 0)))

    def _send(self, payload: bytes, faulty: bool = False) -> None:
        if faulty and self.drop_every:
            self.sent += 1
            if self.sent % self.drop_every == 0:
                return  # lost on the way (lab fault)
        try:
            self.session.send_payload(payload, payload_type=SOL_PAYLOAD_TYPE, retry=False)
        except OSError as err:
            log.debug("lab_sol_send_failed", bmc=self.label, error=str(err))

    # -- the end ---------------------------------------------------------------------------------------
    def close(self, notify: bool) -> None:
        if not self.active:
            return
        if notify:  # the payload was taken by another session: tell the old console
            self._send(bytes((0, 0, 0, ST_DEACTIVATING)))
        self.active = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.line.unlisten(self.from_machine)
        self.session.sol_handler = None
