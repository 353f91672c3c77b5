"""File modes of what bmd writes for the TFTP and HTTP servers, under the systemd unit's ``UMask=0077``:
what tftpd / dnsmasq serve as another user is 0644 (files) and 0755 (directories), set explicitly; what only
bmd reads (the disk image's directory, a config drive) stays 0700 / 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bmd.drivers.deploy.fsutil import link_or_copy, make_public_dirs
from bmd.drivers.deploy.images import ImageCache
from bmd.drivers.dhcp.dnsmasq import LOADERS, install_loaders
from tests.drivers.deploy.servers import ImageServer
from tests.drivers.deploy.test_pxe import NODE_A, Env, make_env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """The unit's UMask=0077 for the test (the umask is the process's: restored whatever happens)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
async def env(tmp_path: Path, image_server: ImageServer, strict_umask: None) -> AsyncIterator[Env]:
    cache = ImageCache(tmp_path / "cache", 10**9)
    try:
        yield make_env(tmp_path, image_server, cache)
    finally:
        await cache.close()


def served(root: Path) -> list[Path]:
    return [root, *root.rglob("*")]


@pytest.mark.parametrize("boot_mode", ["bios", "uefi"])
async def test_boot_files_are_world_readable_under_umask_0077(env: Env, boot_mode: str) -> None:
    assert os.umask(0o077) == 0o077  # the fixture's umask is in effect
    await env.pxe.prepare(env.spec(boot_mode=boot_mode, config_drive=b"user_data: secret"))
    paths = served(env.tftp) + served(env.http)
    assert len([p for p in paths if p.is_file() and not p.is_symlink()]) >= 12
    for path in paths:
        if path.is_symlink():
            continue
        want = 0o755 if path.is_dir() else 0o644
        assert mode(path) == want, f"{path} is {mode(path):o}, not {want:o}"
    # The per-MAC links resolve to readable files for a reader who is not bmd.
    links = [p for p in paths if p.is_symlink()]
    assert links and all(p.resolve().is_file() and mode(p.resolve()) == 0o644 for p in links)
    # Private stays private: the disk image's directory and the config drive (user_data may hold secrets).
    node_images = env.private / NODE_A
    assert mode(env.private) == 0o700 and mode(node_images) == 0o700
    assert mode(node_images / "configdrive.iso") == 0o600
    # The cache entries are 0644 inside the 0700 cache root, so they are linked, not copied, and private.
    assert mode(env.cache.root) == 0o700
    kernel = env.tftp / NODE_A / "deploy_kernel"
    assert kernel.stat().st_nlink >= 2


async def test_a_switch_to_boot_keeps_the_modes(env: Env) -> None:
    await env.pxe.prepare(env.spec())
    await env.pxe.switch_to_boot(NODE_A)
    for name in ("config", "grub.cfg"):
        assert mode(env.tftp / NODE_A / name) == 0o644
    assert mode(env.http / NODE_A / "boot.ipxe") == 0o644


def test_a_source_others_cannot_read_is_copied_world_readable(tmp_path: Path, strict_umask: None) -> None:
    src = tmp_path / "deploy_kernel"
    src.write_bytes(b"kernel bytes")
    assert mode(src) == 0o600  # as a file written under the unit's umask is
    dst = tmp_path / "public-copy"
    link_or_copy(src, dst, public=True)
    assert dst.read_bytes() == b"kernel bytes" and mode(dst) == 0o644
    assert dst.stat().st_ino != src.stat().st_ino and mode(src) == 0o600  # the source's mode is untouched
    private = tmp_path / "private-link"
    link_or_copy(src, private)
    assert private.stat().st_ino == src.stat().st_ino


def test_public_dirs_are_0755_and_existing_ones_keep_their_mode(tmp_path: Path, strict_umask: None) -> None:
    existing = tmp_path / "srv"
    existing.mkdir()
    os.chmod(existing, 0o750)  # an operator's choice
    make_public_dirs(existing / "tftpboot" / "pxelinux.cfg")
    assert mode(existing) == 0o750
    assert mode(existing / "tftpboot") == 0o755 and mode(existing / "tftpboot" / "pxelinux.cfg") == 0o755
    make_public_dirs(existing / "tftpboot")  # again: nothing to do, nothing changed
    assert mode(existing / "tftpboot") == 0o755


def test_ipxe_loaders_are_installed_world_readable(tmp_path: Path, strict_umask: None) -> None:
    ipxe = tmp_path / "usr-lib-ipxe"
    ipxe.mkdir()
    for name in LOADERS:
        (ipxe / name).write_bytes(b"loader " + name.encode())
    root = tmp_path / "tftpboot"
    install_loaders(ipxe, root)
    assert mode(root) == 0o755
    assert {p.name: mode(p) for p in root.iterdir()} == dict.fromkeys(LOADERS, 0o644)
