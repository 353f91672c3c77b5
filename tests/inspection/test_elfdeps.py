"""The ramdisk builder's ELF reader and library closure (bmd/ramdisk/elfdeps.py) on this host's own
binaries: interpreter and DT_NEEDED read like ldd sees them, the closure taken from unpacked package
trees (a library is looked for in the needing package's dependencies), a missing one named."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bmd.ramdisk.elfdeps import ElfError, elf_info, parse_depends, program_closure

LIBDIR = Path("/lib/x86_64-linux-gnu")


def host_binary(name: str) -> Path:
    found = shutil.which(name)
    if found is None or not LIBDIR.is_dir():
        pytest.skip(f"{name} or {LIBDIR} missing on this host")
    return Path(found).resolve()


def test_elf_info_reads_the_interpreter_and_the_needed_libraries() -> None:
    ls = host_binary("ls")
    interp, needed = elf_info(ls.read_bytes())
    assert interp == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in needed
    if shutil.which("ldd"):
        ldd = subprocess.run(["ldd", str(ls)], capture_output=True, text=True, check=True).stdout
        assert all(n in ldd for n in needed)
    busybox = shutil.which("busybox")
    if busybox:  # Debian's busybox-static: no interpreter, nothing needed
        assert elf_info(Path(busybox).read_bytes()) == (None, [])
    with pytest.raises(ElfError):
        elf_info(b"#!/bin/sh\n")


def _tree(root: Path, files: dict[str, Path]) -> Path:
    for rel, src in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    return root


def test_the_closure_follows_package_dependencies(tmp_path: Path) -> None:
    ls = host_binary("ls")
    needed: list[str] = []
    todo = list(elf_info(ls.read_bytes())[1])
    while todo:  # every library, transitively, as this host resolves them
        n = todo.pop()
        if n not in needed:
            needed.append(n)
            todo += elf_info((LIBDIR / n).read_bytes())[1]
    trees = {"prog": _tree(tmp_path / "prog", {"usr/bin/ls": ls})}
    libs = {f"lib/x86_64-linux-gnu/{n}": (LIBDIR / n).resolve() for n in needed}
    libs["lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"] = (LIBDIR / "ld-linux-x86-64.so.2").resolve()
    trees["libs"] = _tree(tmp_path / "libs", libs)
    (trees["libs"] / "lib64").mkdir()
    (trees["libs"] / "lib64" / "ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    trees["unrelated"] = tmp_path / "unrelated"
    trees["unrelated"].mkdir()
    unpacked: list[str] = []

    def unpack(name: str) -> tuple[Path, str]:
        unpacked.append(name)
        return trees[name], "1.0"

    deps = {"prog": ["unrelated", "libs"], "libs": [], "unrelated": []}
    closure = program_closure("usr/bin/ls", "prog", unpack, lambda n: deps[n])
    assert closure.files["usr/bin/ls"] == ls.read_bytes()
    assert closure.files["lib64/ld-linux-x86-64.so.2"] == (LIBDIR / "ld-linux-x86-64.so.2").read_bytes()  # symlink
    for n in needed:
        assert closure.files[f"lib/x86_64-linux-gnu/{n}"] == (LIBDIR / n).read_bytes()
    assert closure.packages == {"prog": "1.0", "unrelated": "1.0", "libs": "1.0"}
    assert sorted(unpacked) == ["libs", "prog", "unrelated"]  # each unpacked once

    deps["prog"] = ["unrelated"]
    with pytest.raises(ElfError, match=r"needs .*not in prog nor in unrelated"):
        program_closure("usr/bin/ls", "prog", lambda n: (trees[n], "1.0"), lambda n: deps[n])


def test_parse_depends() -> None:
    text = "tcpdump\n  Depends: adduser\n  Depends: libc6\n |Depends: libpcap0.8\n  Depends: <virtual>\n  Breaks: x\n"
    assert parse_depends(text) == ["adduser", "libc6", "libpcap0.8"]
