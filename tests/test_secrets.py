"""Secrets at rest: the Fernet key file and the API token file are created 0600 and checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bmd.errors import BmdError, ConfigError
from bmd.secrets import load_api_token, load_secret_box


def test_key_file_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret.key"
    box = load_secret_box(path)
    assert path.stat().st_mode & 0o777 == 0o600
    # A clear text long enough that base64 cannot hold it by chance ("pw" did, one run in ~40).
    clear = "correct-horse-battery-staple"
    stored = box.encrypt(clear)
    assert stored.startswith("fernet:") and clear not in stored
    assert load_secret_box(path).decrypt(stored) == clear
    assert clear not in repr(box)


def test_wrong_key_cannot_decrypt(tmp_path: Path) -> None:
    stored = load_secret_box(tmp_path / "a.key").encrypt("pw")
    with pytest.raises(BmdError, match="cannot be decrypted"):
        load_secret_box(tmp_path / "b.key").decrypt(stored)


def test_world_readable_key_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    load_secret_box(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secret_box(path)


def test_garbage_key_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("not a key")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match=r"secrets\.key_file"):
        load_secret_box(path)


def test_api_token_created_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "token"
    token = load_api_token(path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_api_token(path) == token
    short = tmp_path / "short"
    short.write_text("abc")
    os.chmod(short, 0o600)
    with pytest.raises(ConfigError, match=r"api\.token_file"):
        load_api_token(short)
