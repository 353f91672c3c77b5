"""A simulated BMC: pyghmi's ``Bmc`` server with power and boot state, cipher suites 3 and 17, faults.

Fixes over stock pyghmi 1.6.19 (see shared/notes/bmc-peers.md):

- pyghmi's server answers every open session request with suite-3 algorithms; here the proposal is
  matched against the configured suites and refused with RMCP+ status 0x11 when none fits, which makes
  pyghmi's client fall back to suite 3. Suite 17 (RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128) is
  implemented, and Get Channel Cipher Suites lists what is configured (ipmitool picks from that list).
- Sessions are found by the BMC's session ID, not by the client's address, so a new client reusing an old
  client's UDP source port, or one socket talking to many BMCs on one port, cannot confuse them (pyghmi
  keys sessions by (client address, port) and its listen loop dies on a reused port).
- No socket goes into pyghmi's global I/O thread: the lab worker owns the sockets (asyncio), so there is
  no blocking/non-blocking race, and a slow BMC delays only itself.
- Duplicate handshake messages and retransmitted requests (same rq_seq) get the first answer again, so a
  retransmission never re-runs a chassis control nor desynchronises RAKP.
- Unknown users get RAKP 2 status 0x0D, a bad RAKP 3 gets RAKP 4 status 0x0F (pyghmi stays silent).
- Serial over LAN (Activate/Deactivate Payload, SOL packets) is :mod:`bmd.lab.sol`, bridged to the
  machine's serial line (pyghmi's answers the payload port big-endian and needs its I/O thread); Get
  Channel Payload Support/Version and Get Payload Activation Status are answered too (pyghmi: 0xC1),
  which FreeIPMI's ipmiconsole needs before it activates.
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from collections import Counter, OrderedDict
from typing import Any

import structlog
from pyghmi.ipmi import bmc as pyghmi_bmc

from bmd.lab.faults import Fault
from bmd.lab.machines import Machine
from bmd.lab.serial import SerialLine, SimSerial
from bmd.lab.session import LAB_SUITES, LabSession
from bmd.lab.sol import INBOUND_SIZE, LabSol

log = structlog.get_logger(__name__)

MAX_SESSIONS = 32  # per BMC; the least recently used goes when a new one opens
SESSION_IDLE_LIMIT = 60.0  # seconds, the spec's default session inactivity timeout


class Sender:
    """What pyghmi's packet code takes for a socket: it only calls ``setblocking`` and ``sendto``."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def setblocking(self, flag: bool) -> None:
        pass

    def sendto(self, data: bytes | bytearray, addr: Any) -> None:
        self.transport.sendto(bytes(data), addr)


class LabBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    def __init__(
        self,
        name: str,
        username: str,
        password: str,
        suites: tuple[int, ...] = (17, 3),
        power: bool = False,
        machine: Machine | None = None,
    ) -> None:
        # IpmiServer.__init__ is not called on purpose: it binds a socket into pyghmi's I/O thread.
        self.name = name
        self.username = username
        self.password = password
        self.authdata = {username: password}
        self.kg: bytes | None = None
        self.uuid = uuid.uuid5(uuid.NAMESPACE_URL, "bmd-lab:" + name)
        self.suites = tuple(s for s in suites if s in LAB_SUITES)
        self.port = 623
        self.pktqueue: Any = None
        # Get Channel Authentication Capabilities answer (22.13): channel 1, IPMI 2.0 only.
        self.authcap = bytes((0, 1, 0x80, 0x04, 0x02, 0, 0, 0, 0))
        self.serversocket: Sender | None = None
        self.sessions: dict[bytes, LabSession] = {}
        self._opens: OrderedDict[tuple[Any, bytes], LabSession] = OrderedDict()
        self.stats: Counter[str] = Counter()
        # chassis state
        self.power = power
        self.boot_valid = False
        self.boot_persistent = False
        self.boot_efi = False
        self.boot_selector = 0
        self.last_boot = 0  # boot selector the last (re)start used: 1 PXE, 2 disk, 6 BIOS (0: default)
        self.set_in_progress = 0
        self.valid_bit_clearing = 0
        # faults
        self.fault: Fault | None = None
        self.fault_since = 0.0
        self.flap_steps = 0
        # the machine behind the BMC (bmd.lab.machines): started, stopped and reset by the chassis commands
        self.machine = machine
        # its serial line, served over SOL (a BMC without a machine has a line that only echoes)
        self.serial: SerialLine = machine.serial_line() if machine is not None else SimSerial(name)
        self.sol: LabSol | None = None
        self.sol_drop_every = 0  # lab fault for tests: lose every Nth SOL data packet the BMC sends

    # -- faults ------------------------------------------------------------------------------------
    def set_fault(self, fault: Fault | None) -> None:
        self.fault = fault
        self.fault_since = time.monotonic()
        self.flap_steps = 0
        bad = fault is not None and fault.kind == "badpass"
        self.authdata = {self.username: "not-" + self.password if bad else self.password}

    def is_down(self) -> bool:
        fault = self.fault
        if fault is None:
            return False
        if fault.kind == "dead":
            return True
        if fault.kind == "flap":
            phase = self.flap_steps
            if fault.seconds > 0:
                phase += int((time.monotonic() - self.fault_since) / fault.seconds)
            return phase % 2 == 0
        return False

    @property
    def stuck(self) -> bool:
        return self.fault is not None and self.fault.kind == "stuck"

    @property
    def delay(self) -> float:
        return self.fault.seconds if self.fault is not None and self.fault.kind == "slow" else 0.0

    # -- datagrams ---------------------------------------------------------------------------------
    def attach(self, transport: Any, port: int) -> None:
        self.serversocket = Sender(transport)
        self.port = port

    def handle_datagram(self, data: bytes, addr: Any) -> None:
        if len(data) < 14 or data[0] != 0x06 or data[2:4] != b"\xff\x07":
            return
        self.stats["datagrams"] += 1
        if data[4] != 0x06:  # IPMI 1.5 framing: sessionless Get Channel Authentication Capabilities
            self.sessionless_data(data, addr)
            return
        if len(data) < 16:
            return
        ptype = data[5] & 0x3F
        (length,) = struct.unpack_from("<H", data, 14)
        payload = bytes(data[16 : 16 + length])
        if ptype == 0x10:
            self._open_session(payload, addr)
            return
        if ptype in (0x12, 0x14):
            session = self.sessions.get(payload[4:8])
        elif ptype in (0x00, 0x01):
            if data[6:10] == b"\0\0\0\0":
                self.sessionless_data(data, addr)
                return
            session = self.sessions.get(bytes(data[6:10]))
        else:
            return
        if session is None:
            self.stats["unknown_session"] += 1
            return
        session.sockaddr = addr
        session.last_active = time.monotonic()
        if session.replay is not None and session.replay[0] == (ptype, payload):
            self.stats["replayed"] += 1
            self.serversocket.sendto(session.replay[1], addr)  # type: ignore[union-attr]
            return
        before = getattr(session, "netpacket", None)
        session._handle_ipmi2_packet(bytearray(data))
        after = getattr(session, "netpacket", None)
        if ptype in (0x12, 0x14) and after is not None and after is not before:
            session.replay = ((ptype, payload), bytes(after))

    def _open_session(self, payload: bytes, addr: Any) -> None:
        known = self._opens.get((addr, payload))
        if known is not None and known.replay is not None:
            self.stats["replayed"] += 1
            self.serversocket.sendto(known.replay[1], addr)  # type: ignore[union-attr]
            return
        self._sweep()
        session = LabSession(self, self.serversocket, addr, payload)
        session.replay = ((0x10, payload), bytes(session.netpacket))
        if session.managedsessionid:
            self.sessions[session.managedsessionid] = session
            self._opens[(addr, payload)] = session
            while len(self._opens) > MAX_SESSIONS:
                self._opens.popitem(last=False)

    def _sweep(self) -> None:
        now = time.monotonic()
        for sid, session in list(self.sessions.items()):
            if now - session.last_active > SESSION_IDLE_LIMIT:
                del self.sessions[sid]
        while len(self.sessions) >= MAX_SESSIONS:
            oldest = min(self.sessions, key=lambda sid: self.sessions[sid].last_active)
            del self.sessions[oldest]
            self.stats["sessions_evicted"] += 1

    def new_session_id(self) -> bytes:
        while True:
            sid = os.urandom(4)
            if sid != b"\0\0\0\0" and sid not in self.sessions:
                return sid

    def drop_session(self, session: LabSession) -> None:
        if self.sessions.get(session.managedsessionid) is session:
            del self.sessions[session.managedsessionid]
        if self.sol is not None and self.sol.session is session:
            self.sol.close(notify=False)
            self.sol = None

    # -- serial over LAN (24.1, 24.2) --------------------------------------------------------------
    def _sol_holder_alive(self) -> bool:
        sol = self.sol
        if sol is None or not sol.active:
            return False
        session = sol.session
        alive = self.sessions.get(session.managedsessionid) is session
        return alive and time.monotonic() - session.last_active <= SESSION_IDLE_LIMIT

    def activate_payload(self, request: dict[str, Any], session: LabSession) -> None:
        data = bytes(request["data"])
        if len(data) < 2 or data[0] & 0x3F != 1:
            session.send_ipmi_response(code=0xCC)  # only SOL (payload type 1) is served
            return
        if data[1] != 1:
            session.send_ipmi_response(code=0xCC)  # one instance
            return
        if self.sol is not None and self.sol.session is not session and self._sol_holder_alive():
            session.send_ipmi_response(code=0x80)  # already active on another session
            return
        if self.sol is not None:
            self.sol.close(notify=False)
        self.stats["sol_activated"] += 1
        self.sol = LabSol(self.name, session, self.serial, self.sol_drop_every)
        size = INBOUND_SIZE.to_bytes(2, "little")
        # aux data, inbound and outbound payload sizes, payload UDP port (little-endian), VLAN none
        session.send_ipmi_response(data=b"\0\0\0\0" + size + size + self.port.to_bytes(2, "little") + b"\xff\xff")

    def payload_activation_status(self, request: dict[str, Any], session: LabSession) -> None:
        """Get Payload Activation Status (24.4): one SOL instance, and whether it is active. FreeIPMI's
        ipmiconsole asks before activating (to deactivate a stale payload first, unless --dont-steal)."""
        data = bytes(request["data"])
        if not data or data[0] & 0x3F != 1:
            session.send_ipmi_response(code=0xCC)
            return
        active = self.sol is not None and self.sol.active
        session.send_ipmi_response(data=bytes((1, int(active), 0)))

    def channel_payload_support(self, request: dict[str, Any], session: LabSession) -> None:
        """Get Channel Payload Support (24.8): IPMI messages and SOL; the RMCP+ session setup payloads."""
        # standard types 0-15 (IPMI message, SOL), session setup 16-31 (open session, RAKP 1-4), no OEM
        session.send_ipmi_response(data=bytes((0x03, 0x00, 0x3F, 0x00, 0x00, 0x00, 0x00, 0x00)))

    def channel_payload_version(self, request: dict[str, Any], session: LabSession) -> None:
        """Get Channel Payload Version (24.9): SOL 1.0 (0x10)."""
        data = bytes(request["data"])
        if len(data) < 2 or data[1] not in (0, 1):
            session.send_ipmi_response(code=0x80)  # payload type not available on this channel
            return
        session.send_ipmi_response(data=b"\x10")

    def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
        """pyghmi's dispatch, plus the payload queries SOL consoles make around Activate Payload."""
        if request["netfn"] == 6:
            handler = {
                0x4A: self.payload_activation_status,
                0x4E: self.channel_payload_support,
                0x4F: self.channel_payload_version,
            }.get(request["command"])
            if handler is not None:
                handler(request, session)
                return
        super().handle_raw_request(request, session)

    def deactivate_payload(self, request: dict[str, Any], session: LabSession) -> None:
        data = bytes(request["data"])
        if len(data) < 2 or data[0] & 0x3F != 1 or data[1] != 1:
            session.send_ipmi_response(code=0xCC)
            return
        if self.sol is None or not self.sol.active:
            session.send_ipmi_response(code=0x80)  # payload already deactivated
            return
        self.stats["sol_deactivated"] += 1
        self.sol.close(notify=self.sol.session is not session)
        self.sol = None
        session.send_ipmi_response()

    def demote_sessions(self) -> None:
        """Drop every session back to User privilege (as a BMC that lost the sessions' state)."""
        for session in self.sessions.values():
            session.clientpriv = 2

    def expire_sessions(self) -> None:
        """Forget every session, as a BMC does after a reset: clients must log in again."""
        self.sessions.clear()
        self._opens.clear()

    def send_cipher_suites(
        self,
        myaddr: int,
        mylun: int,
        clientaddr: int,
        clientlun: int,
        clientseq: int,
        data: Any,
        sockaddr: Any,
    ) -> None:
        """Get Channel Cipher Suites (22.15), sessionless, listing the configured suites."""
        index = data[22] & 0x3F if len(data) > 22 else 0
        records = b"".join(
            bytes((0xC0, sid, auth, 0x40 | integ, 0x80 | conf))
            for sid in self.suites
            for auth, integ, conf in (LAB_SUITES[sid],)
        )
        body = bytes((myaddr, mylun | clientseq << 2, 0x54, 0, 1)) + records[index * 16 : index * 16 + 16]
        head = bytes((clientaddr, clientlun | 7 << 2))
        message = head + bytes((-sum(head) & 0xFF,)) + body + bytes((-sum(body) & 0xFF,))
        packet = b"\x06\x00\xff\x07\x06\x00" + b"\0" * 8 + struct.pack("<H", len(message)) + message
        self.serversocket.sendto(packet, sockaddr)  # type: ignore[union-attr]

    # -- chassis -----------------------------------------------------------------------------------
    def sync_power(self) -> bool:
        """The power flag, first taken from the machine when it has a state of its own (a VM's process:
        a guest that powered itself off is off)."""
        if self.machine is not None:
            running = self.machine.running()
            if running is not None:
                self.power = running
        return self.power

    def get_power_state(self) -> str:
        return "on" if self.sync_power() else "off"

    def _boots(self) -> None:
        """The host (re)starts: a next-boot-only override is consumed, as firmware does."""
        self.stats["boots"] += 1
        self.last_boot = self.boot_selector if self.boot_valid else 0  # what the firmware booted from
        if self.boot_valid and not self.boot_persistent:
            self.boot_valid, self.boot_selector = False, 0
        if self.machine is not None:
            self.machine.boot(self.last_boot)

    def power_on(self) -> int:
        self.stats["power_on"] += 1
        if self.stuck:
            return 0
        if not self.sync_power():
            self._boots()
        self.power = True
        return 0

    def power_off(self) -> int:
        self.stats["power_off"] += 1
        if not self.stuck:
            self.power = False
            if self.machine is not None:
                self.machine.power_off(soft=False)
        return 0

    def power_shutdown(self) -> int:
        self.stats["soft_off"] += 1
        if not self.stuck:
            self.power = False
            if self.machine is not None:
                self.machine.power_off(soft=True)
        return 0

    def power_cycle(self) -> int:
        self.stats["power_cycle"] += 1
        if not self.sync_power():
            return 0xD5  # not in present state: the chassis is off
        self._boots()
        return 0

    def power_reset(self) -> int:
        self.stats["power_reset"] += 1
        if not self.sync_power():
            return 0xD5
        self._boots()
        return 0

    def pulse_diag(self) -> int:
        return 0

    def cold_reset(self) -> int:
        self.expire_sessions()
        return 0

    def get_system_guid(self) -> uuid.UUID:
        return self.uuid

    def send_device_id(self, session: Any) -> None:
        # 20.1: device 0x20, revision 1, firmware 1.00, IPMI 2.0, chassis device; manufacturer 0 (none)
        data = bytes((0x20, 0x01, 0x01, 0x00, 0x02, 0x80)) + b"\0\0\0" + b"lb" + b"\0\0\0\0"
        session.send_ipmi_response(data=data)

    def get_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        param = request["data"][0] & 0x7F if request["data"] else -1
        if param == 0:
            data = bytes((1, 0, self.set_in_progress))
        elif param == 3:
            data = bytes((1, 3, self.valid_bit_clearing))
        elif param == 4:
            data = bytes((1, 4, 0, 0))
        elif param == 5:
            data1 = self.boot_valid << 7 | self.boot_persistent << 6 | self.boot_efi << 5
            data = bytes((1, 5, data1, self.boot_selector << 2, 0, 0, 0))
        else:
            session.send_ipmi_response(code=0x80)
            return
        session.send_ipmi_response(data=data)

    def set_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        data = bytes(request["data"])
        param = data[0] & 0x7F if data else -1
        if param == 0 and len(data) >= 2:
            value = data[1] & 0x03
            if value == 1 and self.set_in_progress == 1:
                session.send_ipmi_response(code=0x81)
                return
            self.set_in_progress = 1 if value == 1 else 0
        elif param == 3 and len(data) >= 2:
            self.valid_bit_clearing = data[1] & 0x1F
        elif param == 4:
            pass
        elif param == 5 and len(data) >= 3:
            self.stats["set_boot"] += 1
            self.boot_valid = bool(data[1] & 0x80)
            self.boot_persistent = bool(data[1] & 0x40)
            self.boot_efi = bool(data[1] & 0x20)
            self.boot_selector = (data[2] >> 2) & 0x0F if self.boot_valid else 0
        elif param in (0, 3, 5):
            session.send_ipmi_response(code=0xC7)
            return
        else:
            session.send_ipmi_response(code=0x80)
            return
        session.send_ipmi_response()

    # -- state for the control channel ---------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "power": self.sync_power(),
            "machine": self.machine.snapshot() if self.machine is not None else None,
            "boot": {
                "selector": self.boot_selector,
                "valid": self.boot_valid,
                "persistent": self.boot_persistent,
                "efi": self.boot_efi,
            },
            "last_boot": self.last_boot,
            "fault": self.fault.to_json() if self.fault else None,
            "down": self.is_down(),
            "sessions": len(self.sessions),
            "stats": dict(self.stats),
            "sol": self.sol_snapshot(),
        }

    def sol_snapshot(self) -> dict[str, Any]:
        serial = self.serial
        return {
            "active": self.sol is not None and self.sol.active,
            "stats": dict(self.sol.stats) if self.sol is not None else {},
            "typed": serial.typed.decode(errors="replace") if isinstance(serial, SimSerial) else None,
            "breaks": serial.breaks if isinstance(serial, SimSerial) else None,
        }

    def serial_print(self, text: str) -> None:
        """Make a simulated machine print ``text`` on its serial line (a no-op for VMs)."""
        if isinstance(self.serial, SimSerial):
            self.serial.print(text)

    def set_boot(self, selector: int, persistent: bool, valid: bool = True) -> None:
        self.boot_valid, self.boot_selector, self.boot_persistent = (
            valid,
            selector if valid else 0,
            persistent,
        )
