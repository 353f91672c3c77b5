"""Cipher suites 3 and 17: RAKP key exchange MACs, session keys, integrity and AES-CBC-128 (13.28-13.32)."""

from __future__ import annotations

import hmac as std_hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bmd.ipmi.protocol import ProtocolError

AES_BLOCK = 16
CONST_1 = b"\x01" * 20  # 13.32: K1 = HMAC_SIK(const 1); the constant is 20 bytes for every algorithm
CONST_2 = b"\x02" * 20


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """One row of table 22-20 that bmd speaks."""

    id: int
    auth_algorithm: int  # 13.28: 1 = RAKP-HMAC-SHA1, 3 = RAKP-HMAC-SHA256
    integrity_algorithm: int  # 13.28.4: 1 = HMAC-SHA1-96, 4 = HMAC-SHA256-128
    confidentiality_algorithm: int  # 13.28.5: 1 = AES-CBC-128
    hash_name: str
    integrity_length: int  # bytes of AuthCode in packets, and of the RAKP 4 ICV

    def algorithms(self) -> tuple[int, int, int]:
        return (self.auth_algorithm, self.integrity_algorithm, self.confidentiality_algorithm)

    def mac(self, key: bytes, data: bytes) -> bytes:
        """The suite's full HMAC of ``data`` under ``key``."""
        h = crypto_hmac.HMAC(key, hashes.SHA1() if self.hash_name == "sha1" else hashes.SHA256())
        h.update(data)
        return h.finalize()


SUITE_3 = CipherSuite(3, 1, 1, 1, "sha1", 12)
SUITE_17 = CipherSuite(17, 3, 4, 1, "sha256", 16)
SUITES: dict[int, CipherSuite] = {3: SUITE_3, 17: SUITE_17}


def suite_for(algorithms: tuple[int, int, int]) -> CipherSuite | None:
    for suite in SUITES.values():
        if suite.algorithms() == algorithms:
            return suite
    return None


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Keys of an established session: K1 signs packets, the first 16 bytes of K2 encrypt them."""

    suite: CipherSuite
    k1: bytes
    aes_key: bytes

    def sign(self, data: bytes) -> bytes:
        return self.suite.mac(self.k1, data)[: self.suite.integrity_length]

    def verify(self, data: bytes, auth_code: bytes) -> bool:
        return std_hmac.compare_digest(self.sign(data), auth_code)


def session_integrity_key(suite: CipherSuite, key: bytes, rm: bytes, rc: bytes, role: int, username: bytes) -> bytes:
    """SIK = HMAC_KG(Rm | Rc | ROLEm | ULENGTHm | UNAMEm); KG is Kuid when no BMC key is set (13.31)."""
    return suite.mac(key, rm + rc + bytes((role, len(username))) + username)


def derive_keys(suite: CipherSuite, sik: bytes) -> SessionKeys:
    k2 = suite.mac(sik, CONST_2)
    return SessionKeys(suite=suite, k1=suite.mac(sik, CONST_1), aes_key=k2[:AES_BLOCK])


def rakp2_auth_code(
    suite: CipherSuite,
    kuid: bytes,
    console_id: bytes,
    bmc_id: bytes,
    rm: bytes,
    rc: bytes,
    guid: bytes,
    role: int,
    username: bytes,
) -> bytes:
    """HMAC_Kuid(SIDm, SIDc, Rm, Rc, GUIDc, ROLEm, ULENGTHm, UNAMEm) (13.31, RAKP message 2)."""
    return suite.mac(kuid, console_id + bmc_id + rm + rc + guid + bytes((role, len(username))) + username)


def rakp3_auth_code(suite: CipherSuite, kuid: bytes, rc: bytes, console_id: bytes, role: int, username: bytes) -> bytes:
    """HMAC_Kuid(Rc, SIDm, ROLEm, ULENGTHm, UNAMEm) (13.31, RAKP message 3)."""
    return suite.mac(kuid, rc + console_id + bytes((role, len(username))) + username)


def rakp4_check_value(suite: CipherSuite, sik: bytes, rm: bytes, bmc_id: bytes, guid: bytes) -> bytes:
    """HMAC_SIK(Rm, SIDc, GUIDc), truncated to the suite's integrity length (13.31, RAKP message 4)."""
    return suite.mac(sik, rm + bmc_id + guid)[: suite.integrity_length]


def encrypt_payload(aes_key: bytes, payload: bytes) -> bytes:
    """IV + AES-CBC-128(payload | pad 01 02 .. N | N) (13.29, table 13-20)."""
    pad = (AES_BLOCK - (len(payload) + 1) % AES_BLOCK) % AES_BLOCK
    plain = payload + bytes(range(1, pad + 1)) + bytes((pad,))
    iv = os.urandom(AES_BLOCK)
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(plain) + encryptor.finalize()


def decrypt_payload(aes_key: bytes, data: bytes) -> bytes:
    if len(data) < 2 * AES_BLOCK or len(data) % AES_BLOCK:
        raise ProtocolError(f"encrypted payload of {len(data)} bytes is not IV + whole AES blocks")
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(data[:AES_BLOCK])).decryptor()
    plain = decryptor.update(data[AES_BLOCK:]) + decryptor.finalize()
    pad = plain[-1]
    if pad >= AES_BLOCK or plain[-1 - pad : -1] != bytes(range(1, pad + 1)):
        raise ProtocolError("bad confidentiality pad")
    return plain[: -1 - pad]
