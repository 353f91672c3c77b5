"""qcow2 images in the cache, converted by the real qemu-img: the raw entry is what is served and what the
agent verifies, the request's checksum is the qcow2's, and bad, booby-trapped or hung conversions fail
cleanly leaving nothing behind."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bmd.drivers.deploy.images import ImageCache
from bmd.errors import DriverError
from tests.drivers.deploy.servers import ImageServer
from tests.drivers.deploy.test_pxe import NODE_A, make_env

RAW = os.urandom(300_000) + b"\0" * (1024 * 1024 - 300_000)  # 1 MiB: the qcow2 is smaller (zeros are holes)


@pytest.fixture(scope="module")
def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        pytest.skip("qemu-img not installed (apt-get install qemu-utils)")
    return path


def run(cmd: list[str]) -> None:
    """A quick qemu-img call to make test images (bounded; the code under test uses asyncio subprocesses)."""
    subprocess.run(cmd, check=True, timeout=60)


def to_qcow2(qemu_img: str, tmp: Path, raw: bytes, *extra: str) -> bytes:
    src, dst = tmp / "src.raw", tmp / "img.qcow2"
    src.write_bytes(raw)
    subprocess.run(
        [qemu_img, "convert", "-f", "raw", "-O", "qcow2", *extra, str(src), str(dst)], check=True, timeout=60
    )
    return dst.read_bytes()


def make_cache(root: Path, **kwargs: object) -> ImageCache:
    ticks = itertools.count(1_700_000_000)
    return ImageCache(root, 10**9, clock=lambda: float(next(ticks)), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[ImageCache]:
    c = make_cache(tmp_path / "cache")
    yield c
    await c.close()


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))


async def test_a_qcow2_is_served_as_raw(
    qemu_img: str, tmp_path: Path, cache: ImageCache, image_server: ImageServer
) -> None:
    qcow2 = to_qcow2(qemu_img, tmp_path, RAW)
    assert qcow2[:4] == b"QFI\xfb" and len(qcow2) < len(RAW)
    checksum = image_server.add("disk.qcow2", qcow2)
    with capture_logs() as logs:
        async with cache.lease(image_server.url("disk.qcow2"), checksum) as path:
            assert path.read_bytes() == RAW
            entry = cache.describe(path)
            assert entry.sha256 == hashlib.sha256(RAW).hexdigest() and entry.size == len(RAW)
            assert entry.derived_from is not None and entry.checksum is None
    source = next(e for e in cache.entries() if e.image_format == "qcow2")
    assert source.key == entry.derived_from and source.sha256 == hashlib.sha256(qcow2).hexdigest()
    assert [e["event"] for e in logs].count("image_converted") == 1
    # Again, and after a restart: neither downloaded nor converted a second time.
    with capture_logs() as logs:
        assert await cache.fetch(image_server.url("disk.qcow2"), checksum) == path
    again = make_cache(cache.root)
    try:
        (cache.root / source.key).unlink()  # even with the qcow2 itself evicted, the raw entry serves
        (cache.root / f"{source.key}.json").unlink()
        assert await again.fetch(image_server.url("disk.qcow2"), checksum) == path
    finally:
        await again.close()
    assert image_server.hits["disk.qcow2"] == 1
    assert "image_converted" not in [e["event"] for e in logs]
    assert leftovers(cache.root) == []


async def test_the_request_checksum_is_the_qcow2s(
    qemu_img: str, tmp_path: Path, cache: ImageCache, image_server: ImageServer
) -> None:
    image_server.add("disk.qcow2", to_qcow2(qemu_img, tmp_path, RAW))
    raw_checksum = "sha256:" + hashlib.sha256(RAW).hexdigest()
    with pytest.raises(DriverError, match="checksum"):
        await cache.fetch(image_server.url("disk.qcow2"), raw_checksum)
    assert cache.entries() == [] and leftovers(cache.root) == []


async def test_the_agent_gets_the_raw_file_and_its_checksum(
    qemu_img: str, tmp_path: Path, image_server: ImageServer
) -> None:
    cache = make_cache(tmp_path / "cache")
    try:
        env = make_env(tmp_path, image_server, cache)
        env.server.add("image", to_qcow2(qemu_img, tmp_path, RAW))
        env.images["image"] = env.server.files["image"]
        layout = await env.pxe.prepare(env.spec())
        assert layout.image_path.read_bytes() == RAW
        assert layout.image_checksum == "sha256:" + hashlib.sha256(RAW).hexdigest()
        assert await env.pxe.image_checksum(NODE_A) == layout.image_checksum
    finally:
        await cache.close()


async def test_a_corrupt_qcow2_fails_clearly(qemu_img: str, cache: ImageCache, image_server: ImageServer) -> None:
    bogus = b"QFI\xfb" + os.urandom(4000)
    checksum = image_server.add("bad.qcow2", bogus)
    with pytest.raises(DriverError, match="qemu-img failed"):
        await cache.fetch(image_server.url("bad.qcow2"), checksum)
    assert [e.image_format for e in cache.entries()] == ["qcow2"]  # the verified download stays; no raw
    assert leftovers(cache.root) == []


async def test_a_qcow2_with_a_backing_file_is_refused(
    qemu_img: str, tmp_path: Path, cache: ImageCache, image_server: ImageServer
) -> None:
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"host secret " * 1000)
    overlay = tmp_path / "overlay.qcow2"
    cmd = [qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(overlay)]
    run(cmd)
    checksum = image_server.add("overlay.qcow2", overlay.read_bytes())
    with pytest.raises(DriverError, match="backing or data file"):
        await cache.fetch(image_server.url("overlay.qcow2"), checksum)
    assert not any(b"host secret" in p.read_bytes() for p in cache.root.iterdir() if p.is_file())


async def test_a_qcow2_larger_than_the_cache_is_refused(
    qemu_img: str, tmp_path: Path, image_server: ImageServer
) -> None:
    big = tmp_path / "big.qcow2"
    run([qemu_img, "create", "-q", "-f", "qcow2", str(big), "1T"])
    checksum = image_server.add("big.qcow2", big.read_bytes())
    cache = ImageCache(tmp_path / "cache", 10 * 1024 * 1024)
    try:
        with pytest.raises(DriverError, match="virtual size"):
            await cache.fetch(image_server.url("big.qcow2"), checksum)
    finally:
        await cache.close()


async def test_missing_qemu_img_is_a_clear_error(tmp_path: Path, image_server: ImageServer) -> None:
    checksum = image_server.add("disk.qcow2", b"QFI\xfb" + b"\0" * 1000)
    cache = make_cache(tmp_path / "cache", qemu_img=str(tmp_path / "no-such-qemu-img"))
    try:
        with pytest.raises(DriverError, match="qemu-img is not installed"):
            await cache.fetch(image_server.url("disk.qcow2"), checksum)
    finally:
        await cache.close()


async def test_a_hung_qemu_img_is_killed_at_the_timeout(tmp_path: Path, image_server: ImageServer) -> None:
    # A stand-in that never finishes (a real qemu-img cannot be made to hang on demand); it records its PID.
    pidfile = tmp_path / "pid"
    hang = tmp_path / "qemu-img"
    hang.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 300\n")
    hang.chmod(0o755)
    checksum = image_server.add("disk.qcow2", b"QFI\xfb" + b"\0" * 1000)
    cache = make_cache(tmp_path / "cache", qemu_img=str(hang), convert_timeout=1.0)
    try:
        with pytest.raises(DriverError, match="did not finish within 1s"):
            await cache.fetch(image_server.url("disk.qcow2"), checksum)
    finally:
        await cache.close()
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped, not left running
