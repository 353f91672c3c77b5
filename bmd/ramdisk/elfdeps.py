"""A dynamically linked program from a Debian package and the shared libraries it needs, for the ramdisk.

The libraries are found by reading the ELF files themselves (``PT_INTERP``, ``DT_NEEDED``; our own small
reader, no binutils needed): for each library a file needs, the packages its own package depends on
(``apt-cache depends``) are downloaded (``apt-get download``, into the build's .deb cache) and searched,
then every package unpacked so far. Only the files really needed go in: ``tcpdump`` with libpcap,
libcrypto, libdbus, libsystemd and what they need, not the packages' other files.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MULTIARCH_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
LIB_DIR = "lib/x86_64-linux-gnu"  # where the ramdisk holds them (glibc's built-in search path on Debian)
MAX_PACKAGES = 40


class ElfError(ValueError):
    pass


def elf_info(data: bytes) -> tuple[str | None, list[str]]:
    """(the program interpreter or None, the DT_NEEDED sonames) of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError("not a 64-bit little-endian ELF file")
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 0x20)[0], *struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interp, dynamic = None, None
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((vaddr, off, filesz))
        elif p_type == 2:
            dynamic = (off, filesz)
        elif p_type == 3:
            interp = data[off : off + filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return interp, []
    needed_offsets: list[int] = []
    strtab = None
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == 1:
            needed_offsets.append(val)
        elif tag == 5:
            strtab = val
    if strtab is None:
        raise ElfError("a dynamic section without a string table")
    base = next((o + strtab - v for v, o, sz in loads if v <= strtab < v + sz), None)
    if base is None:
        raise ElfError("the string table is outside every loaded segment")
    names = [data[base + n : data.index(b"\0", base + n)].decode() for n in needed_offsets]
    return interp, names


def read_in_tree(tree: Path, path: Path) -> bytes:
    """A file of an unpacked package, following symlinks inside that tree (absolute targets too)."""
    for _ in range(20):
        if not path.is_symlink():
            return path.read_bytes()
        target = Path(path.readlink())
        path = tree / target.relative_to("/") if target.is_absolute() else path.parent / target
    raise ElfError(f"too many symlinks at {path}")


@dataclass
class Closure:
    """What goes in the ramdisk: ``{path in the ramdisk: bytes}`` and the packages used, by name."""

    files: dict[str, bytes] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)  # name -> version


def find_lib(tree: Path, soname: str) -> Path | None:
    for d in MULTIARCH_DIRS:
        candidate = tree / d / soname
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def program_closure(
    program: str,
    package: str,
    unpack: Callable[[str], tuple[Path, str]],
    depends: Callable[[str], list[str]],
) -> Closure:
    """``program`` (a path inside ``package``, e.g. ``usr/bin/tcpdump``), its interpreter and every library
    it needs, transitively. ``unpack(name)`` → (unpacked tree, version); ``depends(name)`` → the names of
    the packages ``name`` depends on. ElfError names a library no package provides."""
    trees: dict[str, Path] = {}
    out = Closure()

    def tree_of(name: str) -> Path:
        if name not in trees:
            if len(trees) >= MAX_PACKAGES:
                raise ElfError(f"more than {MAX_PACKAGES} packages unpacked looking for {program}'s libraries")
            trees[name], out.packages[name] = unpack(name)
        return trees[name]

    root = tree_of(package)
    data = read_in_tree(root, root / program)
    out.files[program] = data
    todo: list[tuple[str, bytes, str]] = [(package, data, program)]
    have: set[str] = set()
    while todo:
        pkg, data, what = todo.pop()
        interp, needed = elf_info(data)
        wanted = list(needed)
        if interp and interp.lstrip("/") not in out.files:
            wanted.append(interp)
        for soname in wanted:
            if soname in have:
                continue
            found = None
            candidates = [pkg, *depends(pkg)]
            for name in candidates:
                tree = tree_of(name)
                path = (tree / soname.lstrip("/")) if soname.startswith("/") else find_lib(tree, soname)
                if path is not None and (path.exists() or path.is_symlink()):
                    found = (name, tree, path)
                    break
            if found is None:
                for name, tree in trees.items():
                    path = find_lib(tree, soname)
                    if path is not None:
                        found = (name, tree, path)
                        break
            if found is None:
                raise ElfError(
                    f"{what} needs {soname}: not in {pkg} nor in {', '.join(candidates[1:]) or 'its dependencies'}"
                )
            name, tree, path = found
            body = read_in_tree(tree, path)
            dest = soname.lstrip("/") if soname.startswith("/") else f"{LIB_DIR}/{soname}"
            out.files[dest] = body
            have.add(soname)
            todo.append((name, body, soname))
    return out


def parse_depends(text: str) -> list[str]:
    """Package names from ``apt-cache depends`` output (Depends and Pre-Depends; virtual ones skipped)."""
    names = []
    for line in text.splitlines():
        m = re.match(r"^\s*\|?(?:Pre)?Depends:\s*([a-z0-9][a-z0-9+.-]*)(?::\w+)?\s*$", line)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    return names
