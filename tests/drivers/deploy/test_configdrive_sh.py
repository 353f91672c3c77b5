"""``bmd/agent/configdrive.sh`` under ``busybox sh`` on real 32 MiB disk image files: the host then parses
the MBR, finds the new partition at the end and reads the config drive's metadata out of it with pycdlib."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

import bmd
from bmd.drivers.deploy.configdrive import ConfigDrive, build_iso
from tests.drivers.deploy.test_configdrive import UUID, read_iso, ssh_key

AGENT_LIB = Path(bmd.__file__).parent / "agent"
DISK_BYTES = 32 * 1024 * 1024
SECTORS = DISK_BYTES // 512


@pytest.fixture(scope="module")
def busybox() -> str:
    path = shutil.which("busybox")
    if path is None:
        pytest.skip("busybox not installed (apt-get install busybox-static)")
    return path


@dataclass
class Part:
    slot: int
    type: int
    start: int
    count: int


def mbr_entry(ptype: int, start: int, count: int) -> bytes:
    return struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", ptype, b"\xfe\xff\xff", start, count)


def make_disk(path: Path, parts: list[tuple[int, int, int]], signature: bool = True) -> None:
    """A sparse 32 MiB file with an MBR of (type, start, count) entries; each partition filled with bytes."""
    with open(path, "wb") as f:
        f.truncate(DISK_BYTES)
        mbr = bytearray(512)
        for i, (ptype, start, count) in enumerate(parts):
            mbr[446 + 16 * i : 462 + 16 * i] = mbr_entry(ptype, start, count)
            f.seek(start * 512)
            f.write(hashlib.sha256(str(i).encode()).digest() * (min(count, 64) * 512 // 32))
        if signature:
            mbr[510:512] = b"\x55\xaa"
        f.seek(0)
        f.write(mbr)


def read_mbr(path: Path) -> tuple[bytes, list[Part]]:
    mbr = path.read_bytes()[:512]
    parts = []
    for i in range(4):
        _, _, ptype, _, start, count = struct.unpack_from("<B3sB3sII", mbr, 446 + 16 * i)
        if ptype:
            parts.append(Part(i, ptype, start, count))
    return mbr[510:512], parts


def write_configdrive(busybox: str, disk: Path, iso: Path, shell: str = "") -> subprocess.CompletedProcess[str]:
    """Source configdrive.sh and run it under ``busybox sh`` (or ``shell``, e.g. dash, with busybox on PATH
    for the applets the host lacks)."""
    script = '. "$BMD_AGENT_LIB/configdrive.sh" && bmd_configdrive_write "$1" "$2"'
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "BMD_AGENT_LIB": str(AGENT_LIB)}
    argv = [shell] if shell else [busybox, "sh"]
    return subprocess.run(
        [*argv, "-c", script, "sh", str(disk), str(iso)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def iso(tmp_path: Path) -> tuple[Path, str]:
    key = ssh_key()
    path = tmp_path / "configdrive.iso"
    path.write_bytes(build_iso(ConfigDrive(uuid=UUID, hostname="web-1", ssh_keys=[key], user_data=b"#!/bin/sh\n")))
    return path, key


def disk_partition(disk: Path, part: Part) -> bytes:
    with open(disk, "rb") as f:
        f.seek(part.start * 512)
        return f.read(part.count * 512)


@pytest.fixture(params=["busybox", "dash"])
def shell(request: pytest.FixtureRequest) -> str:
    """busybox sh (what the ramdisk runs) and, as a portability check, dash when installed."""
    if request.param == "busybox":
        return ""
    path = shutil.which("dash")
    if path is None:
        pytest.skip("dash not installed (the portability check only; busybox sh is what the ramdisk runs)")
    return path


def test_the_drive_goes_into_a_new_partition_at_the_end(
    busybox: str, shell: str, tmp_path: Path, iso: tuple[Path, str]
) -> None:
    disk, (iso_path, key) = tmp_path / "disk.img", iso
    make_disk(disk, [(0x83, 2048, 20480)])
    root_before = disk_partition(disk, Part(0, 0x83, 2048, 20480))
    proc = write_configdrive(busybox, disk, iso_path, shell)
    assert proc.returncode == 0, proc.stderr
    assert "as partition 2" in proc.stderr
    assert disk.stat().st_size == DISK_BYTES  # written in place, never grown
    sig, parts = read_mbr(disk)
    assert sig == b"\x55\xaa" and [p.slot for p in parts] == [0, 1]
    assert parts[0] == Part(0, 0x83, 2048, 20480) and disk_partition(disk, parts[0]) == root_before
    new = parts[1]
    iso_sectors = -(-iso_path.stat().st_size // 512)
    assert new.type == 0x83 and new.count == iso_sectors
    assert new.start % 2048 == 0 and new.start >= 2048 + 20480
    assert SECTORS - 2048 < new.start + new.count <= SECTORS  # in the last MiB: at the end of the disk
    label, files = read_iso(disk_partition(disk, new))
    meta = json.loads(files["/openstack/latest/meta_data.json"])
    assert label == "config-2" and meta["hostname"] == "web-1" and meta["public_keys"] == {"key-0": key}
    assert files["/openstack/latest/user_data"] == b"#!/bin/sh\n"


def test_a_blank_unpartitioned_disk_gets_a_fresh_mbr(busybox: str, tmp_path: Path, iso: tuple[Path, str]) -> None:
    disk = tmp_path / "disk.img"
    make_disk(disk, [], signature=False)
    proc = write_configdrive(busybox, disk, iso[0])
    assert proc.returncode == 0, proc.stderr
    sig, parts = read_mbr(disk)
    assert sig == b"\x55\xaa" and len(parts) == 1 and parts[0].slot == 0
    assert read_iso(disk_partition(disk, parts[0]))[0] == "config-2"


@pytest.mark.parametrize(
    ("parts", "signature", "message"),
    [
        ([(0x83, 2048, SECTORS - 2048)], True, "no room"),
        ([(0x83, 2048 * (i + 1), 2048) for i in range(4)], True, "no free primary partition slot"),
        ([(0xEE, 1, SECTORS - 1)], True, "no GPT header"),
        ([(0x83, 2048, 2048)], False, "no MBR partition table"),
    ],
    ids=["no-room", "no-free-slot", "protective-mbr-without-gpt", "not-blank-no-mbr"],
)
def test_refusals_are_nonzero_with_a_message_and_change_nothing(
    busybox: str,
    tmp_path: Path,
    iso: tuple[Path, str],
    parts: list[tuple[int, int, int]],
    signature: bool,
    message: str,
) -> None:
    disk = tmp_path / "disk.img"
    make_disk(disk, parts, signature=signature)
    if not signature:  # something in the first sector: a filesystem's boot sector, say
        with open(disk, "r+b") as f:
            f.write(b"\xeb\x3c\x90mkfs.fat")
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    proc = write_configdrive(busybox, disk, iso[0])
    assert proc.returncode != 0 and message in proc.stderr and proc.stderr.startswith("configdrive: ")
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_a_file_that_is_not_an_iso_is_refused(busybox: str, tmp_path: Path) -> None:
    disk, bogus = tmp_path / "disk.img", tmp_path / "bogus.iso"
    make_disk(disk, [(0x83, 2048, 2048)])
    bogus.write_bytes(b"\0" * 40000)
    proc = write_configdrive(busybox, disk, bogus)
    assert proc.returncode != 0 and "not an ISO9660 image" in proc.stderr
    proc = write_configdrive(busybox, tmp_path / "missing.img", bogus)
    assert proc.returncode != 0 and "does not exist" in proc.stderr


# -- GPT ----------------------------------------------------------------------------------------------

LINUX_DATA = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4").bytes_le
HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # the 92 bytes of a GPT header


@dataclass
class Gpt:
    current: int
    backup: int
    first_usable: int
    last_usable: int
    entries_lba: int
    entries: list[tuple[bytes, int, int, str]]  # (type GUID, first LBA, last LBA, name) of used entries
    raw_entries: bytes


def gpt_header(current: int, backup: int, first: int, last: int, entries_lba: int, n: int, ecrc: int) -> bytes:
    fields = [b"EFI PART", 0x10000, 92, 0, 0, current, backup, first, last, b"\x11" * 16, entries_lba, n, 128, ecrc]
    crc = zlib.crc32(HEADER.pack(*fields))
    fields[3] = crc
    return HEADER.pack(*fields).ljust(512, b"\0")


def make_gpt(path: Path, parts: list[tuple[int, int]], n_entries: int = 128, image_bytes: int = DISK_BYTES) -> None:
    """A GPT disk file of DISK_BYTES whose table was made for an image of ``image_bytes`` (backup there)."""
    sectors, es = image_bytes // 512, n_entries * 128 // 512
    entries = bytearray(n_entries * 128)
    for i, (start, count) in enumerate(parts):
        name = f"part{i}".encode("utf-16-le").ljust(72, b"\0")
        entries[i * 128 : (i + 1) * 128] = (
            LINUX_DATA + os.urandom(16) + struct.pack("<QQQ", start, start + count - 1, 0) + name
        )
    ecrc, first, last = zlib.crc32(entries), 2 + es, sectors - 2 - es
    mbr = bytearray(512)
    mbr[446:462] = mbr_entry(0xEE, 1, sectors - 1)
    mbr[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.truncate(DISK_BYTES)
        f.write(mbr + gpt_header(1, sectors - 1, first, last, 2, n_entries, ecrc) + entries)
        for i, (start, _count) in enumerate(parts):
            f.seek(start * 512)
            f.write(hashlib.sha256(str(i).encode()).digest() * 512)
        f.seek((sectors - 1 - es) * 512)
        f.write(entries + gpt_header(sectors - 1, 1, first, last, sectors - 1 - es, n_entries, ecrc))


def read_gpt(data: bytes, lba: int) -> Gpt:
    """The GPT header at ``lba`` and its entries, every CRC checked."""
    raw = data[lba * 512 : lba * 512 + 92]
    f = list(HEADER.unpack(raw))
    assert f[0] == b"EFI PART" and f[5] == lba
    crc, f[3] = f[3], 0
    assert zlib.crc32(HEADER.pack(*f)) == crc, "header CRC"
    entries_lba, n, size, ecrc = f[10], f[11], f[12], f[13]
    raw_entries = data[entries_lba * 512 : entries_lba * 512 + n * size]
    assert zlib.crc32(raw_entries) == ecrc, "entries CRC"
    used = []
    for i in range(n):
        e = raw_entries[i * size : (i + 1) * size]
        if e[:16] != bytes(16):
            first, last = struct.unpack_from("<QQ", e, 32)
            used.append((e[:16], first, last, e[56:128].decode("utf-16-le").rstrip("\0")))
    return Gpt(f[5], f[6], f[7], f[8], entries_lba, used, raw_entries)


def test_gpt_disk_gets_an_entry_and_its_backup_moves_to_the_end(
    busybox: str, shell: str, tmp_path: Path, iso: tuple[Path, str]
) -> None:
    disk, (iso_path, key) = tmp_path / "disk.img", iso
    make_gpt(disk, [(2048, 8192)], image_bytes=16 * 1024 * 1024)  # an image written to a larger disk
    root_before = disk_partition(disk, Part(0, 0, 2048, 8192))
    proc = write_configdrive(busybox, disk, iso_path, shell)
    assert proc.returncode == 0, proc.stderr
    assert "GPT partition 2" in proc.stderr and disk.stat().st_size == DISK_BYTES
    data = disk.read_bytes()
    primary, backup = read_gpt(data, 1), read_gpt(data, SECTORS - 1)
    assert primary.backup == SECTORS - 1 and backup.backup == 1
    assert primary.raw_entries == backup.raw_entries and backup.entries_lba == SECTORS - 1 - 32
    assert primary.last_usable == backup.last_usable == SECTORS - 34
    (_, root_first, root_last, _), (new_type, first, last, name) = primary.entries
    assert (root_first, root_last) == (2048, 2048 + 8192 - 1)
    assert disk_partition(disk, Part(0, 0, 2048, 8192)) == root_before
    iso_sectors = -(-iso_path.stat().st_size // 512)
    assert new_type == LINUX_DATA and name == "config-2" and last - first + 1 == iso_sectors
    assert first % 2048 == 0 and last <= primary.last_usable and first > SECTORS - 2048 - iso_sectors
    _, mbr = read_mbr(disk)
    assert mbr[0].type == 0xEE and mbr[0].count == SECTORS - 1  # the protective MBR covers the disk now
    assert data[(16 * 1024 * 1024 // 512 - 1) * 512 :][:8] != b"EFI PART"  # the old backup header is gone
    label, files = read_iso(disk_partition(disk, Part(1, 0, first, last - first + 1)))
    meta = json.loads(files["/openstack/latest/meta_data.json"])
    assert label == "config-2" and meta["hostname"] == "web-1" and meta["public_keys"]["key-0"] == key
    if shutil.which("sfdisk"):  # util-linux agrees the table is sound
        check = subprocess.run(["sfdisk", "--verify", str(disk)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and "No errors detected" in check.stdout, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("case", "message"),
    [("full", "no free GPT partition entry"), ("no-room", "no room"), ("bad-crc", "CRC does not match")],
)
def test_gpt_refusals_change_nothing(
    busybox: str, tmp_path: Path, iso: tuple[Path, str], case: str, message: str
) -> None:
    disk = tmp_path / "disk.img"
    if case == "full":
        make_gpt(disk, [(2048 * (i + 1), 2048) for i in range(4)], n_entries=4)
    elif case == "no-room":
        make_gpt(disk, [(2048, SECTORS - 2048 - 40)])
    else:
        make_gpt(disk, [(2048, 2048)])
        with open(disk, "r+b") as f:
            f.seek(512 + 48)  # last usable LBA, changed without fixing the CRC
            f.write(struct.pack("<Q", 1234))
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    proc = write_configdrive(busybox, disk, iso[0])
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_a_real_block_device(busybox: str, tmp_path: Path, iso: tuple[Path, str]) -> None:
    """The same through a loop device: the size comes from blockdev, not the file (root and losetup only)."""
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        pytest.skip("needs root and losetup (util-linux) for a loop device")
    disk = tmp_path / "disk.img"
    make_disk(disk, [(0x83, 2048, 20480)])
    attach = subprocess.run([losetup, "-f", "--show", str(disk)], capture_output=True, text=True, timeout=30)
    if attach.returncode != 0:
        pytest.skip(f"no loop device here: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        proc = write_configdrive(busybox, Path(device), iso[0])
        assert proc.returncode == 0, proc.stderr
        assert f"of {device} as partition 2" in proc.stderr
    finally:
        subprocess.run([losetup, "-d", device], check=True, timeout=30)
    _, parts = read_mbr(disk)
    assert len(parts) == 2 and parts[1].start + parts[1].count <= SECTORS
    assert read_iso(disk_partition(disk, parts[1]))[0] == "config-2"
