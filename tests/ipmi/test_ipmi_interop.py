"""Cross-checks against clients nobody here wrote: Debian's ipmitool (a process) and pyghmi's client.

ipmitool and the ``ipmi-pyghmi`` driver change power and boot device on lab BMCs and the native client
sees it; the native client changes them and they see it.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from bmd.drivers.power.base import BootDevice, PowerState
from bmd.drivers.power.ipmi_pyghmi import PyghmiPower, PyghmiPowerSettings
from bmd.errors import BMCAuthError, BMCTimeout
from bmd.ipmi import BootTarget, ChassisControl, IPMIClient
from bmd.lab import Fault
from tests.ipmi.helpers import Pool, access, eventually, needs_ipmitool, run_ipmitool, target

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUICK_PYGHMI = PyghmiPowerSettings(timeout=10.0, min_command_interval=0.0, confirm_interval=0.05)


@needs_ipmitool
async def test_ipmitool_changes_are_seen_by_the_client(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    rc, out = await run_ipmitool(b.host, b.port, "chassis", "power", "on")
    assert rc == 0 and "Up/On" in out, out
    assert await client.get_power_state(target(b)) is True
    rc, out = await run_ipmitool(b.host, b.port, "chassis", "bootdev", "pxe", "options=persistent")
    assert rc == 0, out
    flags = await client.get_boot_flags(target(b))
    assert (flags.target, flags.persistent, flags.valid) == (BootTarget.PXE, True, True)
    rc, out = await run_ipmitool(b.host, b.port, "chassis", "power", "off")
    assert rc == 0, out
    assert await client.get_power_state(target(b)) is False


@needs_ipmitool
async def test_client_changes_are_seen_by_ipmitool(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    await client.chassis_control(target(b), ChassisControl.POWER_ON)
    rc, out = await run_ipmitool(b.host, b.port, "chassis", "power", "status")
    assert rc == 0 and "Chassis Power is on" in out, out
    await client.set_boot_device(target(b), BootTarget.BIOS, persistent=True)
    rc, out = await run_ipmitool(b.host, b.port, "chassis", "bootparam", "get", "5")
    assert rc == 0, out
    assert "Force Boot into BIOS Setup" in out and "Options apply to all future boots" in out, out
    rc, out = await run_ipmitool(b.host, b.port, "mc", "info")
    assert rc == 0 and "IPMI Version              : 2.0" in out, out


@needs_ipmitool
@pytest.mark.parametrize(("suite", "lab_suite"), [(None, 17), (3, 3), (17, 17)])
async def test_ipmitool_cipher_suites(pool: Pool, suite: int | None, lab_suite: int) -> None:
    """Without -C, ipmitool reads the lab's Get Channel Cipher Suites list and picks 17."""
    b = pool.one()
    rc, out = await run_ipmitool(b.host, b.port, "chassis", "power", "status", suite=suite)
    assert rc == 0 and "Chassis Power is off" in out, out
    assert (await pool.lab.state(b.name))["stats"][f"suite_{lab_suite}"] == 1


@needs_ipmitool
async def test_ipmitool_against_a_suite_3_lab_bmc(pool3: Pool) -> None:
    b = pool3.one()
    rc, out = await run_ipmitool(b.host, b.port, "chassis", "power", "status")
    assert rc == 0 and "Chassis Power is off" in out, out
    rc, out = await run_ipmitool(b.host, b.port, "chassis", "power", "status", suite=17)
    assert rc != 0 and "no matching cipher suite" in out, out


@needs_ipmitool
async def test_ipmitool_with_a_bmc_key(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    await pool.lab.set_kg([b.name], "a-bmc-key")
    rc, out = await run_ipmitool(b.host, b.port, "-k", "a-bmc-key", "chassis", "power", "on")
    assert rc == 0, out
    assert await client.get_power_state(dataclasses.replace(target(b), kg=b"a-bmc-key")) is True


@needs_ipmitool
async def test_ipmitool_with_a_bad_password(pool: Pool) -> None:
    b = pool.one()
    rc, out = await run_ipmitool(b.host, b.port, "chassis", "power", "status", password="nope")
    assert rc != 0 and "Unable to establish" in out, out


@pytest.mark.parametrize("pool_name", ["pool", "pool3"])
async def test_pyghmi_driver_and_native_client_agree(
    pool_name: str, pool: Pool, pool3: Pool, client: IPMIClient
) -> None:
    """pool: pyghmi's client negotiates suite 17; pool3: the lab refuses 17 (0x11), pyghmi falls back.

    Both pools are plain arguments: a module-scoped async fixture reached through ``getfixturevalue``
    inside an async test would be set up on the wrong loop when no earlier test had made it."""
    p = pool if pool_name == "pool" else pool3
    b = p.one()
    driver = PyghmiPower(QUICK_PYGHMI)
    node = access(b)
    try:
        assert await driver.get_power_state(node) is PowerState.OFF
        await driver.set_power_state(node, PowerState.ON)
        assert await client.get_power_state(target(b)) is True
        await client.chassis_control(target(b), ChassisControl.POWER_OFF)
        assert await driver.get_power_state(node) is PowerState.OFF
        await driver.set_boot_device(node, BootDevice.DISK, persistent=True)
        flags = await client.get_boot_flags(target(b))
        assert (flags.target, flags.persistent) == (BootTarget.DISK, True)
        await client.set_boot_device(target(b), BootTarget.PXE, persistent=False)
        info = await driver.get_boot_device(node)
        assert (info.device, info.persistent) == (BootDevice.PXE, False)
        await driver.reboot(node)  # off: power on
        assert await client.get_power_state(target(b)) is True
        assert (await driver.get_boot_device(node)).device is None  # next-boot override consumed
    finally:
        await driver.close()
    stats = (await p.lab.state(b.name))["stats"]
    assert stats["suite_17" if pool_name == "pool" else "suite_3"] >= 1
    if pool_name == "pool3":
        assert stats["suite_refused"] >= 1


async def test_pyghmi_driver_faults(pool: Pool) -> None:
    good, bad, dead = pool.take(3)
    await pool.lab.set_fault([bad.name], Fault("badpass"))
    await pool.lab.set_fault([dead.name], Fault("dead"))
    driver = PyghmiPower(PyghmiPowerSettings(timeout=1.0, min_command_interval=0.0))
    try:
        with pytest.raises(BMCAuthError):
            await driver.get_power_state(access(bad))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BMCTimeout):
            await driver.get_power_state(access(dead))
        assert loop.time() - started < 1.5
        await pool.lab.set_fault([dead.name], None)  # let pyghmi's thread finish its own wait quickly
        # the one pyghmi thread serves the next call once the abandoned one is over
        assert await eventually(lambda: driver.get_power_state(access(good)), lambda s: s is PowerState.OFF)
    finally:
        await driver.close()
