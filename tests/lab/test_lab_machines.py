"""Machines behind the lab BMCs: ``serve --lab`` with simulated machines deploys with zero configuration; a
QEMU machine's power, boot device and console follow bmd's real IPMI power driver; the marker images boot."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from bmd.config import Settings
from bmd.drivers.deploy.agent_sim import AgentError, boot_args_from_ipxe
from bmd.drivers.deploy.templates import BootParams, ipxe_script
from bmd.drivers.power.base import BMCAccess, BootDevice, PowerState
from bmd.drivers.power.ipmi import IPMIPower, IPMIPowerSettings
from bmd.errors import InvalidInput
from bmd.ipmi import ChassisControl, IPMISettings
from bmd.lab import Lab, LabSpec
from bmd.lab.images import (
    bios_marker_image,
    hybrid_marker_image,
    mbr_echo_program,
    mbr_program,
    uefi_marker_image,
    uefi_tools_missing,
)
from bmd.lab.qemu import OVMF_CODE, OVMF_VARS, QemuMissing, qemu_missing
from bmd.lab.quickstart import DEMO_MARKER, PLACEHOLDER
from tests.conftest import make_settings
from tests.lab_api import LabApi, alive, closed_port, put_on_disk, serving_lab, until

T = TypeVar("T")
QUICK = IPMIPowerSettings(client=IPMISettings(timeout=2.0), min_command_interval=0.0, confirm_interval=0.1)


# -- serve --lab with simulated machines -----------------------------------------------------------------


def lab_files(state_dir: Path) -> Path:
    """The placeholders are labelled and the lab's own (not the default ramdisk path); the demo image's path."""
    placeholder = state_dir / "lab" / "placeholder" / "deploy_kernel"
    assert placeholder.read_bytes().startswith(PLACEHOLDER)
    assert not (state_dir / "ramdisk").exists()
    return (state_dir / "lab" / "images" / "demo.img").resolve()


def sim_lab_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """``bmd serve --lab`` with simulated machines: the IPMI driver on the lab BMCs, quick loops."""
    return make_settings(
        tmp_path,
        driver={"default_power_driver": "ipmi"},
        ipmi={"timeout": 2.0, "min_command_interval": 0.0},
        tasks={"host_state_interval": 0.2, "update_resources_interval": 0.2},
        **sections,
    )


async def test_serve_lab_with_sim_machines_deploys_with_zero_configuration(tmp_path: Path, db_file: Path) -> None:
    """No deploy kernel configured, no agent run by the test: the lab machine PXE-boots (iPXE script over
    HTTP), runs the agent protocol, bmd reboots it from disk; delete frees the instance, the machine boots
    the ramdisk again for its clean (cleaning on, as by default in ``make run``) and the node is available."""
    settings = sim_lab_settings(tmp_path, deploy={"automated_clean": True})
    assert settings.deploy.deploy_kernel == "" and settings.deploy.boot_kernel == ""
    async with serving_lab(settings, count=2, machines="sim", within=60) as (lab, ctx, endpoint):
        demo = await asyncio.to_thread(lab_files, Path(settings.service.state_dir))
        headers = {"Authorization": f"Bearer {ctx.api_token}"}
        async with aiohttp.ClientSession(endpoint.url, headers=headers) as http:
            api = LabApi(http)
            await until("lab nodes schedulable", lambda: api.schedulable("lab"), bool, 30)
            uuid = await api.create("lab", demo)
            inst = await api.settle(uuid, "active", 60)
            name = f"lab-{int(inst['node']):04d}"
            state = await lab.state(name)
            assert state["machine"]["deploys"] == 1 and state["machine"]["last"]["status"] == 202
            assert state["machine"]["state"] == "disk"  # rebooted from its disk: persistent disk boot
            assert state["boot"] == {"selector": 2, "valid": True, "persistent": True, "efi": False}
            assert state["power"] is True

            await api.delete(uuid, 60)  # the instance is deleted at once; its node cleans
            node = await until(
                "the node cleaned", lambda: api.node(inst["node"]), lambda n: n["provision_state"] == "available", 60
            )
            assert node["instance_uuid"] is None and not node["maintenance"]
            state = await lab.state(name)
            assert state["machine"]["cleans"] == 1 and state["power"] is False  # cleaned, then powered off


async def test_sim_machines_are_inspected_at_enroll_and_report_their_switch_port(tmp_path: Path, db_file: Path) -> None:
    """``inspection.on_enroll``: every lab node boots the ramdisk in inspect mode as it is enrolled, its
    simulated machine reports (LLDP included: its rack's switch and port), and the node is available with the
    report applied; then the lab flavor schedules on it as before."""
    settings = sim_lab_settings(tmp_path, inspection={"on_enroll": True})
    async with serving_lab(settings, count=2, machines="sim", within=60) as (lab, ctx, endpoint):
        headers = {"Authorization": f"Bearer {ctx.api_token}"}
        async with aiohttp.ClientSession(endpoint.url, headers=headers) as http:
            api = LabApi(http)
            for name in ("lab-0001", "lab-0002"):
                node = await until(
                    f"{name} inspected",
                    lambda name=name: api.node(name),  # type: ignore[misc]
                    lambda n: n["provision_state"] == "available" and n["inspected_at"] is not None,
                    30,
                )
                assert node["last_error"] is None and not node["maintenance"]
                index = int(name[-4:]) - 1
                (iface,) = node["interfaces"]
                assert (iface["datapath_id"], iface["port_no"]) == (f"0x{0xB3D0000:016x}", index + 1)
                state = await lab.state(name)
                assert state["machine"]["inspections"] == 1 and state["power"] is False  # then powered off
                status, report = await api.call("GET", f"/v1/nodes/{name}/inspection")
                assert status == 200 and report["report"]["system"]["serial"] == f"SIM{index + 1:06d}"
            await until("lab nodes schedulable", lambda: api.schedulable("lab"), bool, 30)


# -- QEMU machines ---------------------------------------------------------------------------------------


async def test_serve_lab_with_qemu_machines_deploys_the_demo_image(
    tmp_path: Path, db_file: Path, deploy_ramdisk: Path
) -> None:
    """``make run MACHINES=qemu``: bmd's ramdisk in ``<state_dir>/ramdisk`` (as ``bmd ramdisk build`` leaves
    it), one lab VM; the instance goes active, the VM boots the deployed demo image from its disk."""
    needs_qemu("bios")
    settings: Settings = make_settings(
        tmp_path,
        driver={"default_power_driver": "ipmi", "console_interface": "tcp"},  # records (BMC host, terminal_port)
        ipmi={"timeout": 2.0, "min_command_interval": 0.0},
        tasks={"host_state_interval": 0.2, "update_resources_interval": 0.2},
    )
    await asyncio.to_thread(install_ramdisk, deploy_ramdisk, Path(settings.service.state_dir, "ramdisk"))
    async with serving_lab(settings, count=1, machines="qemu", within=60) as (lab, ctx, endpoint):
        machine = lab.machine("lab-0001")
        serial_log = machine.serial_log
        assert serial_log is not None
        demo = Path(settings.service.state_dir) / "lab" / "images" / "demo.img"  # absolute: under tmp_path
        headers = {"Authorization": f"Bearer {ctx.api_token}"}
        async with aiohttp.ClientSession(endpoint.url, headers=headers) as http:
            api = LabApi(http)
            await until("lab node schedulable", lambda: api.schedulable("lab"), bool, 30)
            uuid = await api.create("lab", demo)
            await api.settle(uuid, "active", 240)

            def serial() -> Awaitable[str]:
                return asyncio.to_thread(serial_log.read_text, errors="replace")

            await until("the deployed image's marker", serial, lambda text: DEMO_MARKER in text, 60)

            async def console_log() -> str:
                async with http.get("/v1/nodes/1/console-log") as resp:
                    return await resp.text()

            # bmd recorded the VM's console from the node's terminal_port: the agent, then the deployed image
            await until("the console in bmd's log", console_log, lambda text: DEMO_MARKER in text, 30)
            assert "bmd-agent" in await console_log()
            await api.delete(uuid, 60)
            node = await api.node(1)
            assert node["provision_state"] == "available"
            assert (await lab.machine_pids()) == {"lab-0001": None}


def install_ramdisk(built: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for name in ("deploy_kernel", "deploy_ramdisk", "manifest.json"):
        shutil.copyfile(built / name, target / name)


def needs_qemu(*modes: str) -> None:
    missing = qemu_missing(set(modes))
    if missing:
        pytest.skip(f"QEMU lab machines: {missing}")


async def read_console(host: str, port: int, marker: bytes, deadline: float) -> bytes:
    """Connect to the VM's console TCP port (retrying until it listens) and read until ``marker``."""
    async with asyncio.timeout(deadline):
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                break
            except OSError:
                await asyncio.sleep(0.1)  # QEMU is still starting
        seen = b""
        try:
            while marker not in seen:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                seen += chunk
        finally:
            writer.close()
        return seen


