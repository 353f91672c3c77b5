"""Codecs of the native client: packets, integrity, AES, IPMI framing, command payloads."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmd.errors import BMCError, ConfigError, InvalidInput
from bmd.ipmi import BMCTarget, BootTarget, IPMISettings
from bmd.ipmi.commands import decode_boot_flags, decode_chassis_status, decode_device_id, encode_boot_flags
from bmd.ipmi.crypto import (
    SUITE_3,
    SUITE_17,
    decrypt_payload,
    derive_keys,
    encrypt_payload,
    rakp2_auth_code,
    session_integrity_key,
)
from bmd.ipmi.protocol import ProtocolError
from bmd.ipmi.session import ClientStats, Session
from bmd.ipmi.wire import build_packet, build_request, checksum, open_packet, parse_header, parse_response

KEYS = derive_keys(SUITE_17, b"k" * 32)


@given(st.binary(max_size=300))
def test_aes_round_trip(payload: bytes) -> None:
    key = os.urandom(16)
    sealed = encrypt_payload(key, payload)
    assert len(sealed) % 16 == 0 and len(sealed) >= 32
    assert decrypt_payload(key, sealed) == payload


@given(st.binary(max_size=100), st.binary(min_size=1, max_size=100))
def test_aes_is_standard_cbc(first: bytes, second: bytes) -> None:
    """The session cipher chains blocks itself over one ECB context: it must be AES-CBC exactly, both ways,
    and keep no chaining state from one packet to the next."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = os.urandom(16)
    keys = derive_keys(SUITE_17, key + b"\0" * 16)
    for payload in (first, second):
        sealed = encrypt_payload(keys.cbc, payload)
        decryptor = Cipher(algorithms.AES(keys.aes_key), modes.CBC(sealed[:16])).decryptor()
        plain = decryptor.update(sealed[16:]) + decryptor.finalize()
        assert plain[: len(payload)] == payload and plain[-1] == len(plain) - len(payload) - 1
        iv = os.urandom(16)
        encryptor = Cipher(algorithms.AES(keys.aes_key), modes.CBC(iv)).encryptor()
        assert decrypt_payload(keys.cbc, iv + encryptor.update(plain) + encryptor.finalize()) == payload


def test_decrypt_rejects_a_bad_pad() -> None:
    key = os.urandom(16)
    sealed = bytearray(encrypt_payload(key, b"abc"))
    # CBC: flipping the IV's byte 14 flips plaintext byte 14, a pad byte ("abc" + 01..0C + 0C), so the pad no
    # longer reads 01 02 .. N — every time (garbling the last ciphertext block left a 1-in-256 valid pad)
    sealed[14] ^= 0xFF
    with pytest.raises(ProtocolError):
        decrypt_payload(key, bytes(sealed))


@pytest.mark.parametrize("suite", [SUITE_3, SUITE_17])
def test_signed_packet_round_trip_and_tamper(suite: object) -> None:
    keys = derive_keys(suite, os.urandom(20))  # type: ignore[arg-type]
    packet = build_packet(0, 0x11223344, 7, b"hello ipmi", keys)  # type: ignore[arg-type]
    # RMCP header, then auth type .. next header is a multiple of 4 bytes (13.28.4)
    assert packet[:4] == b"\x06\x00\xff\x07"
    assert (len(packet) - 4 - keys.suite.integrity_length) % 4 == 0
    header = parse_header(packet)
    assert (header.session_id, header.sequence, header.encrypted, header.authenticated) == (
        0x11223344,
        7,
        True,
        True,
    )
    assert open_packet(packet, header, keys) == b"hello ipmi"
    tampered = bytearray(packet)
    tampered[20] ^= 1
    with pytest.raises(ProtocolError, match="integrity"):
        open_packet(bytes(tampered), parse_header(bytes(tampered)), keys)


@given(st.binary(max_size=120))
def test_garbage_datagrams_only_raise_protocol_error(data: bytes) -> None:
    try:
        header = parse_header(data)
        open_packet(data, header, KEYS)
    except ProtocolError:
        pass


def test_request_framing_and_checksums() -> None:
    msg = build_request(0x00, 0x01, 5)
    assert msg[0] == 0x20 and msg[1] == 0x00 << 2 and checksum(msg[:2]) == msg[2]
    assert msg[3] == 0x81 and msg[4] == 5 << 2 and msg[5] == 0x01
    assert sum(msg[3:]) & 0xFF == 0
    # a response: rqAddr, netfn|lun, chk, rsAddr, seq|lun, cmd, code, data, chk
    head = bytes((0x81, 0x01 << 2))
    body = bytes((0x20, 5 << 2, 0x01, 0x00, 0x01, 0x00, 0x00))
    response = parse_response(head + bytes((checksum(head),)) + body + bytes((checksum(body),)))
    assert (response.netfn, response.command, response.rq_seq, response.code) == (1, 1, 5, 0)
    assert response.data == b"\x01\x00\x00"
    with pytest.raises(ProtocolError):
        parse_response(head + bytes((checksum(head) ^ 1,)) + body + bytes((checksum(body),)))


