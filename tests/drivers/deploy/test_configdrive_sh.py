"""``bmd/agent/configdrive.sh`` under ``busybox sh`` on real 32 MiB disk image files: the host then parses
the MBR, finds the new partition at the end and reads the config drive's metadata out of it with pycdlib."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
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


def write_configdrive(busybox: str, disk: Path, iso: Path) -> subprocess.CompletedProcess[str]:
    script = '. "$BMD_AGENT_LIB/configdrive.sh" && bmd_configdrive_write "$1" "$2"'
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "BMD_AGENT_LIB": str(AGENT_LIB)}
    return subprocess.run(
        [busybox, "sh", "-c", script, "sh", str(disk), str(iso)],
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


def test_the_drive_goes_into_a_new_partition_at_the_end(busybox: str, tmp_path: Path, iso: tuple[Path, str]) -> None:
    disk, (iso_path, key) = tmp_path / "disk.img", iso
    make_disk(disk, [(0x83, 2048, 20480)])
    root_before = disk_partition(disk, Part(0, 0x83, 2048, 20480))
    proc = write_configdrive(busybox, disk, iso_path)
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
        ([(0xEE, 1, SECTORS - 1)], True, "GPT"),
        ([(0x83, 2048, 2048)], False, "no MBR partition table"),
    ],
    ids=["no-room", "no-free-slot", "gpt", "not-blank-no-mbr"],
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
