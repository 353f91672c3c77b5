"""One QEMU machine (TCG, BIOS, user-mode network with restrict=on) boots a whole-disk image the way bmd
leaves a deployed node: QEMU's TFTP serves the static ``boot.ipxe`` from ``tftp_root``, which chains over
HTTP (guestfwd → bmd's ``/images`` app) to the node's boot-mode script, whose ``exit`` hands back to the
firmware, which boots the disk: a 512-byte MBR program that prints a marker on the serial port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bmd.drivers.deploy.http import create_image_app
from bmd.drivers.deploy.images import ImageCache
from bmd.drivers.deploy.pxe import DeploySpec, ImageRef, PXEDeploy, PXESettings
from tests.drivers.deploy.servers import ImageServer

NODE = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
MAC = "52:54:00:12:34:56"
MARKER = b"BMD-WHOLE-DISK-BOOTED"
BOOT_DEADLINE = 180.0  # TCG on a shared 2-core machine: measured ~6-10 s


def mbr_program(message: bytes) -> bytes:
    """Real-mode code at 0:7C00: print ``message`` on COM1 (0x3F8), then halt. Hand-assembled."""
    code = bytes.fromhex(
        "31c0"  # xor ax, ax
        "8ed8"  # mov ds, ax
        "fc"  # cld
        "be177c"  # mov si, 0x7c17 (the message, right after this code)
        "baf803"  # mov dx, 0x3f8
        "ac"  # lodsb
        "84c0"  # test al, al
        "7403"  # jz halt
        "ee"  # out dx, al
        "ebf8"  # jmp lodsb
        "faf4"  # halt: cli; hlt
        "ebfc"  # jmp halt
    )
    assert len(code) == 0x17
    sector = code + message + b"\r\n\0"
    return sector.ljust(510, b"\0") + b"\x55\xaa"


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if not Path("/usr/lib/ipxe/qemu").is_dir():
        pytest.skip("ipxe-qemu not installed (/usr/lib/ipxe/qemu)")


@contextlib.asynccontextmanager
async def serve_http_root(root: Path, requests: list[str]) -> AsyncIterator[int]:
    @web.middleware
    async def record(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        requests.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.add_subapp("/images/", create_image_app(root))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        yield server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_whole_disk_node_boots_its_disk_through_ipxe_exit(tmp_path: Path, image_server: ImageServer) -> None:
    need("qemu-system-x86_64", "socat")
    disk_image = mbr_program(MARKER).ljust(1024 * 1024, b"\0")
    refs = {}
    for name, data in {"deploy_kernel": b"k" * 100, "deploy_ramdisk": b"r" * 100, "image": disk_image}.items():
        refs[name] = ImageRef(image_server.url(name), image_server.add(name, data))
    tftp, http = tmp_path / "tftp", tmp_path / "http"
    settings = PXESettings(tftp, http, "http://10.0.2.100:8080/images", tmp_path / "state" / "agent-images")
    cache = ImageCache(tmp_path / "cache", 10**9)
    try:
        pxe = PXEDeploy(settings, cache)
        spec = DeploySpec(NODE, [MAC], "1", "http://10.0.2.100:8080", kernel=None, ramdisk=None, **refs)
        layout = await pxe.prepare(spec)
        await pxe.switch_to_boot(NODE)  # as finish_deploy leaves it
        # The disk holds what the agent would have written: the image bmd staged for it.
        disk = tmp_path / "disk.raw"
        shutil.copyfile(layout.image_path, disk)
        assert hashlib.sha256(disk.read_bytes()).hexdigest() == layout.image_checksum.split(":")[1]
    finally:
        await cache.close()

    requests: list[str] = []
    serial = tmp_path / "serial.log"
    async with serve_http_root(http, requests) as port:
        netdev = (
            f"user,id=n0,restrict=on,tftp={tftp},bootfile=boot.ipxe,"
            f"guestfwd=tcp:10.0.2.100:8080-cmd:socat - TCP:127.0.0.1:{port}"
        )
        cmd = [
            "qemu-system-x86_64",
            "-machine", "pc,accel=tcg", "-smp", "1", "-m", "64",
            "-L", "/usr/share/seabios", "-L", "/usr/lib/ipxe/qemu",
            "-display", "none", "-monitor", "none", "-serial", f"file:{serial}",
            "-boot", "order=nc",
            "-drive", f"file={disk},if=virtio,format=raw",
            "-netdev", netdev, "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
        ]  # fmt: skip
        qemu_err = tmp_path / "qemu.stderr"
        with await asyncio.to_thread(open, qemu_err, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + BOOT_DEADLINE
            while MARKER not in (serial.read_bytes() if serial.exists() else b""):
                assert proc.returncode is None, f"qemu exited: {qemu_err.read_text(errors='replace')}"
                assert loop.time() < deadline, f"no marker on the serial port; HTTP requests: {requests}"
                with contextlib.suppress(TimeoutError):  # poll the serial log; wake at once if qemu exits
                    await asyncio.wait_for(proc.wait(), 0.2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 30)
    # The chain went through the node's per-MAC iPXE link, in boot mode (exit), to the disk.
    assert "/images/ipxe/01-52-54-00-12-34-56.ipxe" in requests
    assert not any(r.endswith("deploy_kernel") for r in requests)
