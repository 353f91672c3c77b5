"""Serial over LAN to a real QEMU guest behind a lab BMC (TCG), powered on and reset through IPMI.

The guest boots a disk whose boot sector prints a marker on COM1 and then echoes COM1 upper-cased
(:func:`bmd.lab.images.bios_echo_image`). Debian's ipmitool, bmd's own client and (when installed) FreeIPMI's
ipmiconsole each see the marker of a boot they watched, and what they type comes back upper-cased: text only
the guest could have produced (neither the lab BMC nor the console relay in front of the VM's serial port
changes a character). Every boot is one QEMU process; powering off through IPMI kills it by PID.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bmd.ipmi import BMCTarget, BootTarget, ChassisControl, IPMIClient, SolSettings
from bmd.lab import Lab, LabBMCInfo, LabSpec
from bmd.lab.images import bios_echo_image
from bmd.lab.qemu import qemu_missing
from tests.ipmi.helpers import (
    FAST,
    IPMICONSOLE,
    IPMITOOL,
    console_process,
    ended,
    eventually,
    ipmi_client,
    low_udp_port,
    target,
)
from tests.lab_api import alive, closed_port, put_on_disk

MARKER = "bmd-guest-sol-marker-31"
BOOT_WITHIN = 30.0  # seconds from power on to the marker: SeaBIOS under TCG on a busy 2-core machine
QUICK_SOL = SolSettings(ack_timeout=0.2, nack_pause=0.05)


async def vm_pid(lab: Lab, name: str) -> int | None:
    return (await lab.state(name))["machine"]["pid"]  # type: ignore[no-any-return]


async def boot_watched(client: IPMIClient, t: BMCTarget, lab: Lab, name: str, first: bool) -> int:
    """Power the VM on (first boot) or reset it (a new QEMU process); its PID."""
    before = await vm_pid(lab, name)
    await client.chassis_control(t, ChassisControl.POWER_ON if first else ChassisControl.HARD_RESET)
    pid = await eventually(lambda: vm_pid(lab, name), lambda p: p is not None and p != before, 10)
    assert pid is not None
    return pid


async def test_sol_consoles_talk_to_the_qemu_guest(tmp_path: Path) -> None:
    missing = qemu_missing({"bios"})
    if missing:
        pytest.skip(f"QEMU lab machines: {missing}")
    host = "127.1.97.1"
    spec = LabSpec(
        count=1,
        machines="qemu",
        machine_dir=tmp_path / "vms",
        first_address=host,
        port=low_udp_port(host),  # ipmiconsole cannot reach ports above 32767 (tests/ipmi/helpers.py)
        bmd_address=f"127.0.0.1:{closed_port()}",
    )
    async with Lab(spec) as lab, ipmi_client(FAST) as client:
        b: LabBMCInfo = lab.bmcs[0]
        t = target(b)
        machine = lab.machine(b.name)
        assert machine.disk is not None and machine.serial_log is not None
        image = await asyncio.to_thread(bios_echo_image, tmp_path / "echo.img", MARKER)
        await asyncio.to_thread(put_on_disk, image, machine.disk)
        await client.set_boot_device(t, BootTarget.DISK, persistent=True)
        pids: list[int] = []

        # 1. ipmitool -I lanplus sol activate, attached before power on: the guest's boot, and the echo.
        if IPMITOOL is not None:
            argv = [IPMITOOL, "-I", "lanplus", "-C", "17", "-H", b.host, "-p", str(b.port)]
            argv += ["-U", b.username, "-P", b.password, "sol", "activate"]
            async with console_process(argv) as (term, proc):
                await term.expect(b"SOL Session operational")
                pids.append(await boot_watched(client, t, lab, b.name, first=not pids))
                await term.expect(MARKER.encode(), within=BOOT_WITHIN)
                term.type(b"typed in ipmitool\r")
                await term.expect(b"TYPED IN IPMITOOL")
                term.type(b"~.")  # right after the \r: ipmitool's escape, terminate the session
                await ended(proc, term)

        # 2. bmd's client: a reset is a new boot, a new VM process; the same text, and typing reaches it.
        async with client.sol(t, settings=QUICK_SOL) as console:
            pids.append(await boot_watched(client, t, lab, b.name, first=not pids))
            await console.read_until(MARKER.encode(), within=BOOT_WITHIN)
            await console.write(b"typed in bmd\r")
            await console.read_until(b"TYPED IN BMD", within=10)

        # 3. FreeIPMI's ipmiconsole, when installed.
        if IPMICONSOLE is not None:
            argv = [IPMICONSOLE, "-h", f"{b.host}:{b.port}", "-u", b.username, "-p", b.password, "-I", "17"]
            async with console_process(argv) as (term, proc):
                await term.expect(b"[SOL established]")
                pids.append(await boot_watched(client, t, lab, b.name, first=not pids))
                await term.expect(MARKER.encode(), within=BOOT_WITHIN)
                term.type(b"typed in ipmiconsole\r")
                await term.expect(b"TYPED IN IPMICONSOLE")
                term.type(b"&.")
                await ended(proc, term)

        assert len(set(pids)) == len(pids) and not any(alive(p) for p in pids[:-1])  # each reset: a new process
        assert alive(pids[-1])
        await client.chassis_control(t, ChassisControl.POWER_OFF)
        assert await vm_pid(lab, b.name) is None and not alive(pids[-1])  # killed by PID
        log = await asyncio.to_thread(machine.serial_log.read_text, errors="replace")
        assert log.count(MARKER) == len(pids)  # one marker per boot, all from the guest
        assert not (await lab.state(b.name))["sol"]["active"]
