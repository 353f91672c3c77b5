"""Secrets at rest: BMC passwords are Fernet-encrypted with a key file created 0600 on first start."""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from bmd.errors import BmdError, ConfigError

PREFIX = "fernet:"


class SecretBox:
    """Encrypts and decrypts short secrets. The clear text never leaves through ``repr``."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def encrypt(self, clear: str) -> str:
        return PREFIX + self._fernet.encrypt(clear.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            raise BmdError("stored secret is not encrypted by bmd")
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken as err:
            raise BmdError("stored secret cannot be decrypted with this key file") from err


def _create_private_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: keep theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _read_private_file(path: Path, what: str) -> bytes:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{what} {path} is readable by others (mode {mode:o}); chmod 600 it")
    return path.read_bytes().strip()


def load_secret_box(key_file: str | os.PathLike[str]) -> SecretBox:
    """Open the key file, creating it (0600) with a fresh key on first start."""
    path = Path(key_file)
    if not path.exists():
        _create_private_file(path, Fernet.generate_key() + b"\n")
    try:
        return SecretBox(_read_private_file(path, "secrets.key_file"))
    except ValueError as err:
        raise ConfigError(f"secrets.key_file: {path} does not hold a valid Fernet key") from err


def load_api_token(token_file: str | os.PathLike[str]) -> str:
    """The API bearer token; created (0600, random) on first start when the file does not exist."""
    path = Path(token_file)
    if not path.exists():
        _create_private_file(path, _random.token_hex(24).encode() + b"\n")  # hex: never starts with "-"
    token = _read_private_file(path, "api.token_file").decode()
    if len(token) < 16:
        raise ConfigError(f"api.token_file: the token in {path} is shorter than 16 characters")
    return token
