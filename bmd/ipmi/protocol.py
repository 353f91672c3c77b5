"""IPMI 2.0 / RMCP+ numbers, from the IPMI v2.0 rev 1.1 specification (section and table cited)."""

from __future__ import annotations

import enum

from bmd.errors import BMCError

# RMCP header (13.1.3): version 6, reserved, sequence 0xFF (no RMCP ACK), class 7 (IPMI).
RMCP_HEADER = b"\x06\x00\xff\x07"
AUTH_TYPE_RMCP_PLUS = 0x06  # 13.6, "Format = RMCP+ (IPMI v2.0 only)"
NEXT_HEADER = 0x07  # 13.28.4, the one value allowed in the integrity trailer
BMC_ADDRESS = 0x20  # the BMC's responder slave address
CONSOLE_SWID = 0x81  # remote console software ID used as requester address
SESSION_HEADER_LEN = 16  # RMCP(4) + auth type + payload type + session id + seq + length

ENCRYPTED = 0x80
AUTHENTICATED = 0x40
PAYLOAD_TYPE_MASK = 0x3F
NAME_ONLY_LOOKUP = 0x10  # RAKP 1 role bit: look the user up by name only


class PayloadType(enum.IntEnum):
    """13.27.3 payload types."""

    IPMI = 0x00
    SOL = 0x01
    OPEN_SESSION_REQUEST = 0x10
    OPEN_SESSION_RESPONSE = 0x11
    RAKP1 = 0x12
    RAKP2 = 0x13
    RAKP3 = 0x14
    RAKP4 = 0x15


class NetFn(enum.IntEnum):
    CHASSIS = 0x00
    APP = 0x06


class ChassisCmd:
    GET_STATUS = 0x01
    CONTROL = 0x02
    SET_BOOT_OPTIONS = 0x08
    GET_BOOT_OPTIONS = 0x09


class AppCmd:
    GET_DEVICE_ID = 0x01
    SET_SESSION_PRIVILEGE = 0x3B
    CLOSE_SESSION = 0x3C
    ACTIVATE_PAYLOAD = 0x48
    DEACTIVATE_PAYLOAD = 0x49


class Privilege(enum.IntEnum):
    CALLBACK = 1
    USER = 2
    OPERATOR = 3
    ADMINISTRATOR = 4


class ChassisControl(enum.IntEnum):
    """28.3 Chassis Control, request data byte 1."""

    POWER_OFF = 0
    POWER_ON = 1
    POWER_CYCLE = 2
    HARD_RESET = 3
    DIAGNOSTIC_INTERRUPT = 4
    SOFT_OFF = 5


class BootTarget(enum.IntEnum):
    """28.13 boot flags parameter 5, data 2 bits 5:2 (boot device selector)."""

    NONE = 0x0
    PXE = 0x1
    DISK = 0x2
    DISK_SAFE_MODE = 0x3
    DIAGNOSTIC = 0x4
    CDROM = 0x5
    BIOS = 0x6
    REMOTE_FLOPPY = 0x7
    REMOTE_CDROM = 0x8
    REMOTE_MEDIA = 0x9
    REMOTE_DISK = 0xB
    FLOPPY = 0xF


class BootParam:
    """28.13 boot option parameter selectors bmd uses."""

    SET_IN_PROGRESS = 0
    VALID_BIT_CLEARING = 3
    BOOT_FLAGS = 5


# Table 13-15: RMCP+ and RAKP message status codes.
RMCPP_STATUS: dict[int, str] = {
    0x00: "no errors",
    0x01: "insufficient resources to create a session",
    0x02: "invalid session ID",
    0x03: "invalid payload type",
    0x04: "invalid authentication algorithm",
    0x05: "invalid integrity algorithm",
    0x06: "no matching authentication payload",
    0x07: "no matching integrity payload",
    0x08: "inactive session ID",
    0x09: "invalid role",
    0x0A: "unauthorized role or privilege level requested",
    0x0B: "insufficient resources to create a session at the requested role",
    0x0C: "invalid name length",
    0x0D: "unauthorized name",
    0x0E: "unauthorized GUID",
    0x0F: "invalid integrity check value",
    0x10: "invalid confidentiality algorithm",
    0x11: "no cipher suite match with proposed security algorithms",
    0x12: "illegal or unrecognized parameter",
}
# Statuses meaning "not this cipher suite": the client may propose another one.
SUITE_REJECTED_STATUS = frozenset({0x04, 0x05, 0x06, 0x07, 0x10, 0x11})
# Statuses meaning "these credentials / this role are refused": fatal, never retried.
AUTH_REJECTED_STATUS = frozenset({0x09, 0x0A, 0x0C, 0x0D, 0x0E, 0x0F})
# The BMC no longer knows the session being set up (a retransmission raced it): start over.
RESTART_STATUS = frozenset({0x02, 0x08})

# Table 5-2: completion codes (plus the boot-options specific 80h-82h of 28.12).
COMPLETION_CODES: dict[int, str] = {
    0x00: "ok",
    0x80: "parameter not supported",
    0x81: "set in progress by another party",
    0x82: "parameter is read-only",
    0xC0: "node busy",
    0xC1: "invalid command",
    0xC2: "command invalid for given LUN",
    0xC3: "timeout while processing command",
    0xC4: "out of space",
    0xC5: "reservation cancelled",
    0xC6: "request data truncated",
    0xC7: "request data length invalid",
    0xC8: "request data field length limit exceeded",
    0xC9: "parameter out of range",
    0xCA: "cannot return number of requested data bytes",
    0xCB: "requested sensor, data, or record not present",
    0xCC: "invalid data field in request",
    0xCD: "command illegal for specified sensor or record type",
    0xCE: "command response could not be provided",
    0xCF: "cannot execute duplicated request",
    0xD0: "SDR repository in update mode",
    0xD1: "device in firmware update mode",
    0xD2: "BMC initialization in progress",
    0xD3: "destination unavailable",
    0xD4: "insufficient privilege level",
    0xD5: "command not supported in present state",
    0xD6: "command sub-function disabled or unavailable",
    0xFF: "unspecified error",
}
# Worth asking again (with a new rq_seq) after a short pause.
BUSY_CODES = frozenset({0xC0, 0xC3, 0xCE, 0xD2})


def describe_status(status: int) -> str:
    return f"0x{status:02X} ({RMCPP_STATUS.get(status, 'unknown status')})"


def describe_completion(code: int) -> str:
    return f"0x{code:02X} ({COMPLETION_CODES.get(code, 'unknown completion code')})"


class ProtocolError(Exception):
    """A datagram that cannot be parsed or authenticated. Dropped by the receiver, never raised to callers."""


class CompletionCodeError(BMCError):
    """The BMC answered a command with a non-zero completion code."""

    def __init__(self, message: str, completion_code: int) -> None:
        super().__init__(message)
        self.completion_code = completion_code
