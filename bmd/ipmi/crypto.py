"""Cipher suites 3 and 17: RAKP key exchange MACs, session keys, integrity and AES-CBC-128 (13.28-13.32)."""

from __future__ import annotations

import hmac as std_hmac
import os
from dataclasses import dataclass, field

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

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA1() if self.hash_name == "sha1" else hashes.SHA256()

    def mac(self, key: bytes, data: bytes) -> bytes:
        """The suite's full HMAC of ``data`` under ``key``."""
        h = crypto_hmac.HMAC(key, self.hash_algorithm())
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


class AesCbc:
    """AES-CBC-128 under one key, from one ECB context per direction made once per session.

    Building a CBC context per packet cost ~4 us (twice per call); the chaining is done here instead:
    encryption XORs each block with the previous ciphertext before the block cipher, decryption runs the
    block cipher over every block in one go and XORs each result with the previous ciphertext.
    """

    __slots__ = ("_decrypt", "_encrypt")

    def __init__(self, key: bytes) -> None:
        cipher = Cipher(algorithms.AES(key), modes.ECB())  # the CBC chaining is done below
        self._encrypt = cipher.encryptor()
        self._decrypt = cipher.decryptor()

    def encrypt(self, iv: bytes, plain: bytes) -> bytes:
        """``plain`` is whole blocks."""
        out = bytearray()
        prev = int.from_bytes(iv)
        for i in range(0, len(plain), AES_BLOCK):
            block = self._encrypt.update((prev ^ int.from_bytes(plain[i : i + AES_BLOCK])).to_bytes(AES_BLOCK))
            out += block
            prev = int.from_bytes(block)
        return bytes(out)

    def decrypt(self, iv: bytes, data: bytes) -> bytes:
        """``data`` is whole blocks."""
        blocks = self._decrypt.update(data)
        return (int.from_bytes(blocks) ^ int.from_bytes(iv + data[:-AES_BLOCK])).to_bytes(len(data))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Keys of an established session: K1 signs packets, the first 16 bytes of K2 encrypt them."""

    suite: CipherSuite
    k1: bytes
    aes_key: bytes
    # Made once per session: a keyed HMAC to copy (keying one per packet cost ~2.5 us more) and the cipher.
    _signer: crypto_hmac.HMAC = field(init=False, repr=False, compare=False)
    cbc: AesCbc = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_signer", crypto_hmac.HMAC(self.k1, self.suite.hash_algorithm()))
        object.__setattr__(self, "cbc", AesCbc(self.aes_key))

    def sign(self, data: bytes) -> bytes:
        h = self._signer.copy()
        h.update(data)
        return h.finalize()[: self.suite.integrity_length]

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


def encrypt_payload(aes: bytes | AesCbc, payload: bytes) -> bytes:
    """IV + AES-CBC-128(payload | pad 01 02 .. N | N) (13.29, table 13-20); ``aes`` a key or a session's cipher."""
    pad = (AES_BLOCK - (len(payload) + 1) % AES_BLOCK) % AES_BLOCK
    plain = payload + bytes(range(1, pad + 1)) + bytes((pad,))
    iv = os.urandom(AES_BLOCK)
    return iv + (aes if isinstance(aes, AesCbc) else AesCbc(aes)).encrypt(iv, plain)


def decrypt_payload(aes: bytes | AesCbc, data: bytes) -> bytes:
    if len(data) < 2 * AES_BLOCK or len(data) % AES_BLOCK:
        raise ProtocolError(f"encrypted payload of {len(data)} bytes is not IV + whole AES blocks")
    plain = (aes if isinstance(aes, AesCbc) else AesCbc(aes)).decrypt(data[:AES_BLOCK], data[AES_BLOCK:])
    pad = plain[-1]
    if pad >= AES_BLOCK or plain[-1 - pad : -1] != bytes(range(1, pad + 1)):
        raise ProtocolError("bad confidentiality pad")
    return plain[: -1 - pad]
