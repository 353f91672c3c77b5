"""``bmd ramdisk build``: the kernel and ramdisk from Debian packages, a newc cpio holding init, busybox,
the agent and the modules (dependencies first), the manifest naming what went in; the build is
reproducible."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bmd.cli import main
from bmd.ramdisk import cpio
from bmd.ramdisk.build import load_order, module_name, read_module
from tests.ramdisk_cache import cache_root


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """{name: (mode, data)} of a newc archive (our reader, checked against GNU cpio below)."""
    out, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701", pos
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == cpio.TRAILER:
            return out
        out[name] = (mode, body)


def test_the_ramdisk_holds_init_busybox_the_agent_and_the_modules(deploy_ramdisk: Path) -> None:
    manifest = json.loads((deploy_ramdisk / "manifest.json").read_text())
    for name in ("deploy_kernel", "deploy_ramdisk"):
        data = (deploy_ramdisk / name).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert manifest["packages"]["kernel"]["name"].startswith("linux-image-")
    assert manifest["packages"]["busybox"]["name"] == "busybox-static"
    assert b"HdrS" in (deploy_ramdisk / "deploy_kernel").read_bytes()[:1024]  # a bzImage
    raw = gzip.decompress((deploy_ramdisk / "deploy_ramdisk").read_bytes())
    entries = read_newc(raw)
    mode, init = entries["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and init.startswith(b"#!/bin/sh")
    assert entries["bin/busybox"][1][:4] == b"\x7fELF"
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"
    assert {"bin/wget", "bin/udhcpc", "bin/timeout", "bin/sha256sum", "bin/insmod"} <= set(entries)
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert entries["usr/lib/bmd-agent/bmd-agent.sh"][1] == (Path("bmd/agent/bmd-agent.sh").read_bytes())
    assert "usr/lib/bmd-agent/udhcpc.script" in entries
    assert "usr/lib/bmd-agent/inspect.sh" in entries  # the agent sources it (bmd_disk_serial)
    order = entries["lib/bmd-modules.order"][1].decode().split()
    names = [p.rsplit("/", 1)[-1].removesuffix(".ko") for p in order]
    assert names == manifest["modules"] or [n.replace("-", "_") for n in names] == manifest["modules"]
    for mod in ("virtio_blk", "virtio_net", "virtio_pci", "sd_mod"):
        assert mod in names
    assert names.index("virtio_ring") < names.index("virtio_blk") and names.index("failover") < names.index(
        "virtio_net"
    )
    for rel in order:
        assert entries[f"lib/modules/{rel}"][1][:4] == b"\x7fELF", rel  # decompressed, insmod-ready
    if shutil.which("cpio"):  # GNU cpio reads our archive the same way
        listing = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True, check=True, timeout=60)
        assert set(listing.stdout.decode().split()) == set(entries)


def test_the_cli_builds_the_same_files_again(
    deploy_ramdisk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rd"
    assert (
        main(["--config", "/dev/null", "ramdisk", "build", "--out", str(out), "--cache", str(cache_root() / ".debs")])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["downloaded"] == []  # the session's build downloaded them already
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (out, deploy_ramdisk))
    assert ours["files"] == theirs["files"]  # the same inputs give the same bytes
    assert (out / "deploy_ramdisk").read_bytes() == (deploy_ramdisk / "deploy_ramdisk").read_bytes()


def test_a_missing_tool_or_package_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("apt-cache") is None:
        pytest.skip("apt-cache is not installed")
    assert (
        main(
            ["--config", "/dev/null", "ramdisk", "build", "--out", str(tmp_path), "--kernel-package", "no-such-kernel"]
        )
        == 1
    )
    assert "resolving no-such-kernel: `" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["--config", "/dev/null", "ramdisk", "build", "--out", str(tmp_path)]) == 1
    assert "apt-cache is not installed (Debian package apt)" in capsys.readouterr().err
    assert not (tmp_path / "deploy_kernel").exists()


def test_modules_load_dependencies_first() -> None:
    deps = {
        "a": ("k/a.ko", ["k/b.ko", "k/c.ko"]),
        "b": ("k/b.ko", ["k/c.ko"]),
        "c": ("k/c.ko", []),
        "d": ("k/d-x.ko.xz", ["k/c.ko"]),
    }
    assert load_order(["a", "missing", "d"], deps) == ["k/c.ko", "k/b.ko", "k/a.ko", "k/d-x.ko.xz"]


@pytest.mark.parametrize("suffix", [".ko", ".ko.xz", ".ko.gz"])
def test_compressed_modules_are_unpacked_for_insmod(tmp_path: Path, suffix: str) -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 4
    packed = {".ko": elf, ".ko.xz": lzma.compress(elf), ".ko.gz": gzip.compress(elf)}[suffix]
    path = tmp_path / f"virtio_blk{suffix}"
    path.write_bytes(packed)
    assert read_module(path) == elf
    assert module_name(f"kernel/drivers/nvme/host/nvme-core{suffix}") == "nvme_core"