async def test_qemu_machine_follows_the_ipmi_power_driver(tmp_path: Path) -> None:
    """Power on/off/reset change the VM process; PXE falls through to the disk, disk boots it; the marker is
    in the serial log and on the console port; a guest that powers itself off reads as off."""
    needs_qemu("bios")
    spec = LabSpec(count=1, machines="qemu", machine_dir=tmp_path / "vms", bmd_address=f"127.0.0.1:{closed_port()}")
    async with Lab(spec) as lab:
        b = lab.bmcs[0]
        machine = lab.machine(b.name)
        assert machine.serial_log is not None and machine.disk is not None and machine.console is not None
        node = lab.inventory()[0]
        assert node["terminal_port"] == machine.console[1] and node["boot_mode"] == "bios"
        marker = "lab-qemu-marker-7"
        put_on_disk(bios_marker_image(tmp_path / "marker.img", marker), machine.disk)
        power = IPMIPower(QUICK)
        access = BMCAccess(1, b.address, b.username, b.password)

        async def pid() -> int | None:
            return (await lab.state(b.name))["machine"]["pid"]  # type: ignore[no-any-return]

        try:
            # 1. PXE (next boot only): iPXE finds no bmd, exits; the firmware boots the disk; the guest powers off.
            await power.set_boot_device(access, BootDevice.PXE, persistent=False)
            await power.set_power_state(access, PowerState.ON)
            first = await pid()
            assert (await lab.machine_pids()) == {b.name: first}
            assert first is not None and alive(first)
            seen = await read_console(*machine.console, marker.encode(), 60)
            assert marker.encode() in seen
            await until("guest powered off", lambda: power.get_power_state(access), lambda s: s == PowerState.OFF, 30)
            assert not alive(first)
            assert machine.serial_log.read_text().count(marker) == 1
            state = await lab.state(b.name)
            assert state["last_boot"] == 1 and state["boot"]["valid"] is False  # the override was consumed

            # 2. PXE again, then a reset with the disk as persistent boot device: a new process boots the disk.
            await power.set_boot_device(access, BootDevice.PXE, persistent=False)
            await power.set_power_state(access, PowerState.ON)
            second = await pid()
            assert second is not None and second != first
            await power.set_boot_device(access, BootDevice.DISK, persistent=True)
            await power.client.chassis_control(power.target(access), ChassisControl.HARD_RESET)
            await until("marker twice", lambda: asyncio.to_thread(machine.serial_log.read_text),
                        lambda text: text.count(marker) == 2, 30)  # fmt: skip
            assert not alive(second)
            await until("guest powered off", lambda: power.get_power_state(access), lambda s: s == PowerState.OFF, 30)
            assert (await lab.state(b.name))["machine"]["last_boot"] == 2

            # 3. power off kills the VM by PID.
            await power.set_boot_device(access, BootDevice.PXE, persistent=False)
            await power.set_power_state(access, PowerState.ON)
            third = await pid()
            assert third is not None and alive(third)
            await power.set_power_state(access, PowerState.OFF)
            assert not alive(third) and await pid() is None
            # 4. soft off: the ACPI power button; firmware ignores it, so the VM is killed after the bound.
            await power.set_boot_device(access, BootDevice.PXE, persistent=False)
            await power.set_power_state(access, PowerState.ON)
            fourth = await pid()
            assert fourth is not None
            await power.client.chassis_control(power.target(access), ChassisControl.SOFT_OFF)
            assert alive(fourth) and await power.get_power_state(access) == PowerState.ON  # still going
            await until("soft off bound", lambda: power.get_power_state(access), lambda s: s == PowerState.OFF, 15)
            assert not alive(fourth)
            # 5. the lab's stop kills a running VM.
            await power.set_boot_device(access, BootDevice.PXE, persistent=False)
            await power.set_power_state(access, PowerState.ON)
            last = await pid()
            assert last is not None and alive(last)
        finally:
            await power.close()
    assert not alive(last)
    assert machine.disk.exists()  # the machine directory was the test's: kept


