"""A newc (``070701``) cpio archive writer: the format the kernel unpacks as an initramfs.

Each entry is a 110-byte ASCII header (13 eight-digit hex fields), the NUL-terminated name padded to a
multiple of 4 bytes, then the data padded likewise; ``TRAILER!!!`` ends the archive. Entries are written
as given (no owner, time or inode from the build machine), so the same inputs give the same bytes.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

TRAILER = "TRAILER!!!"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str  # relative, no leading "/"
    mode: int  # file type and permission bits (stat.S_IFREG | 0o755, ...)
    data: bytes = b""  # a file's contents, a symlink's target
    rdev: tuple[int, int] = (0, 0)  # a device node's major, minor


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, namesize: int, mtime: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, len(entry.data), 0, 0, *entry.rdev, namesize, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def write_cpio(out: BinaryIO, entries: list[Entry], mtime: int = 0) -> None:
    """Write ``entries`` (parents before children) and the trailer."""
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = entry.name.lstrip("/").encode() + b"\0"
        head = _header(ino if entry.name != TRAILER else 0, entry, len(name), mtime)
        out.write(head + name + _pad(len(head) + len(name)))
        out.write(entry.data + _pad(len(entry.data)))
