"""``bmd serve --lab N``: what a lab beside the daemon needs so that one ``bmd instance create`` deploys.

Everything lives in a lab-owned directory, ``<service.state_dir>/lab/`` (never the real default paths):

- ``images/demo.img``: the demo image, a marker disk booting under BIOS and UEFI alike (BIOS only when GRUB
  or mtools are missing; :mod:`bmd.lab.images`); ``images/`` is added to ``deploy.allowed_image_roots``;
- ``placeholder/``: clearly labelled placeholder deploy kernel/ramdisk for simulated machines, which never
  execute them, used only when the real ones are absent (no ``deploy.deploy_kernel`` set and no
  ``<state_dir>/ramdisk/deploy_kernel`` from ``bmd ramdisk build``); with QEMU machines the real ramdisk
  is required (``bmd ramdisk build`` is run first when it is missing). The demo image is a whole-disk
  image: no instance kernel/ramdisk is needed;
- ``machines/``: the QEMU VMs' disks and serial logs.

Once bmd answers: the lab's inventory is enrolled, the PXE IP pool gets one address per lab node, and the
flavor ``lab`` (1 vCPU, 256 MB, 1 GB: the shape of every lab machine, which bmd's exact filters want) is
created when absent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from bmd.config import Settings
from bmd.errors import BmdError
from bmd.lab.images import bios_marker_image, hybrid_marker_image, uefi_tools_missing

log = structlog.get_logger(__name__)

DEMO_FLAVOR = {"name": "lab", "ram": 256, "vcpus": 1, "disk": 1}
DEMO_MARKER = "bmd-demo: this disk was deployed by bmd"
PLACEHOLDER = b"bmd lab placeholder: not a kernel; simulated lab machines never execute it\n"


def lab_dir(settings: Settings) -> Path:
    return Path(settings.service.state_dir, "lab").resolve()


def ramdisk_dir(settings: Settings) -> Path:
    """Where ``bmd ramdisk build`` writes by default, and where empty ``deploy.*`` settings point."""
    from bmd.ramdisk import ramdisk_dir as default_dir

    return default_dir(settings.service.state_dir).resolve()


def build_ramdisk(out: Path) -> None:
    """``bmd ramdisk build --out OUT`` (contract 1), for QEMU machines that really boot it."""
    log.info("lab_building_ramdisk", out=str(out))
    done = subprocess.run(
        [sys.executable, "-m", "bmd", "ramdisk", "build", "--out", str(out)],
        capture_output=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0 or not (out / "deploy_kernel").is_file():
        tail = (done.stderr or done.stdout).decode(errors="replace").strip()[-800:]
        raise BmdError(f"QEMU lab machines need the deploy ramdisk: `bmd ramdisk build` failed: {tail}")


def _placeholder(directory: Path, name: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if not path.is_file() or path.read_bytes() != PLACEHOLDER + name.encode() + b"\n":
        path.write_bytes(PLACEHOLDER + name.encode() + b"\n")
    return str(path)


def lab_settings(settings: Settings, machines: str) -> Settings:
    """``settings`` with what the lab's machines need filled in; what the operator set is kept. Blocking."""
    root = lab_dir(settings)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    demo = images / "demo.img"
    if not demo.is_file():  # one image for both boot modes when GRUB and mtools are here, else BIOS only
        if uefi_tools_missing() is None:
            hybrid_marker_image(demo, DEMO_MARKER)
        else:
            bios_marker_image(demo, DEMO_MARKER)
    d = settings.deploy
    roots = list(d.allowed_image_roots)
    update: dict[str, Any] = {}

    def allow(directory: Path) -> None:
        if str(directory) not in roots:
            roots.append(str(directory))

    allow(images)
    built = ramdisk_dir(settings)
    if not d.deploy_kernel or not d.deploy_ramdisk:
        if machines == "qemu" and not (built / "deploy_kernel").is_file():
            build_ramdisk(built)
        if (built / "deploy_kernel").is_file() and (built / "deploy_ramdisk").is_file():
            update["deploy_kernel"] = d.deploy_kernel or str(built / "deploy_kernel")
            update["deploy_ramdisk"] = d.deploy_ramdisk or str(built / "deploy_ramdisk")
            allow(built)
        else:  # sim: nothing executes them
            placeholders = root / "placeholder"
            update["deploy_kernel"] = d.deploy_kernel or _placeholder(placeholders, "deploy_kernel")
            update["deploy_ramdisk"] = d.deploy_ramdisk or _placeholder(placeholders, "deploy_ramdisk")
            allow(placeholders)
            log.warning(
                "lab_placeholder_deploy_files",
                directory=str(placeholders),
                reason="no deploy ramdisk built (bmd ramdisk build); simulated machines do not execute it",
            )
    if machines == "qemu" and "console=ttyS0" not in d.append_params.split():
        update["append_params"] = f"{d.append_params} console=ttyS0".strip()
    update["allowed_image_roots"] = roots
    new = settings.model_copy(update={"deploy": d.model_copy(update=update)})
    if machines == "qemu" and not settings.api.public_url:
        from bmd.lab.qemu import PUBLIC_URL

        new = new.model_copy(update={"api": settings.api.model_copy(update={"public_url": PUBLIC_URL})})
    return new


async def prepare_bmd(url: str, token: str, count: int) -> dict[str, int]:
    """One free PXE IP per lab node and the ``lab`` flavor, each added only when missing."""
    headers = {"Authorization": f"Bearer {token}"}
    added = {"pxe_ips": 0, "flavors": 0}
    async with aiohttp.ClientSession(
        base_url=url.rstrip("/") + "/", headers=headers, timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        for i in range(count):  # an address already there is refused (409) and left as it is
            body = {"address": f"10.254.{i // 250}.{i % 250 + 2}", "server_address": f"10.253.{i // 250}.{i % 250 + 2}"}
            async with http.post("v1/pxe_ips", json=body) as resp:
                added["pxe_ips"] += resp.status == 201
        async with http.get(f"v1/flavors/{DEMO_FLAVOR['name']}") as resp:
            missing = resp.status == 404
        if missing:
            async with http.post("v1/flavors", json=DEMO_FLAVOR) as resp:
                if resp.status != 201:
                    raise BmdError(f"creating the lab flavor: HTTP {resp.status}: {await resp.text()}")
                added["flavors"] += 1
    return added
