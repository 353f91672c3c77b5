"""A QEMU machine (TCG, user-mode network with restrict=on) boots a whole-disk image the way bmd leaves a
deployed node: QEMU's TFTP serves the static ``boot.ipxe`` from ``tftp_root``, which chains over HTTP
(guestfwd → bmd's ``/images`` app) to the node's boot-mode script, whose ``exit`` hands back to the
firmware, which boots the disk. BIOS (SeaBIOS): the disk is a 512-byte MBR program printing a marker on
the serial port. UEFI (OVMF, the same iPXE script): a GPT disk whose EFI system partition holds a
standalone GRUB that prints the marker. OVMF's own network stack is switched off by fw_cfg (with it, its
HTTP boot option timed out before the disk: 75 s under TCG instead of 11 s); the NIC's iPXE ROM has its own."""

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


def uefi_disk(tmp: Path, message: bytes) -> bytes:
    """A 16 MiB GPT disk: an EFI system partition with \\EFI\\BOOT\\BOOTX64.EFI, a GRUB that echoes ``message``."""
    cfg = tmp / "grub-embedded.cfg"
    cfg.write_text(f"echo {message.decode()}\nsleep 600\n")
    efi, esp, disk = tmp / "BOOTX64.EFI", tmp / "esp.img", tmp / "uefi-disk.raw"
    run = [
        ["grub-mkstandalone", "-O", "x86_64-efi", "--locales=", "--fonts=", "--themes=", "-o", str(efi),
         f"boot/grub/grub.cfg={cfg}"],
        ["mkfs.vfat", "-C", str(esp), "8192"],
        ["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"],
        ["mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/"],
    ]  # fmt: skip
    for cmd in run:
        subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    with open(disk, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(
        ["sfdisk", "-q", str(disk)], input=b"label: gpt\nstart=2048, size=16384, type=U\n", check=True, timeout=60
    )
    with open(disk, "r+b") as f:
        f.seek(2048 * 512)
        f.write(esp.read_bytes())
    return disk.read_bytes()


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


OVMF = Path("/usr/share/OVMF")


def need_uefi() -> None:
    need("grub-mkstandalone", "mkfs.vfat", "mmd", "mcopy", "sfdisk")
    if not (OVMF / "OVMF_CODE_4M.fd").is_file():
        pytest.skip("ovmf not installed (/usr/share/OVMF/OVMF_CODE_4M.fd)")
    if not Path("/usr/lib/grub/x86_64-efi").is_dir():
        pytest.skip("grub-efi-amd64-bin not installed (/usr/lib/grub/x86_64-efi)")


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
async def test_whole_disk_node_boots_its_disk_through_ipxe_exit(
    tmp_path: Path, image_server: ImageServer, firmware: str
) -> None:
    need("qemu-system-x86_64", "socat")
    if firmware == "bios":
        disk_image = mbr_program(MARKER).ljust(1024 * 1024, b"\0")
    else:
        need_uefi()
        disk_image = await asyncio.to_thread(uefi_disk, tmp_path, MARKER)
    refs = {}
    for name, data in {"deploy_kernel": b"k" * 100, "deploy_ramdisk": b"r" * 100, "image": disk_image}.items():
        refs[name] = ImageRef(image_server.url(name), image_server.add(name, data))
    tftp, http = tmp_path / "tftp", tmp_path / "http"
    settings = PXESettings(tftp, http, "http://10.0.2.100:8080/images", tmp_path / "state" / "agent-images")
    cache = ImageCache(tmp_path / "cache", 10**9)
    try:
        pxe = PXEDeploy(settings, cache)
        spec = DeploySpec(
            NODE, [MAC], "1", "http://10.0.2.100:8080", kernel=None, ramdisk=None, boot_mode=firmware, **refs
        )
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
        common = [
            "-display", "none", "-monitor", "none", "-serial", f"file:{serial}", "-L", "/usr/lib/ipxe/qemu",
            "-netdev", netdev,
        ]  # fmt: skip
        if firmware == "bios":
            cmd = [
                "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-smp", "1", "-m", "64", *common,
                "-L", "/usr/share/seabios", "-boot", "order=nc",
                "-drive", f"file={disk},if=virtio,format=raw",
                "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
            ]  # fmt: skip
        else:
            vars_fd = tmp_path / "OVMF_VARS.fd"
            shutil.copyfile(OVMF / "OVMF_VARS_4M.fd", vars_fd)
            cmd = [
                "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-smp", "1", "-m", "256", *common,
                "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF / 'OVMF_CODE_4M.fd'}",
                "-drive", f"if=pflash,format=raw,file={vars_fd}",
                # OVMF's own network stack is off: its PXE would fetch boot.ipxe as an EFI program and fail
                # slowly, its HTTP boot would time out (~60 s under TCG) after iPXE's exit; the NIC's iPXE
                # ROM brings its own stack and does the boot
                "-fw_cfg", "name=opt/org.tianocore/IPv4Support,string=n",
                "-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=n",
                "-device", f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1",
                "-drive", f"file={disk},if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0,bootindex=2",
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