async def test_uefi_machine_boots_the_uefi_marker_image_under_ovmf(tmp_path: Path) -> None:
    needs_qemu("uefi")
    missing = uefi_tools_missing()
    if missing:
        pytest.skip(missing)
    spec = LabSpec(count=1, machines="qemu", machine_dir=tmp_path / "vms", boot_mode="uefi", bmd_address="127.0.0.1:9")
    async with Lab(spec) as lab:
        b = lab.bmcs[0]
        machine = lab.machine(b.name)
        assert machine.serial_log is not None and machine.disk is not None
        assert lab.inventory()[0]["boot_mode"] == "uefi"
        put_on_disk(uefi_marker_image(tmp_path / "uefi.img", "lab-uefi-marker"), machine.disk)
        power = IPMIPower(QUICK)
        access = BMCAccess(1, b.address, b.username, b.password)
        try:
            await power.set_boot_device(access, BootDevice.DISK, persistent=True)
            await power.set_power_state(access, PowerState.ON)
            await until("guest powered off", lambda: power.get_power_state(access), lambda s: s == PowerState.OFF, 90)
        finally:
            await power.close()
        assert "lab-uefi-marker" in machine.serial_log.read_text(errors="replace")


def boot_from_disk(image: Path, serial: Path, *firmware: str) -> None:
    """QEMU straight from the disk (``-boot c``), bounded; the guest powers itself off."""
    argv = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "256", "-L", "/usr/share/seabios"]
    argv += ["-L", "/usr/lib/ipxe/qemu", "-display", "none", "-monitor", "none", "-net", "none"]
    argv += ["-serial", f"file:{serial}", "-boot", "c", *firmware, "-drive", f"file={image},if=virtio,format=raw"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err


def test_bios_marker_image_boots_in_qemu(tmp_path: Path) -> None:
    needs_qemu("bios")
    image = bios_marker_image(tmp_path / "bios.img", "bios-direct")
    assert image.stat().st_size == 2 * 1024 * 1024
    boot_from_disk(image, tmp_path / "serial.log")
    assert (tmp_path / "serial.log").read_bytes() == b"bios-direct\r\n"


def test_hybrid_marker_image_boots_under_seabios_and_ovmf(tmp_path: Path) -> None:
    """The quick start's demo image: the UEFI marker image (GPT, ESP, GRUB) with the MBR program in its
    protective MBR boots from disk under both firmwares."""
    needs_qemu("uefi")
    missing = uefi_tools_missing()
    if missing:
        pytest.skip(missing)
    image = hybrid_marker_image(tmp_path / "hybrid.img", "hybrid-direct")
    boot_from_disk(image, tmp_path / "bios.log")
    assert (tmp_path / "bios.log").read_bytes() == b"hybrid-direct\r\n"
    shutil.copyfile(OVMF_VARS, tmp_path / "vars.fd")
    pflash = [
        "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,file={tmp_path / 'vars.fd'}",
    ]  # fmt: skip
    boot_from_disk(image, tmp_path / "uefi.log", *pflash)
    assert "hybrid-direct" in (tmp_path / "uefi.log").read_text(errors="replace")


# -- images and errors, no VM ----------------------------------------------------------------------------


def test_mbr_program_is_a_boot_sector_with_the_marker() -> None:
    sector = mbr_program("hello")
    assert len(sector) == 512 and sector[-2:] == b"\x55\xaa"
    assert b"hello\r\n\0" in sector


def test_mbr_echo_program_is_a_boot_sector_with_the_marker() -> None:
    sector = mbr_echo_program("hello")
    assert len(sector) == 512 and sector[-2:] == b"\x55\xaa"
    assert b"hello\r\n\0" in sector and sector != mbr_program("hello")  # booted: tests/ipmi/test_sol_qemu.py


def test_lab_image_cli_writes_the_bios_marker_image(tmp_path: Path) -> None:
    out = tmp_path / "m.img"
    done = subprocess.run(
        [sys.executable, "-m", "bmd", "lab", "image", "--out", str(out), "--marker", "cli-marker"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:512] == mbr_program("cli-marker")


async def test_qemu_machines_without_qemu_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-system-x86_64 on it
    with pytest.raises(QemuMissing, match="qemu-system-x86_64 not found: install the Debian package"):
        async with Lab(LabSpec(count=1, machines="qemu", machine_dir=tmp_path / "vms")):
            pass
    assert os.environ["PATH"] == str(tmp_path)


_VM_OWNER = """
import asyncio, sys
from pathlib import Path
from bmd.ipmi import BMCTarget, ChassisControl, IPMIClient, IPMISettings
from bmd.lab import Lab, LabSpec
async def main():
    lab = Lab(LabSpec(count=1, machines="qemu", machine_dir=Path(sys.argv[1]), bmd_address="127.0.0.1:9",
                      first_address="127.1.94.1"))
    await lab.start()
    b = lab.bmcs[0]
    client = IPMIClient(IPMISettings(timeout=2.0))
    await client.chassis_control(BMCTarget(b.host, b.port, b.username, b.password), ChassisControl.POWER_ON)
    print(lab.pids[0], (await lab.state(b.name))["machine"]["pid"], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def test_a_vm_dies_with_its_lab_worker(tmp_path: Path) -> None:
    """Even a worker killed with SIGKILL (no chance to clean up) takes its VMs with it (PR_SET_PDEATHSIG)."""
    needs_qemu("bios")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _VM_OWNER, str(tmp_path / "vms"), stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert parent.stdout is not None
        line = b""
        while not line.strip() or not line.split()[0].isdigit():  # skip the log lines
            line = await asyncio.wait_for(parent.stdout.readline(), 60)
            assert line, "the parent exited early"
        worker, vm = (int(p) for p in line.split())
        assert alive(worker) and alive(vm)
        os.kill(worker, signal.SIGKILL)

        async def vm_alive() -> bool:
            return alive(vm)

        await until("the VM killed with its worker", vm_alive, lambda up: not up, 15)
    finally:
        parent.send_signal(signal.SIGKILL)
        await parent.wait()


# -- simulated machines: what they boot, with a real HTTP server standing in for bmd's boot files ------------


def test_boot_args_from_the_ipxe_scripts_bmd_writes() -> None:
    params = BootParams(
        node_uuid="9eadc924-9482-499d-9696-56496c4fb56d",
        deploy_args="bmd_node_uuid=9eadc924-9482-499d-9696-56496c4fb56d bmd_url=http://10.0.2.100:8080 console=ttyS0",
        boot_args="root=/dev/vda1",
        node_url="http://10.0.2.100:8080/images/9eadc924-9482-499d-9696-56496c4fb56d",
    )
    args = boot_args_from_ipxe(ipxe_script(params, deploy=True), MAC)
    assert args is not None
    assert (args.node_uuid, args.bmd_url) == (params.node_uuid, "http://10.0.2.100:8080")
    assert args.kernel_args["console"] == "ttyS0" and args.kernel_args["BOOTIF"] == "01-${mac:hexhyp}"
    assert boot_args_from_ipxe(ipxe_script(params, deploy=False), MAC) is None  # boot mode: the instance
    with pytest.raises(AgentError, match="neither in deploy nor in boot mode"):
        boot_args_from_ipxe("#!ipxe\nexit\n", MAC)


MAC = "52:54:00:00:00:01"


async def test_sim_machine_pxe_boots_only_the_next_boot_and_disk_needs_no_network(tmp_path: Path) -> None:
    asked: list[str] = []

    async def script(request: web.Request) -> web.Response:
        asked.append(request.path)
        raise web.HTTPNotFound()  # no script for the MAC: iPXE exits, the firmware boots the disk

    app = web.Application()
    app.router.add_get("/{path:.*}", script)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        spec = LabSpec(count=1, machines="sim", first_address="127.1.95.1", boot_url=f"http://127.0.0.1:{port}/images")
        async with Lab(spec) as lab:
            b = lab.bmcs[0]
            power = IPMIPower(QUICK)
            access = BMCAccess(1, b.address, b.username, b.password)

            async def machine() -> dict[str, Any]:
                return (await lab.state(b.name))["machine"]  # type: ignore[no-any-return]

            try:
                await power.set_boot_device(access, BootDevice.DISK, persistent=False)
                await power.set_power_state(access, PowerState.ON)
                assert (await machine())["state"] == "disk" and asked == []
                await power.set_boot_device(access, BootDevice.PXE, persistent=False)
                await power.reboot(access)
                done = await until("PXE attempt", machine, lambda m: m["state"] == "disk" and m["boots"] == 2, 10)
                assert done["last"] == {"ipxe_status": 404}
                assert asked == ["/images/ipxe/01-52-54-00-00-00-01.ipxe"]
                await power.reboot(access)  # the override was for one boot only: the disk, no network
                await until("third boot", machine, lambda m: m["boots"] == 3, 10)
                assert (await machine())["state"] == "disk" and len(asked) == 1
                await power.set_power_state(access, PowerState.OFF)
                assert (await machine())["state"] == "off"
            finally:
                await power.close()
    finally:
        await runner.cleanup()


async def test_mixed_boot_mode_lab_inventory() -> None:
    spec = LabSpec(count=3, machines="sim", boot_mode="mixed", first_address="127.1.96.1", boot_url="http://x.invalid/")
    async with Lab(spec) as lab:
        nodes = lab.inventory()
    assert [n["boot_mode"] for n in nodes] == ["bios", "uefi", "bios"]
    assert {(n["cpus"], n["memory_mb"], n["local_gb"]) for n in nodes} == {(1, 256, 1)}  # the flavor "lab"
    assert all("terminal_port" not in n for n in nodes)  # a simulated machine has no serial console


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"machines": "vmware"}, "machines"),
        ({"boot_mode": "legacy"}, "boot_mode"),
        ({"boot_url": "ftp://bmd/images"}, "boot_url"),
        ({"memory_mb": 32}, "memory_mb"),
        ({"disk_mb": 1}, "disk_mb"),
    ],
)
def test_lab_spec_machine_fields_are_checked(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        LabSpec(**fields)
    assert err.value.field == field
