"""Session establishment: RMCP+ Open Session, RAKP 1-4 (13.17-13.23), then Set Session Privilege Level."""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass

import structlog

from bmd.errors import BMCAuthError, BMCError, BMCTimeout
from bmd.ipmi.crypto import (
    SUITES,
    CipherSuite,
    derive_keys,
    rakp2_auth_code,
    rakp3_auth_code,
    rakp4_check_value,
    session_integrity_key,
    suite_for,
)
from bmd.ipmi.protocol import (
    AUTH_REJECTED_STATUS,
    NAME_ONLY_LOOKUP,
    RESTART_STATUS,
    SUITE_REJECTED_STATUS,
    AppCmd,
    NetFn,
    PayloadType,
    Privilege,
    ProtocolError,
    describe_completion,
    describe_status,
)
from bmd.ipmi.session import Session
from bmd.ipmi.wire import build_packet

log = structlog.get_logger(__name__)


class SuiteRejected(Exception):
    """The BMC refused the proposed cipher suite; another one may be tried."""


class HandshakeRestart(Exception):
    """The BMC lost track of the half-open session (a retransmission raced it); start again."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: bytes
    password: bytes
    kg: bytes | None  # the BMC key; None means "use the password" (one-key login)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r})"


@dataclass(frozen=True, slots=True)
class Timing:
    attempts: int  # sends of each handshake message
    wait: float  # seconds to wait for an answer before sending again
    silence_is_refusal: bool  # no answer to the open session request means "try the next suite"


class SuiteSilent(SuiteRejected):
    """No answer to the open session request: some BMCs (OpenIPMI's) drop unsupported proposals."""


def _record(kind: int, algorithm: int) -> bytes:
    return bytes((kind, 0, 0, 8, algorithm, 0, 0, 0))


def open_session_request(tag: int, console_id: bytes, privilege: int, suite: CipherSuite) -> bytes:
    auth, integrity, conf = suite.algorithms()
    return bytes((tag, privilege, 0, 0)) + console_id + _record(0, auth) + _record(1, integrity) + _record(2, conf)


def _check_status(step: str, status: int, label: str) -> None:
    if status == 0:
        return
    message = f"BMC {label} refused {step}: {describe_status(status)}"
    if status in AUTH_REJECTED_STATUS:
        raise BMCAuthError(message)
    if status in RESTART_STATUS:
        raise HandshakeRestart(message)
    if status in SUITE_REJECTED_STATUS and step == "the open session request":
        raise SuiteRejected(message)
    raise BMCError(message)


async def establish(
    session: Session,
    creds: Credentials,
    suite: CipherSuite,
    allowed: tuple[int, ...],
    privilege: Privilege,
    timing: Timing,
) -> None:
    """Run the handshake on ``session``; on return it holds its keys and BMC session ID."""
    label = session.label
    cid = session.console_id_bytes
    tag = os.urandom(1)[0]

    # Open Session Request / Response (13.17, 13.18).
    def expect_open(ptype: int, p: bytes) -> tuple[bytes, CipherSuite] | None:
        if ptype != PayloadType.OPEN_SESSION_RESPONSE or len(p) < 8 or p[0] != tag or p[4:8] != cid:
            return None
        _check_status("the open session request", p[1], label)
        if len(p) < 36:
            raise ProtocolError("short open session response")
        answered = suite_for((p[16], p[24], p[32]))
        if answered is None or answered.id not in allowed:
            raise SuiteRejected(f"BMC {label} answered with algorithms {(p[16], p[24], p[32])!r}")
        return p[8:12], answered

    request = open_session_request(tag, cid, privilege, suite)
    try:
        bmc_id, suite = await session.exchange(
            lambda: build_packet(PayloadType.OPEN_SESSION_REQUEST, 0, 0, request, None),
            expect_open,
            timing.attempts,
            timing.wait,
        )
    except BMCTimeout as err:
        if timing.silence_is_refusal:
            raise SuiteSilent(f"BMC {label} did not answer a suite {suite.id} proposal") from err
        raise

    # RAKP 1 / RAKP 2 (13.20, 13.21): the BMC proves it knows the password first.
    rm = os.urandom(16)
    role = privilege | NAME_ONLY_LOOKUP
    user = creds.username
    tag = (tag + 1) & 0xFF
    rakp1 = bytes((tag, 0, 0, 0)) + bmc_id + rm + bytes((role, 0, 0, len(user))) + user

    def expect_rakp2(ptype: int, p: bytes) -> tuple[bytes, bytes] | None:
        if ptype != PayloadType.RAKP2 or len(p) < 8 or p[0] != tag or p[4:8] != cid:
            return None
        _check_status(f"RAKP 1 (user {user.decode(errors='replace')!r})", p[1], label)
        rc, guid, code = p[8:24], p[24:40], p[40:]
        expected = rakp2_auth_code(suite, creds.password, cid, bmc_id, rm, rc, guid, role, user)
        if len(rc) != 16 or len(guid) != 16 or not hmac.compare_digest(code[: len(expected)], expected):
            raise BMCAuthError(f"BMC {label}: RAKP 2 HMAC mismatch (wrong password for {user.decode()!r})")
        return rc, guid

    rc, guid = await session.exchange(
        lambda: build_packet(PayloadType.RAKP1, 0, 0, rakp1, None), expect_rakp2, timing.attempts, timing.wait
    )

    # RAKP 3 / RAKP 4 (13.22, 13.23): we prove it, the BMC confirms the session integrity key.
    sik = session_integrity_key(suite, creds.kg or creds.password, rm, rc, role, user)
    tag = (tag + 1) & 0xFF
    rakp3 = bytes((tag, 0, 0, 0)) + bmc_id + rakp3_auth_code(suite, creds.password, rc, cid, role, user)

    def expect_rakp4(ptype: int, p: bytes) -> bool | None:
        if ptype != PayloadType.RAKP4 or len(p) < 8 or p[0] != tag or p[4:8] != cid:
            return None
        _check_status("RAKP 3", p[1], label)
        if not hmac.compare_digest(p[8 : 8 + suite.integrity_length], rakp4_check_value(suite, sik, rm, bmc_id, guid)):
            raise BMCAuthError(f"BMC {label}: RAKP 4 integrity check value mismatch (wrong BMC key?)")
        return True

    await session.exchange(
        lambda: build_packet(PayloadType.RAKP3, 0, 0, rakp3, None), expect_rakp4, timing.attempts, timing.wait
    )
    session.suite = suite
    session.keys = derive_keys(suite, sik)
    (session.bmc_id,) = struct.unpack("<I", bmc_id)

    # The session starts at User privilege; raise it for chassis control (22.18).
    if privilege > Privilege.USER:
        response = await session.request(
            NetFn.APP, AppCmd.SET_SESSION_PRIVILEGE, bytes((privilege,)), timing.attempts, timing.wait
        )
        if response.code in (0x80, 0x81, 0xD4):
            raise BMCAuthError(f"BMC {label} refused privilege {privilege.name}: {describe_completion(response.code)}")
        if response.code:
            raise BMCError(f"BMC {label}: set session privilege failed: {describe_completion(response.code)}")
    log.debug("ipmi_session_opened", bmc=label, cipher_suite=suite.id, bmc_session=session.bmc_id)


def known_suites(ids: tuple[int, ...]) -> list[CipherSuite]:
    return [SUITES[i] for i in ids]
