"""The whole config drive path with real parts: an instance asking for one, bmd building it (pycdlib), the
lookup naming it, the real sh agent under busybox sh fetching it with its token and writing it with the
real ``configdrive.sh`` after the image; the host then reads the disk and finds the metadata."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.agent.machine import Disk, Machine, busybox_or_skip
from tests.cloud import make_cloud
from tests.drivers.deploy.test_configdrive import read_iso, ssh_key
from tests.drivers.deploy.test_configdrive_sh import DISK_BYTES, SECTORS, disk_partition, mbr_entry, read_mbr
from tests.test_agent_token import MAC


def mbr_image(size: int) -> bytes:
    """A small whole-disk image: an MBR with one partition from sector 2048, some bytes in it."""
    mbr = bytearray(512)
    mbr[446:462] = mbr_entry(0x83, 2048, size // 512 - 2048)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr).ljust(2048 * 512, b"\0") + os.urandom(size - 2048 * 512)


async def test_the_sh_agent_writes_the_config_drive_at_the_end_of_the_disk(tmp_path: Path, db_file: Path) -> None:
    busybox = busybox_or_skip()
    key = ssh_key()
    async with make_cloud(tmp_path, deploy={"boot_kernel": "", "boot_ramdisk": ""}) as cloud:  # whole-disk
        image = mbr_image(4 * 1024 * 1024)
        image_file = Path(cloud.image_ref).parent / "disk-mbr.img"
        image_file.write_bytes(image)
        await cloud.enroll(1)
        await cloud.add_pxe_ips(1)
        status, body = await cloud.create(
            image_ref=str(image_file),
            image_checksum="sha256:" + hashlib.sha256(image).hexdigest(),
            hostname="web-7",
            ssh_keys=[key],
            user_data="#cloud-config\n",
        )
        assert status == 202, body
        await cloud.settle()
        node = await cloud.node(body["instances"][0]["bm_node_id"])
        assert node.provision_state == "wait_callback", node.last_error
        machine = Machine(tmp_path / "machine", busybox)
        dev = machine.add_disk(Disk("vda", 10))
        os.truncate(dev, DISK_BYTES)  # the node's disk: larger than the image
        status = await machine.run(str(cloud.client.make_url("")).rstrip("/"), node.uuid, MAC)
        assert status == 0, machine.output
        assert "bmd-agent: writing the config drive" in machine.output
        await cloud.settle()
        assert (await cloud.node(node.id)).provision_state == "active"
    # The host reads the disk: the image's partition as written, the config drive in a new one at the end.
    assert dev.stat().st_size == DISK_BYTES
    assert dev.read_bytes()[: len(image)][512:] == image[512:]
    _, parts = read_mbr(dev)
    assert len(parts) == 2 and parts[0].start == 2048
    new = parts[1]
    assert new.start % 2048 == 0 and SECTORS - 2048 < new.start + new.count <= SECTORS
    label, files = read_iso(disk_partition(dev, new))
    meta = json.loads(files["/openstack/latest/meta_data.json"])
    assert label == "config-2" and meta["hostname"] == "web-7" and meta["public_keys"] == {"key-0": key}
    assert files["/openstack/latest/user_data"] == b"#cloud-config\n"
