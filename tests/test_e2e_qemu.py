"""Issue 11's "done": real machines, end to end. bmd + a lab of two QEMU VMs behind lab IPMI BMCs (one BIOS,
one UEFI), bmd's own deploy ramdisk (``bmd ramdisk build``), flavors that match ``capabilities:boot_mode``.

Each VM powers on through IPMI, PXE-boots (QEMU's TFTP serves ``boot.ipxe``, which chains over HTTP to the
node's iPXE script), boots bmd's ramdisk, whose sh agent looks up its token, fetches and verifies the image,
writes the disk and calls back; bmd switches to persistent disk boot and reboots; the serial log shows the
deployed image's marker; the instance is ``active``. Delete powers the VM off and the node is ``available``.
Then a corrupt image (the served bytes no longer match the checksum the agent is given) ends in ``error``
with the agent's message, and after delete the node takes a deploy again.

Bounded: every wait has a deadline, the lab kills its VMs by PID when it stops. Skips with the reason when
QEMU, OVMF or the ramdisk's packages are missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bmd.config import Settings
from bmd.lab.qemu import qemu_missing
from bmd.lab.quickstart import DEMO_MARKER
from tests.conftest import make_settings
from tests.lab_api import LabApi, serving_lab, until


def corrupt_when_served(state_dir: Path, node_uuid: str, deadline: float) -> None:
    """Flip bytes of the disk image bmd serves the node's agent, once the deploy has written it (before the
    VM has booted its ramdisk): the agent's checksum check must catch it. Blocking: run in a thread."""
    served = state_dir / "agent-images" / node_uuid / "disk"
    end = time.monotonic() + deadline
    while not served.exists():
        if time.monotonic() > end:
            raise AssertionError(f"{served} was never written")
        time.sleep(0.05)  # another process (the daemon's thread) writes it: poll with a deadline
    with open(served, "r+b") as f:
        f.seek(1024 * 1024)
        f.write(b"\xff" * 4096)
        f.flush()
        os.fsync(f.fileno())


async def test_two_qemu_machines_bios_and_uefi_deploy_with_bmds_ramdisk(
    tmp_path: Path, db_file: Path, deploy_ramdisk: Path
) -> None:
    missing = qemu_missing({"bios", "uefi"})
    if missing:
        pytest.skip(f"QEMU lab machines: {missing}")
    settings: Settings = make_settings(
        tmp_path,
        driver={"default_power_driver": "ipmi", "console_interface": "tcp"},
        ipmi={"timeout": 2.0, "min_command_interval": 0.0},
        tasks={"host_state_interval": 0.2, "update_resources_interval": 0.2},
        deploy={"deploy_timeout": 300.0, "deploy_timeout_check_interval": 2.0},
    )
    state_dir = Path(settings.service.state_dir)
    ramdisk = state_dir / "ramdisk"  # where `bmd ramdisk build` leaves it: no deploy.* setting needed
    await asyncio.to_thread(shutil.copytree, deploy_ramdisk, ramdisk)
    assert settings.deploy.deploy_kernel == "" and settings.deploy.deploy_ramdisk == ""

    async with serving_lab(settings, count=2, machines="qemu", boot_mode="mixed", within=90) as (lab, ctx, endpoint):
        demo = state_dir / "lab" / "images" / "demo.img"
        async with aiohttp.ClientSession(endpoint.url, headers={"Authorization": f"Bearer {ctx.api_token}"}) as http:
            api = LabApi(http)
            nodes = {mode: None for mode in ("bios", "uefi")}
            for name in ("lab-0001", "lab-0002"):
                node = await api.node(name)
                nodes[node["boot_mode"]] = node
            assert all(nodes.values()), nodes
            for mode in nodes:
                spec = {"capabilities:boot_mode": mode}
                body = {"name": f"lab-{mode}", "ram": 256, "vcpus": 1, "disk": 1, "extra_specs": spec}
                status, created = await api.call("POST", "/v1/flavors", body)
                assert status == 201, created

            async def schedulable() -> bool:
                answers = [await api.call("POST", "/v1/schedule", {"flavor": f"lab-{m}"}) for m in nodes]
                return all(status == 200 and body["ok"] for status, body in answers)

            await until("both lab nodes schedulable", schedulable, bool, 30)

            # -- both boot modes at once: request → active, the deployed image boots from disk -------------
            started = time.monotonic()
            uuids = {mode: await api.create(f"lab-{mode}", demo, hostname=f"e2e-{mode}") for mode in nodes}
            took: dict[str, float] = {}

            async def active(mode: str) -> dict[str, Any]:
                inst = await api.settle(uuids[mode], "active", 300)
                took[mode] = time.monotonic() - started
                return inst

            insts = dict(zip(nodes, await asyncio.gather(*(active(m) for m in nodes)), strict=True))
            print(f"\nrequest -> active on QEMU (TCG, 2 VMs at once): {took}")
            for mode, inst in insts.items():
                node = nodes[mode]
                assert node is not None and str(inst["node"]) == str(node["id"]), (mode, inst)
                serial_log = lab.machine(node["name"]).serial_log
                assert serial_log is not None

                def serial(path: Path = serial_log) -> Awaitable[str]:
                    return asyncio.to_thread(path.read_text, errors="replace")

                text = await until(f"{mode}: the deployed image's marker", serial, lambda t: DEMO_MARKER in t, 120)
                assert "bmd-agent" in text  # the same VM ran bmd's agent first, then booted its disk
                shown = await api.node(node["id"])
                assert shown["provision_state"] == "active"
                boot = (await lab.state(node["name"]))["boot"]
                assert boot["persistent"] and boot["selector"] == 2, boot  # bmd set persistent disk boot over IPMI
                steps = [s["step"] for s in shown["deploy_steps"]]
                assert {"power_on", "wait_agent", "callback", "switch_to_boot", "boot_from_disk"} <= set(steps)

            await asyncio.gather(*(api.delete(u) for u in uuids.values()))
            pids = await lab.machine_pids()
            assert pids == {"lab-0001": None, "lab-0002": None}, pids  # delete powered both VMs off
            for node in nodes.values():
                assert node is not None
                shown = await api.node(node["id"])
                assert shown["provision_state"] == "available" and shown["instance_uuid"] is None

            # -- a corrupt image: the agent's checksum check fails the deploy, the node is usable again ------
            bios = nodes["bios"]
            assert bios is not None
            bad = await api.create("lab-bios", demo)
            await asyncio.to_thread(corrupt_when_served, state_dir, bios["uuid"], 60)
            failed = await api.settle(bad, "error", 300)
            shown = await api.node(bios["id"])
            assert shown["provision_state"] == "error"
            assert "checksum" in (shown["last_error"] or "").lower(), shown["last_error"]
            assert "checksum" in (failed["last_error"] or "").lower(), failed["last_error"]
            async with http.get(f"/v1/nodes/{bios['id']}/console-log") as resp:
                assert "checksum" in (await resp.text()).lower()  # the agent's console tail reached bmd
            await api.delete(bad)
            shown = await api.node(bios["id"])
            assert shown["provision_state"] == "available", shown
            assert await schedulable()  # usable again: both flavors find a node
