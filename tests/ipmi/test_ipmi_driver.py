"""The ``ipmi`` power driver (over lab BMCs) and the ``fake`` driver."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bmd.drivers.power.base import BMCAccess, BootDevice, BootDeviceInfo, PowerState
from bmd.drivers.power.fake import FakePower
from bmd.drivers.power.ipmi import IPMIPower, IPMIPowerSettings
from bmd.errors import BMCAuthError, BMCTimeout, InvalidInput
from bmd.lab import Fault
from tests.ipmi.helpers import FAST, Pool, access

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUICK = IPMIPowerSettings(client=FAST, min_command_interval=0.0, confirm_interval=0.05, confirm_timeout=2.0)


@pytest_asyncio.fixture(loop_scope="module")
async def driver() -> AsyncIterator[IPMIPower]:
    d = IPMIPower(QUICK)
    try:
        yield d
    finally:
        await d.close()


async def test_power_verbs_confirm_the_state(pool: Pool, driver: IPMIPower) -> None:
    b = pool.one()
    node = access(b)
    assert await driver.get_power_state(node) is PowerState.OFF
    await driver.set_power_state(node, PowerState.ON)
    assert (await pool.lab.state(b.name))["power"] is True
    await driver.set_power_state(node, PowerState.ON)  # already on: no command sent
    await driver.reboot(node)  # on: power cycle
    await driver.set_power_state(node, PowerState.OFF)
    await driver.reboot(node)  # off: power on
    state = await pool.lab.state(b.name)
    assert state["power"] is True
    assert (state["stats"]["power_on"], state["stats"]["power_cycle"], state["stats"]["power_off"]) == (
        2,
        1,
        1,
    )
    with pytest.raises(InvalidInput):
        await driver.set_power_state(node, PowerState.ERROR)


async def test_boot_device_next_boot_and_persistent(pool: Pool, driver: IPMIPower) -> None:
    node = access(pool.one())
    assert await driver.get_boot_device(node) == BootDeviceInfo(None, False)
    await driver.set_boot_device(node, BootDevice.PXE)
    assert await driver.get_boot_device(node) == BootDeviceInfo(BootDevice.PXE, False)
    await driver.reboot(node)
    assert await driver.get_boot_device(node) == BootDeviceInfo(None, False)  # consumed by the boot
    for device in (BootDevice.DISK, BootDevice.BIOS, BootDevice.PXE):
        await driver.set_boot_device(node, device, persistent=True)
        await driver.reboot(node)
        assert await driver.get_boot_device(node) == BootDeviceInfo(device, True)


async def test_a_bmc_that_never_reaches_the_state_is_a_timeout(pool: Pool, driver: IPMIPower) -> None:
    b = pool.one()
    await pool.lab.set_fault([b.name], Fault("stuck"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BMCTimeout, match="did not report power on"):
        await driver.set_power_state(access(b), PowerState.ON)
    assert QUICK.confirm_timeout - 0.1 <= loop.time() - started < QUICK.confirm_timeout + 1.0


async def test_faults_are_typed(pool: Pool) -> None:
    dead, bad = pool.take(2)
    await pool.lab.set_fault([dead.name], Fault("dead"))
    await pool.lab.set_fault([bad.name], Fault("badpass"))
    d = IPMIPower(dataclasses.replace(QUICK, client=dataclasses.replace(FAST, timeout=0.5)))
    try:
        with pytest.raises(BMCTimeout):
            await d.get_power_state(access(dead))
        with pytest.raises(BMCAuthError):
            await d.set_power_state(access(bad), PowerState.ON)
        assert (await pool.lab.state(bad.name))["stats"]["rakp1"] == 1
    finally:
        await d.close()


async def test_min_command_interval_spaces_changes_not_reads(pool: Pool) -> None:
    b = pool.one()
    node = access(b)
    interval = 0.4
    d = IPMIPower(dataclasses.replace(QUICK, min_command_interval=interval))
    loop = asyncio.get_running_loop()
    try:
        await d.set_power_state(node, PowerState.ON)
        changed = loop.time()
        reads = [await d.get_power_state(node) for _ in range(5)]  # not throttled
        assert reads == [PowerState.ON] * 5 and loop.time() - changed < interval
        await d.set_power_state(node, PowerState.OFF)  # throttled: waits out the interval
        assert loop.time() - changed >= interval
        started = loop.time()
        await asyncio.gather(d.set_boot_device(node, BootDevice.PXE), d.set_boot_device(node, BootDevice.DISK))
        assert loop.time() - started >= 2 * interval - 0.05  # one after the other, each after a pause
    finally:
        await d.close()
    assert (await pool.lab.state(b.name))["boot"]["selector"] in (1, 2)


async def test_shared_client_is_not_closed_by_the_driver(pool: Pool) -> None:
    from bmd.ipmi import IPMIClient

    client = IPMIClient(FAST)
    d = IPMIPower(QUICK, client=client)
    node = access(pool.one())
    await d.get_power_state(node)
    await d.close()
    assert await client.get_power_state(d.target(node)) is False  # still usable
    await client.close()


async def test_fake_driver() -> None:
    fake = FakePower()
    node = BMCAccess(3, "", None, None)
    fake.validate(node)  # needs nothing
    assert await fake.get_power_state(node) is PowerState.OFF
    await fake.set_boot_device(node, BootDevice.PXE)
    await fake.set_power_state(node, PowerState.ON)
    assert await fake.get_boot_device(node) == BootDeviceInfo(None, False)  # consumed by the boot
    await fake.set_boot_device(node, BootDevice.DISK, persistent=True)
    await fake.reboot(node)
    assert await fake.get_boot_device(node) == BootDeviceInfo(BootDevice.DISK, True)
    assert fake.bmc(3).boots == 2 and fake.bmc(3).power is PowerState.ON
    fake.inject_failure(3, BMCTimeout("injected"))
    with pytest.raises(BMCTimeout, match="injected"):
        await fake.get_power_state(node)
    fake.inject_failure(3, None)
    await fake.set_power_state(node, PowerState.OFF)
    assert await fake.get_power_state(node) is PowerState.OFF
    assert await fake.get_power_state(BMCAccess(4, "", None, None)) is PowerState.OFF  # nodes are apart
    with pytest.raises(InvalidInput):
        await fake.set_power_state(node, PowerState.ERROR)
    assert fake.bmc(3).calls[:2] == ["get_power_state", "set_boot_device:pxe"]
