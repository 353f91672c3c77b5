"""Whole-disk images and boot modes in the files the PXE writer renders (real files, real image server)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bmd.drivers.deploy.agent_sim import parse_pxelinux
from bmd.drivers.deploy.images import ImageCache
from bmd.errors import InvalidInput
from tests.drivers.deploy.servers import ImageServer
from tests.drivers.deploy.test_pxe import NODE_A, Env, make_env

MAC = "aa:bb:cc:dd:ee:01"
LINK = "01-aa-bb-cc-dd-ee-01"


@pytest.fixture
async def env(tmp_path: Path, image_server: ImageServer) -> AsyncIterator[Env]:
    cache = ImageCache(tmp_path / "cache", 10**9)
    try:
        yield make_env(tmp_path, image_server, cache)
    finally:
        await cache.close()


def ipxe_labels(text: str) -> dict[str, list[str]]:
    """``{label: [lines]}`` of an iPXE script (lines before the first label under "")."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if line.startswith(":"):
            current = line[1:]
            out[current] = []
        elif line.strip() and not line.startswith("#"):
            out[current].append(line.strip())
    return out


async def test_whole_disk_boot_mode_boots_the_local_disk(env: Env) -> None:
    await env.pxe.prepare(env.spec(kernel=None, ramdisk=None))
    node_tftp, node_http = env.tftp / NODE_A, env.http / NODE_A
    # No instance kernel or ramdisk is fetched or linked for a whole-disk image.
    assert not (node_tftp / "kernel").exists() and not (node_http / "ramdisk").exists()
    # Deploy mode still netboots the deploy ramdisk.
    default, labels = parse_pxelinux((node_tftp / "config").read_text())
    assert default == "deploy" and labels["deploy"]["kernel"] == f"{NODE_A}/deploy_kernel"
    assert labels["boot"] == {"localboot": "0"}
    script = ipxe_labels((node_http / "boot.ipxe").read_text())
    assert script[""][-1] == "goto deploy" and script["boot"][-1] == "exit"
    await env.pxe.switch_to_boot(NODE_A)
    default, labels = parse_pxelinux((node_tftp / "config").read_text())
    assert default == "boot" and set(labels) == {"boot"} and labels["boot"] == {"localboot": "0"}
    assert "LOCALBOOT 0" in (node_tftp / "config").read_text().splitlines()
    script = ipxe_labels((node_http / "boot.ipxe").read_text())
    assert script[""][-1] == "goto boot" and "deploy" not in script
    assert script["boot"] == ["echo bmd: whole-disk image, booting from the local disk", "exit"]
    grub = (node_tftp / "grub.cfg").read_text()
    assert "set default=boot" in grub and "exit" in grub and "linux" not in grub


async def test_partition_image_boot_mode_netboots_kernel_and_ramdisk(env: Env) -> None:
    await env.pxe.prepare(env.spec())
    await env.pxe.switch_to_boot(NODE_A)
    script = ipxe_labels((env.http / NODE_A / "boot.ipxe").read_text())
    assert script["boot"][0].startswith("kernel http://10.0.0.1:6385/images/" + NODE_A + "/kernel ")
    assert "root=LABEL=root" in script["boot"][0]
    grub = (env.tftp / NODE_A / "grub.cfg").read_text()
    assert f"linux /{NODE_A}/kernel initrd=" not in grub  # GRUB takes the initrd by its own command
    assert f"initrd /{NODE_A}/ramdisk" in grub


@pytest.mark.parametrize("missing", ["kernel", "ramdisk"])
async def test_one_of_kernel_and_ramdisk_is_refused_naming_the_missing_one(env: Env, missing: str) -> None:
    with pytest.raises(InvalidInput) as err:
        await env.pxe.prepare(env.spec(**{missing: None}))
    assert err.value.field == missing
    assert not (env.tftp / NODE_A).exists()


async def test_bios_node_gets_pxelinux_and_ipxe_links_no_grub(env: Env) -> None:
    await env.pxe.prepare(env.spec(boot_mode="bios"))
    assert os.readlink(env.tftp / "pxelinux.cfg" / LINK) == f"../{NODE_A}/config"
    assert os.readlink(env.http / "ipxe" / f"{LINK}.ipxe") == f"../{NODE_A}/boot.ipxe"
    assert list((env.tftp / "grub").iterdir()) == []


async def test_uefi_node_gets_ipxe_and_grub_links_no_pxelinux(env: Env) -> None:
    layout = await env.pxe.prepare(env.spec(boot_mode="uefi", macs=(MAC, "AA:BB:CC:DD:EE:02")))
    assert list((env.tftp / "pxelinux.cfg").iterdir()) == []
    assert os.readlink(env.http / "ipxe" / f"{LINK}.ipxe") == f"../{NODE_A}/boot.ipxe"
    grub_link = env.tftp / "grub" / f"grub.cfg-{LINK}"
    assert os.readlink(grub_link) == f"../{NODE_A}/grub.cfg"
    assert len(layout.mac_links) == 4  # two MACs x (iPXE, GRUB)
    text = grub_link.read_text()
    assert "set default=deploy" in text
    # GRUB knows the MAC it booted from as $net_default_mac: each node MAC maps to its BOOTIF.
    assert f'if [ "$net_default_mac" = "{MAC}" ]; then set bootif=01-aa-bb-cc-dd-ee-01; fi' in text
    assert f"linux /{NODE_A}/deploy_kernel bmd_node_uuid={NODE_A} bmd_url=http://10.0.0.1:6385" in text
    assert "BOOTIF=$bootif" in text and f"initrd /{NODE_A}/deploy_ramdisk" in text
    # The iPXE script is the same as for BIOS: it serves both firmwares.
    script = ipxe_labels((env.http / NODE_A / "boot.ipxe").read_text())
    assert script["deploy"][0].startswith(f"kernel http://10.0.0.1:6385/images/{NODE_A}/deploy_kernel")
    await env.pxe.switch_to_boot(NODE_A)
    assert "set default=boot" in grub_link.read_text()
    await env.pxe.clean(NODE_A)
    assert list((env.tftp / "grub").iterdir()) == [] and list((env.http / "ipxe").iterdir()) == []


async def test_unknown_boot_mode_is_refused(env: Env) -> None:
    with pytest.raises(InvalidInput) as err:
        await env.pxe.prepare(env.spec(boot_mode="coreboot"))
    assert err.value.field == "boot_mode"


async def test_chain_script_is_in_both_roots(env: Env) -> None:
    await env.pxe.ensure_layout()
    chain = (env.http / "boot.ipxe").read_text()
    assert (env.tftp / "boot.ipxe").read_text() == chain
    assert "chain http://10.0.0.1:6385/images/ipxe/01-${mac:hexhyp}.ipxe" in chain


async def test_config_drive_lands_next_to_the_disk_private(env: Env) -> None:
    await env.pxe.prepare(env.spec(config_drive=b"ISO bytes"))
    path = env.private / NODE_A / "configdrive.iso"
    assert path.read_bytes() == b"ISO bytes" and path.stat().st_mode & 0o077 == 0
    for root in (env.tftp, env.http):
        assert not any(p.name == "configdrive.iso" for p in root.rglob("*"))
    assert "ISO bytes" not in repr(env.spec(config_drive=b"ISO bytes"))
    await env.pxe.clean(NODE_A)
    assert not path.exists()
