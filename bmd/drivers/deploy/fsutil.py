"""Small file-system helpers for the deploy writer: atomic writes, atomic symlinks, link-or-copy.

Modes are explicit, never the umask's: what a TFTP or HTTP server serves (boot files, loaders, the
directories above them) is 0644 / 0755, so a tftpd or dnsmasq running as another user can read it even
under the unit's ``UMask=0077``; what only bmd reads (a config drive, the disk image's directory) is
0600 / 0700. Nothing served is secret (docs/architecture.md, "Invariants").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run file work in a thread and let it finish even if we are cancelled, so it is never half done."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


PUBLIC_FILE, PUBLIC_DIR = 0o644, 0o755


def make_public_dirs(path: Path) -> None:
    """``mkdir -p path`` where every directory it creates is 0755 whatever the umask; directories that
    exist already keep their mode (an operator's /srv/tftpboot is theirs)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PUBLIC_DIR)
        except FileExistsError:
            continue  # made meanwhile by another writer: its mode is its own
        os.chmod(d, PUBLIC_DIR)  # mkdir's mode is masked by the umask


def make_public_dir(path: Path) -> None:
    """``mkdir path`` (the parent exists) at 0755 whatever the umask; FileExistsError if it exists."""
    path.mkdir(mode=PUBLIC_DIR)
    os.chmod(path, PUBLIC_DIR)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "x") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Atomically write bytes readable by bmd only (0600): e.g. a config drive that may hold user_data."""
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def symlink_atomic(target: str, link: Path) -> None:
    tmp = link.with_name(f".tmp-{link.name}-{secrets.token_hex(4)}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def link_or_copy(src: Path, dst: Path, *, public: bool = False) -> None:
    """Hard-link ``src`` at ``dst``, or copy it where a link cannot be made. ``public``: ``dst`` is served
    to other users (0644): a source others cannot read is copied, not linked (a link shares its mode, and
    bmd does not change the mode of a file it does not own, e.g. the image cache's 0600 entries)."""
    if public and os.stat(src).st_mode & 0o044 != 0o044:
        _copy(src, dst, PUBLIC_FILE)
        return
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        _copy(src, dst, PUBLIC_FILE if public else 0o600)


def _copy(src: Path, dst: Path, mode: int) -> None:
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as data:
            shutil.copyfileobj(data, out, 1 << 20)
            os.fchmod(out.fileno(), mode)  # os.open's mode is masked by the umask
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
