"""The lab BMC's side of one RMCP+ session: pyghmi's ServerSession with suite-aware RAKP.

pyghmi's packet code (integrity, AES, IPMI framing, dispatch to the Bmc) is reused as is; the open
session answer and RAKP 2/4 are written here from the IPMI 2.0 spec (13.17-13.23), with the stdlib's
hmac/hashlib, so that cipher suite 17 works and failures get the status codes the spec asks for.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import struct
import time
from typing import TYPE_CHECKING, Any

from pyghmi.ipmi.private import constants, serversession

if TYPE_CHECKING:
    from bmd.lab.bmc import LabBmc

# Cipher suites the lab can serve: id -> (auth, integrity, confidentiality) algorithm numbers.
LAB_SUITES: dict[int, tuple[int, int, int]] = {3: (1, 1, 1), 17: (3, 4, 1)}
# id -> (hash used by RAKP and integrity, bytes of the integrity AuthCode and of the RAKP 4 ICV)
_HASHES: dict[int, tuple[Any, int]] = {3: (hashlib.sha1, 12), 17: (hashlib.sha256, 16)}
# Chassis Control and Set System Boot Options need Operator privilege (appendix G of the spec).
_OPERATOR_COMMANDS = frozenset({(0x00, 0x02), (0x00, 0x08)})
_OPEN_RESPONSE = constants.payload_types["rmcpplusopenresponse"]
_RAKP2 = constants.payload_types["rakp2"]
_RAKP4 = constants.payload_types["rakp4"]


class LabSession(serversession.ServerSession):  # type: ignore[misc]
    def __new__(cls, *args: Any, **kwargs: Any) -> LabSession:
        return object.__new__(cls)  # pyghmi's Session.__new__ caches client sessions; not wanted here

    def __init__(self, bmc: LabBmc, sender: Any, clientaddr: Any, request: bytes) -> None:
        # ServerSession.__init__ is not called: it registers in pyghmi's global tables. These are the
        # attributes pyghmi's Session packet code reads.
        self.bmc = bmc
        self.socket = sender
        self.sockaddr = clientaddr
        self.uuid = bmc.uuid
        self.authdata = bmc.authdata
        self.kg = bmc.kg
        self.servermode = True
        self.ipmiversion = 2.0
        self.authtype = 6
        self.sequencenumber = 0
        self.sessionid = 0
        self.localsid: int | None = None
        self.remseqnumber: int | None = None
        self.integrityalgo: Any = 0
        self.confalgo: Any = 0
        self.k1: bytes | None = None
        self.aeskey: bytes | None = None
        self.rqaddr = constants.IPMI_BMC_ADDRESS
        self.rqlun = None
        self.lastpayload = None
        self.last_payload_type = None
        self.pendingpayloads: collections.deque[Any] = collections.deque()
        self.pktqueue: collections.deque[Any] = collections.deque()
        self.broken = False
        self.sol_handler: Any = None  # bmd.lab.sol.LabSol.from_console while SOL is active here
        self.ipmicallback: Any = None
        self.clientpriv = 2
        self.maxpriv = 4
        self.currhashlib: Any = hashlib.sha1
        self.currhashlen = 12
        self.suite_id = 0
        self.clientsessionid = b""
        self.managedsessionid = b""
        self.last_active = time.monotonic()
        self.replay: tuple[tuple[int, bytes], bytes] | None = None
        self._last_request: tuple[int, int, int, bytes] | None = None
        self._last_answer: tuple[int, bytes] | None = None
        self.send_payload(self.create_open_session_response(bytearray(request)), _OPEN_RESPONSE, retry=False)

    def _mac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.currhashlib).digest()

    def create_open_session_response(self, request: bytearray) -> bytearray:
        tag = request[0]
        self.clientsessionid = bytes(request[4:8])
        self.bmc.stats["open_session"] += 1
        proposed: list[int | None] = []
        for kind, offset in enumerate((8, 16, 24)):
            record = request[offset : offset + 8]
            if len(record) < 8 or record[0] != kind:
                proposed.append(-1)
            else:  # a zero-length record means "whatever the BMC prefers"
                proposed.append(None if record[3] == 0 else record[4])
        for suite in self.bmc.suites:
            algorithms = LAB_SUITES[suite]
            if all(p is None or p == a for p, a in zip(proposed, algorithms, strict=True)):
                break
        else:
            self.bmc.stats["suite_refused"] += 1
            return bytearray((tag, 0x11, 0, 0)) + self.clientsessionid
        self.suite_id = suite
        self.bmc.stats[f"suite_{suite}"] += 1
        self.currhashlib, self.currhashlen = _HASHES[suite]
        self.managedsessionid = self.bmc.new_session_id()
        records = b"".join(bytes((kind, 0, 0, 8, alg, 0, 0, 0)) for kind, alg in enumerate(algorithms))
        return bytearray((tag, 0, 4, 0)) + self.clientsessionid + self.managedsessionid + records

    def _got_rakp1(self, raw: bytearray) -> None:
        data = bytes(raw)
        tag = data[0]
        self.bmc.stats["rakp1"] += 1
        self.Rm = data[8:24]
        self.rolem = data[24]
        self.maxpriv = self.rolem & 0x0F
        self.username = data[28 : 28 + data[27]]
        password = self.authdata.get(self.username.decode(errors="replace"))
        if password is None or len(self.Rm) != 16:
            self.bmc.stats["unknown_user"] += 1
            self.send_payload(bytes((tag, 0x0D, 0, 0)) + self.clientsessionid, _RAKP2, retry=False)
            self.bmc.drop_session(self)
            return
        self.kuid = password.encode()
        self.Rc = os.urandom(16)
        guid = self.uuid.bytes
        who = bytes((self.rolem, len(self.username))) + self.username
        code = self._mac(self.kuid, self.clientsessionid + self.managedsessionid + self.Rm + self.Rc + guid + who)
        self.send_payload(bytes((tag, 0, 0, 0)) + self.clientsessionid + self.Rc + guid + code, _RAKP2, retry=False)

    def _got_rakp3(self, raw: bytearray) -> None:
        data = bytes(raw)
        tag = data[0]
        if data[1] != 0 or not hasattr(self, "Rc"):  # the console gave up (e.g. bad RAKP 2 HMAC)
            self.bmc.drop_session(self)
            return
        who = bytes((self.rolem, len(self.username))) + self.username
        expected = self._mac(self.kuid, self.Rc + self.clientsessionid + who)
        if not hmac.compare_digest(data[8 : 8 + len(expected)], expected):
            self.bmc.stats["rakp3_refused"] += 1
            self.send_payload(bytes((tag, 0x0F, 0, 0)) + self.clientsessionid, _RAKP4, retry=False)
            self.bmc.drop_session(self)
            return
        sik = self._mac(self.kg or self.kuid, self.Rm + self.Rc + who)
        icv = self._mac(sik, self.Rm + self.managedsessionid + self.uuid.bytes)[: self.currhashlen]
        self.send_payload(bytes((tag, 0, 0, 0)) + self.clientsessionid + icv, _RAKP4, retry=False)
        # From here on every packet is signed with K1 and encrypted with K2 (13.32).
        self.k1 = self._mac(sik, b"\x01" * 20)
        self.aeskey = self._mac(sik, b"\x02" * 20)[:16]
        self.integrityalgo = self.suite_id
        self.confalgo = "aes"
        self.sequencenumber = 1
        (self.sessionid,) = struct.unpack("<I", self.clientsessionid)
        (self.localsid,) = struct.unpack("<I", self.managedsessionid)
        self.ipmicallback = self.handle_client_request
        self.bmc.stats["sessions"] += 1

    def handle_client_request(self, request: dict[str, Any]) -> None:
        key = (request["netfn"], request["command"], self.seqlun, bytes(request["data"]))
        if key == self._last_request and self._last_answer is not None:
            # A retransmission (same rq_seq and data as the request just answered): answer it again
            # rather than run it twice.
            self.bmc.stats["duplicates"] += 1
            code, data = self._last_answer
            self._send_ipmi_net_payload(code=code, data=data)
            return
        self._last_request, self._last_answer = key, None
        self.bmc.stats["commands"] += 1
        if (request["netfn"], request["command"]) in _OPERATOR_COMMANDS and self.clientpriv < 3:
            self.bmc.stats["insufficient_privilege"] += 1
            self.send_ipmi_response(code=0xD4)  # sessions start at User; changes need Operator
            return
        super().handle_client_request(request)

    def send_ipmi_response(self, data: Any = (), code: int = 0) -> None:
        self._last_answer = (code, bytes(data))
        self._send_ipmi_net_payload(data=data, code=code)

    def close_server_session(self) -> None:
        self.bmc.stats["closed"] += 1
        self.bmc.drop_session(self)
