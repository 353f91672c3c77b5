"""RMCP+ session packets (13.6, table 13-8) and IPMI LAN messages (13.8, figure 13-4)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bmd.ipmi.crypto import SessionKeys, decrypt_payload, encrypt_payload
from bmd.ipmi.protocol import (
    AUTH_TYPE_RMCP_PLUS,
    AUTHENTICATED,
    BMC_ADDRESS,
    CONSOLE_SWID,
    ENCRYPTED,
    NEXT_HEADER,
    PAYLOAD_TYPE_MASK,
    RMCP_HEADER,
    SESSION_HEADER_LEN,
    PayloadType,
    ProtocolError,
)

_HEADER = struct.Struct("<BBIIH")  # auth type, payload type, session id, session seq, payload length


@dataclass(frozen=True, slots=True)
class Header:
    payload_type: int  # without the encrypted/authenticated bits
    encrypted: bool
    authenticated: bool
    session_id: int
    sequence: int
    payload_length: int


def parse_header(data: bytes) -> Header:
    if len(data) < SESSION_HEADER_LEN or data[0] != 0x06 or data[2:4] != b"\xff\x07":
        raise ProtocolError("not an RMCP IPMI datagram")
    auth_type, ptype, session_id, sequence, length = _HEADER.unpack_from(data, 4)
    if auth_type != AUTH_TYPE_RMCP_PLUS:
        raise ProtocolError(f"not an RMCP+ (IPMI 2.0) packet: auth type {auth_type}")
    if SESSION_HEADER_LEN + length > len(data):
        raise ProtocolError(f"payload length {length} overruns the datagram")
    return Header(
        payload_type=ptype & PAYLOAD_TYPE_MASK,
        encrypted=bool(ptype & ENCRYPTED),
        authenticated=bool(ptype & AUTHENTICATED),
        session_id=session_id,
        sequence=sequence,
        payload_length=length,
    )


def build_packet(
    payload_type: PayloadType, session_id: int, sequence: int, payload: bytes, keys: SessionKeys | None
) -> bytes:
    """A session packet; with ``keys`` the payload is encrypted and the packet signed with K1."""
    if keys is None:
        return (
            RMCP_HEADER + _HEADER.pack(AUTH_TYPE_RMCP_PLUS, payload_type, session_id, sequence, len(payload)) + payload
        )
    body = encrypt_payload(keys.cbc, payload)
    message = bytearray(RMCP_HEADER)
    message += _HEADER.pack(
        AUTH_TYPE_RMCP_PLUS, payload_type | ENCRYPTED | AUTHENTICATED, session_id, sequence, len(body)
    )
    message += body
    # Integrity pad: auth type .. next header must be a multiple of 4 bytes (13.28.4).
    pad = -(len(message) - len(RMCP_HEADER) + 2) % 4
    message += b"\xff" * pad
    message.append(pad)
    message.append(NEXT_HEADER)
    message += keys.sign(bytes(message[len(RMCP_HEADER) :]))
    return bytes(message)


def open_packet(data: bytes, header: Header, keys: SessionKeys) -> bytes:
    """Check the integrity of an in-session packet and return its clear payload."""
    if not header.authenticated:
        raise ProtocolError("unauthenticated packet inside an authenticated session")
    length = keys.suite.integrity_length
    if len(data) < SESSION_HEADER_LEN + header.payload_length + 2 + length:
        raise ProtocolError("packet too short for its integrity trailer")
    if not keys.verify(data[len(RMCP_HEADER) : -length], data[-length:]):
        raise ProtocolError("integrity check failed")
    payload = data[SESSION_HEADER_LEN : SESSION_HEADER_LEN + header.payload_length]
    if header.encrypted:
        return decrypt_payload(keys.cbc, payload)
    return payload


def checksum(data: bytes) -> int:
    """Two's complement checksum: the bytes plus the checksum sum to zero modulo 256."""
    return -sum(data) & 0xFF


def build_request(netfn: int, command: int, rq_seq: int, data: bytes = b"") -> bytes:
    head = bytes((BMC_ADDRESS, netfn << 2))
    body = bytes((CONSOLE_SWID, (rq_seq & 0x3F) << 2, command)) + data
    return head + bytes((checksum(head),)) + body + bytes((checksum(body),))


@dataclass(frozen=True, slots=True)
class Response:
    netfn: int  # the response netfn (request netfn + 1)
    command: int
    rq_seq: int
    code: int  # completion code
    data: bytes


def parse_response(message: bytes) -> Response:
    if len(message) < 8:
        raise ProtocolError(f"IPMI response of {len(message)} bytes is too short")
    if sum(message[0:3]) & 0xFF or sum(message[3:]) & 0xFF:
        raise ProtocolError("IPMI response checksum mismatch")
    return Response(
        netfn=message[1] >> 2,
        command=message[5],
        rq_seq=message[4] >> 2,
        code=message[6],
        data=bytes(message[7:-1]),
    )
