"""Disk images that prove they booted: each prints a marker line on the serial port, then powers the VM off.

- :func:`bios_marker_image`: a 512-byte MBR program (hand-assembled below, 16-bit real mode) that writes
  ``<marker>\\r\\n`` to COM1 (I/O port 0x3F8) and then asks the chipset's ACPI PM1a control register for
  soft-off (SLP_EN with sleep type 0: QEMU ``pc`` with SeaBIOS has it at 0x604, older layouts at 0xB004);
  when neither port powers off it halts forever. Padded with zeros to ``size`` bytes (2 MiB by default).
- :func:`bios_echo_image`: an MBR program that prints ``<marker>\\r\\n`` on COM1, then echoes what arrives
  on COM1 with lower-case letters made upper-case, forever (the VM is powered off from outside): proof
  that typed characters reached the guest and that the guest, not a relay, answered.
- :func:`uefi_marker_image`: a GPT disk with one EFI system partition (FAT, written with mtools, no mount)
  holding ``EFI/BOOT/BOOTX64.EFI``, a GRUB made by ``grub-mkstandalone -O x86_64-efi`` around an embedded
  grub.cfg that prints the marker on the serial console and halts (GRUB's halt powers the VM off).

- :func:`hybrid_marker_image`: the UEFI image with the MBR program in its protective MBR's boot code area
  (bytes 0-439): SeaBIOS runs the boot sector, OVMF boots the ESP; one image for both boot modes (the
  quick start's demo image, so that ``--boot-mode mixed`` labs deploy it everywhere).

All come from Debian packages and our own bytes only (``grub-efi-amd64-bin grub-common mtools fdisk``).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from bmd.errors import BmdError, InvalidInput

DEFAULT_MARKER = "bmd-lab-marker"
BIOS_IMAGE_SIZE = 2 * 1024 * 1024
UEFI_IMAGE_SIZE = 8 * 1024 * 1024
_ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
_ORIGIN = 0x7C00  # where the BIOS loads the MBR


class ImageToolMissing(BmdError):
    code = "image_tool_missing"


def check_marker(marker: str) -> str:
    """Printable ASCII without quotes or backslashes (it lands in a grub.cfg string and a boot sector)."""
    if not marker or len(marker) > 200 or not all(0x20 <= ord(c) < 0x7F for c in marker):
        raise InvalidInput("marker must be 1-200 printable ASCII characters", field="marker")
    if any(c in marker for c in "\"'\\$;"):
        raise InvalidInput("marker must not contain quotes, backslashes, '$' or ';'", field="marker")
    return marker


def mbr_program(marker: str) -> bytes:
    """The 512-byte boot sector: print ``marker`` on COM1, power off through ACPI, else halt."""
    text = check_marker(marker).encode() + b"\r\n\0"
    code = bytearray()
    code += b"\xfa"  # cli
    code += b"\x31\xc0"  # xor ax, ax
    code += b"\x8e\xd8"  # mov ds, ax          (the message is addressed from segment 0)
    msg_fixup = len(code) + 1
    code += b"\xbe\x00\x00"  # mov si, <message>  (patched below)
    code += b"\xba\xf8\x03"  # mov dx, 0x3f8      (COM1 data register)
    loop = len(code)
    code += b"\xac"  # lodsb               (al = [ds:si++])
    code += b"\x84\xc0"  # test al, al
    code += b"\x74\x03"  # jz +3               (end of string: to the power-off)
    code += b"\xee"  # out dx, al
    code += b"\xeb" + bytes(((loop - (len(code) + 2)) & 0xFF,))  # jmp loop
    for port in (0x604, 0xB004):  # PM1a_CNT of QEMU pc/q35 (SeaBIOS), then of the older/Bochs layout
        code += b"\xba" + struct.pack("<H", port)  # mov dx, port
        code += b"\xb8\x00\x20"  # mov ax, 0x2000     (SLP_EN, SLP_TYP 0 = S5 soft-off on QEMU)
        code += b"\xef"  # out dx, ax
    halt = len(code)
    code += b"\xf4"  # hlt
    code += b"\xeb" + bytes(((halt - (len(code) + 2)) & 0xFF,))  # jmp halt
    struct.pack_into("<H", code, msg_fixup, _ORIGIN + len(code))
    code += text
    if len(code) > 446:  # keep clear of the partition table
        raise InvalidInput("marker too long for a boot sector", field="marker")
    return bytes(code) + bytes(510 - len(code)) + b"\x55\xaa"


def _rel8(code: bytearray, target: int) -> bytes:
    """The 8-bit displacement of a short jump written at the end of ``code`` (2 bytes) to ``target``."""
    return bytes(((target - (len(code) + 2)) & 0xFF,))


def mbr_echo_program(marker: str) -> bytes:
    """The 512-byte boot sector: print ``marker`` on COM1, then echo COM1 upper-cased (polling the UART's
    line status register, 0x3FD bit 0 "data ready")."""
    text = check_marker(marker).encode() + b"\r\n\0"
    code = bytearray()
    code += b"\xfa"  # cli
    code += b"\x31\xc0"  # xor ax, ax
    code += b"\x8e\xd8"  # mov ds, ax
    msg_fixup = len(code) + 1
    code += b"\xbe\x00\x00"  # mov si, <message>  (patched below)
    code += b"\xba\xf8\x03"  # mov dx, 0x3f8
    loop = len(code)
    code += b"\xac"  # lodsb
    code += b"\x84\xc0"  # test al, al
    code += b"\x74\x03"  # jz +3               (end of string: to the echo loop)
    code += b"\xee"  # out dx, al
    code += b"\xeb" + _rel8(code, loop)  # jmp loop
    echo = len(code)
    code += b"\xba\xfd\x03"  # mov dx, 0x3fd      (COM1 line status register)
    wait = len(code)
    code += b"\xec"  # in al, dx
    code += b"\xa8\x01"  # test al, 1          (data ready)
    code += b"\x74" + _rel8(code, wait)  # jz wait
    code += b"\xba\xf8\x03"  # mov dx, 0x3f8
    code += b"\xec"  # in al, dx            (the character)
    code += b"\x3c\x61"  # cmp al, 'a'
    code += b"\x72\x06"  # jb +6               (to the out)
    code += b"\x3c\x7a"  # cmp al, 'z'
    code += b"\x77\x02"  # ja +2
    code += b"\x2c\x20"  # sub al, 0x20        (upper case)
    code += b"\xee"  # out dx, al
    code += b"\xeb" + _rel8(code, echo)  # jmp echo
    struct.pack_into("<H", code, msg_fixup, _ORIGIN + len(code))
    code += text
    if len(code) > 446:
        raise InvalidInput("marker too long for a boot sector", field="marker")
    return bytes(code) + bytes(510 - len(code)) + b"\x55\xaa"


def bios_echo_image(path: Path, marker: str = DEFAULT_MARKER, size: int = BIOS_IMAGE_SIZE) -> Path:
    """A disk whose boot sector prints ``marker`` and then echoes the serial line upper-cased."""
    return _write_boot_sector(path, mbr_echo_program(marker), size)


def hybrid_marker_image(path: Path, marker: str = DEFAULT_MARKER, size: int = UEFI_IMAGE_SIZE) -> Path:
    """A disk that proves it booted under SeaBIOS and under OVMF alike (see the module's docstring)."""
    code = mbr_program(marker)[:446].rstrip(b"\0")
    if len(code) > 440:  # 440-445: disk signature and reserved bytes of the (protective) MBR
        raise InvalidInput("marker too long for a hybrid boot sector", field="marker")
    uefi_marker_image(path, marker, size)
    with open(path, "r+b") as f:
        f.write(code)  # the partition table (446-509) and the 0x55AA signature stay as sfdisk wrote them
    return path


def bios_marker_image(path: Path, marker: str = DEFAULT_MARKER, size: int = BIOS_IMAGE_SIZE) -> Path:
    """Write the MBR marker program padded to ``size`` bytes (atomically: temp file + rename)."""
    return _write_boot_sector(path, mbr_program(marker), size)


def _write_boot_sector(path: Path, sector: bytes, size: int) -> Path:
    if size < 512 or size % 512:
        raise InvalidInput("size must be a positive multiple of 512", field="size")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(sector)
        f.truncate(size)
    os.replace(tmp, path)
    return path


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise ImageToolMissing(f"{name} not found: install the Debian package {package}")
    return found


def uefi_tools_missing() -> str | None:
    """Why :func:`uefi_marker_image` cannot run here (None when it can)."""
    try:
        _tool("grub-mkstandalone", "grub-common")
        _tool("mformat", "mtools")
        _tool("mcopy", "mtools")
        _tool("sfdisk", "fdisk")
    except ImageToolMissing as err:
        return str(err)
    if not Path("/usr/lib/grub/x86_64-efi").is_dir():
        return "/usr/lib/grub/x86_64-efi not found: install the Debian package grub-efi-amd64-bin"
    return None


def _run(argv: list[str], **kw: object) -> None:
    done = subprocess.run(argv, capture_output=True, timeout=120, check=False, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise BmdError(
            f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}"
        )


def uefi_marker_image(path: Path, marker: str = DEFAULT_MARKER, size: int = UEFI_IMAGE_SIZE) -> Path:
    """A GPT disk with an ESP holding a standalone GRUB that prints ``marker`` on ttyS0 and powers off."""
    marker = check_marker(marker)
    missing = uefi_tools_missing()
    if missing:
        raise ImageToolMissing(missing)
    if size < 4 * 1024 * 1024 or size % (1024 * 1024):
        raise InvalidInput("size must be a whole number of MiB, at least 4", field="size")
    with tempfile.TemporaryDirectory(prefix="bmd-uefi-") as tmpdir:
        tmp = Path(tmpdir)
        cfg = tmp / "grub.cfg"
        cfg.write_text(
            f'serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\necho "{marker}"\nhalt\n'
        )
        efi = tmp / "BOOTX64.EFI"
        _run(
            [
                _tool("grub-mkstandalone", "grub-common"),
                "-O",
                "x86_64-efi",
                "--locales=",
                "--fonts=",
                "--themes=",
                "--install-modules=normal echo halt serial terminal",
                "--modules=serial terminal echo halt",
                "-o",
                str(efi),
                f"boot/grub/grub.cfg={cfg}",
            ]
        )
        disk = tmp / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(size)
        start = 2048  # sectors: 1 MiB aligned; the last 33 sectors hold the backup GPT
        sectors = size // 512 - start - 34
        script = f"label: gpt\nstart={start}, size={sectors}, type={_ESP_TYPE}, name=ESP\n"
        _run([_tool("sfdisk", "fdisk"), "--quiet", str(disk)], input=script.encode())
        part = f"{disk}@@{start * 512}"
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        _run([_tool("mformat", "mtools"), "-i", part, "-T", str(sectors), "-v", "BMDESP", "::"], env=env)
        _run([_tool("mmd", "mtools"), "-i", part, "::/EFI", "::/EFI/BOOT"], env=env)
        _run([_tool("mcopy", "mtools"), "-i", part, str(efi), "::/EFI/BOOT/BOOTX64.EFI"], env=env)
        tmp_out = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(disk, tmp_out)
        os.replace(tmp_out, path)
    return path