def test_rakp2_code_matches_an_independent_computation() -> None:
    """The spec's RAKP 2 HMAC input order, computed with the standard library."""
    cid, bid, rm, rc, guid = b"\x01\0\0\0", b"\x02\0\0\0", b"m" * 16, b"c" * 16, b"g" * 16
    expected = hmac.new(b"secret", cid + bid + rm + rc + guid + b"\x14\x05admin", hashlib.sha256).digest()
    assert rakp2_auth_code(SUITE_17, b"secret", cid, bid, rm, rc, guid, 0x14, b"admin") == expected
    sik = session_integrity_key(SUITE_3, b"secret", rm, rc, 0x14, b"admin")
    assert sik == hmac.new(b"secret", rm + rc + b"\x14\x05admin", hashlib.sha1).digest()


@pytest.mark.parametrize(
    ("target", "persistent", "efi", "data"),
    [
        (BootTarget.PXE, False, False, b"\x05\x80\x04\x00\x00\x00"),
        (BootTarget.DISK, True, False, b"\x05\xc0\x08\x00\x00\x00"),
        (BootTarget.BIOS, True, True, b"\x05\xe0\x18\x00\x00\x00"),
        (BootTarget.NONE, True, False, b"\x05\x00\x00\x00\x00\x00"),
    ],
)
def test_boot_flags_encoding(target: BootTarget, persistent: bool, efi: bool, data: bytes) -> None:
    assert encode_boot_flags(target, persistent, efi) == data
    flags = decode_boot_flags(b"\x01\x05" + data[1:])
    assert flags.target == target
    assert flags.persistent == (persistent and target != BootTarget.NONE)
    assert flags.valid == (target != BootTarget.NONE)


def test_boot_flags_decoding_errors_and_unknown_selectors() -> None:
    with pytest.raises(BMCError):
        decode_boot_flags(b"\x01\x03\x00")  # parameter 3, not boot flags
    assert decode_boot_flags(b"\x01\x05\x80\x28\x00\x00\x00").target == 0xA  # no name for 1010b


def test_device_id_and_chassis_status() -> None:
    dev = decode_device_id(bytes((0x20, 0x81, 0x09, 0x08, 0x02, 0x9F, 0x91, 0x12, 0x00, 0x02, 0x0F)))
    assert (dev.device_id, dev.device_revision, dev.firmware_version, dev.ipmi_version) == (
        32,
        1,
        "9.08",
        "2.0",
    )
    assert (dev.manufacturer_id, dev.product_id) == (0x1291, 0x0F02)
    assert decode_chassis_status(b"\x41\x00\x00").power_on
    assert not decode_chassis_status(b"\x40\x00\x00").power_on
    with pytest.raises(BMCError):
        decode_chassis_status(b"\x01")


class _NoEndpoint:
    pass


def test_inbound_sequence_window() -> None:
    session = Session(_NoEndpoint(), ("127.0.0.1", 623), 1, ClientStats(), "x")  # type: ignore[arg-type]
    accept = session._accept_sequence
    assert not accept(0)
    assert accept(5) and not accept(5)  # replay refused
    assert accept(3) and not accept(3)  # late but in the window, once
    assert accept(100)
    assert not accept(60)  # too far behind
    assert accept(99) and accept(101)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout": 0}, "ipmi.timeout"),
        ({"retries": -1}, "ipmi.retries"),
        ({"max_in_flight": 0}, "ipmi.max_in_flight"),
        ({"cipher_suites": (2,)}, "ipmi.cipher_suites"),
        ({"cipher_suites": ()}, "ipmi.cipher_suites"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        IPMISettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"host": ""}, "pm_address"),
        ({"host": "h", "port": 0}, "pm_address"),
        ({"host": "h", "username": "u" * 17}, "pm_user"),
        ({"host": "h", "password": "p" * 21}, "pm_password"),
    ],
)
def test_targets_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        BMCTarget(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_target_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(BMCTarget("h", 623, "admin", "s3cret", kg=b"s3cret"))


def test_session_header_layout() -> None:
    packet = build_packet(0x10, 0, 0, b"x" * 32, None)  # type: ignore[arg-type]
    assert struct.unpack_from("<BBIIH", packet, 4) == (6, 0x10, 0, 0, 32)
