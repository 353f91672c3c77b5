"""The native client and the ``ipmi`` driver against OpenIPMI's ipmi_sim, a server nobody here wrote.

ipmi_sim (OpenIPMI 2.0.33) speaks cipher suite 3 and drops suite 17 proposals without an answer; it keeps
no boot-flags valid bit. Its chassis_control hook keeps power and boot device in files we read directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from bmd.drivers.power.base import BMCAccess, BootDevice, PowerState
from bmd.drivers.power.ipmi import IPMIPower, IPMIPowerSettings
from bmd.errors import BMCAuthError, BMCTimeout
from bmd.ipmi import BMCTarget, BootTarget, ChassisControl, IPMIClient
from bmd.lab.ipmisim import IpmiSim
from tests.ipmi.helpers import FAST, eventually, ipmi_client, needs_ipmitool, run_ipmitool

pytestmark = pytest.mark.asyncio(loop_scope="module")


def sim_target(sim: IpmiSim, password: str = "password", user: str = "admin") -> BMCTarget:
    return BMCTarget(sim.host, sim.port, user, password)


async def test_every_command(sim: IpmiSim, client: IPMIClient) -> None:
    t = sim_target(sim)
    dev = await client.get_device_id(t)
    assert (dev.manufacturer_id, dev.product_id, dev.ipmi_version) == (0x1291, 0x0F02, "2.0")
    sim.set_power(False)
    assert await client.get_power_state(t) is False
    await client.chassis_control(t, ChassisControl.POWER_ON)
    assert sim.power() is True and await client.get_power_state(t) is True
    await client.chassis_control(t, ChassisControl.HARD_RESET)
    assert sim.calls()[-1] == "set reset 1"
    await client.chassis_control(t, ChassisControl.SOFT_OFF)
    assert sim.power() is False
    await client.chassis_control(t, ChassisControl.POWER_ON)
    await client.chassis_control(t, ChassisControl.POWER_OFF)
    assert sim.power() is False and await client.get_power_state(t) is False
    for device, word in [(BootTarget.PXE, "pxe"), (BootTarget.BIOS, "bios"), (BootTarget.DISK, "default")]:
        await client.set_boot_device(t, device, persistent=True)
        assert sim.boot() == word
        assert (await client.get_boot_flags(t)).target == device
    await client.set_boot_device(t, BootTarget.NONE)
    assert sim.boot() == "none"


async def test_power_cycle_is_seen_through(sim: IpmiSim, client: IPMIClient) -> None:
    t = sim_target(sim)
    sim.set_power(True)
    await client.chassis_control(t, ChassisControl.POWER_CYCLE)
    assert sim.power() is False  # ipmi_sim powers off now and back on one second later
    await eventually(lambda: client.get_power_state(t), lambda on: on is True, deadline=5.0)


async def test_unanswered_suite_17_falls_back_to_3_once(sim: IpmiSim) -> None:
    async with ipmi_client(dataclasses.replace(FAST, attempt_timeout=0.2)) as c:
        await c.get_power_state(sim_target(sim))
        assert (c.stats.suite_fallbacks, c.stats.sessions_opened) == (1, 1)
        for entry in c._entries.values():
            assert entry.suite == 3 and entry.session is not None and entry.session.suite is not None
            assert entry.session.suite.id == 3
        await c.close_session(sim_target(sim))
        await c.get_power_state(sim_target(sim))  # the BMC's suite is remembered: no second fallback
        assert (c.stats.suite_fallbacks, c.stats.sessions_opened) == (1, 2)


async def test_suite_17_only_times_out(sim: IpmiSim) -> None:
    async with ipmi_client(dataclasses.replace(FAST, cipher_suites=(17,), timeout=0.8)) as c:
        with pytest.raises(BMCTimeout):
            await c.get_power_state(sim_target(sim))


async def test_bad_credentials_are_auth_errors_without_retry(sim: IpmiSim) -> None:
    async with ipmi_client(dataclasses.replace(FAST, cipher_suites=(3,))) as c:
        with pytest.raises(BMCAuthError, match="RAKP 2"):
            await c.get_power_state(sim_target(sim, password="wrong"))
        with pytest.raises(BMCAuthError):
            await c.get_power_state(sim_target(sim, user="nobody"))
        assert c.stats.retransmissions == 0  # one RAKP 1 each, no second try


async def test_stopped_ipmi_sim_times_out(tmp_path: Path) -> None:
    sim = IpmiSim(tmp_path)
    await sim.start()
    await sim.stop()
    settings = dataclasses.replace(FAST, timeout=0.6)
    async with ipmi_client(settings) as c:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BMCTimeout):
            await c.get_power_state(sim_target(sim))
        assert loop.time() - started < settings.timeout + 0.25


async def test_driver_against_ipmi_sim(sim: IpmiSim) -> None:
    settings = IPMIPowerSettings(
        client=FAST,
        min_command_interval=0.0,
        confirm_interval=0.05,
        confirm_timeout=5.0,
        honour_boot_valid_bit=False,  # ipmi_sim never sets the valid bit
    )
    driver = IPMIPower(settings)
    node = BMCAccess(7, f"{sim.host}:{sim.port}", "admin", "password")
    try:
        sim.set_power(False)
        await driver.set_power_state(node, PowerState.ON)
        assert sim.power() is True
        await driver.reboot(node)  # power cycle: off now, on after a second, confirmed
        assert await driver.get_power_state(node) is PowerState.ON
        assert any(c == "set power 0" for c in sim.calls())
        await driver.set_power_state(node, PowerState.OFF)
        assert sim.power() is False
        await driver.reboot(node)  # off: plain power on
        assert sim.power() is True
        await driver.set_boot_device(node, BootDevice.PXE, persistent=True)
        assert sim.boot() == "pxe"
        assert (await driver.get_boot_device(node)).device is BootDevice.PXE
    finally:
        await driver.close()


@needs_ipmitool
async def test_ipmitool_and_the_client_see_each_other(sim: IpmiSim, client: IPMIClient) -> None:
    t = sim_target(sim)
    sim.set_power(False)
    rc, out = await run_ipmitool(sim.host, sim.port, "chassis", "power", "on", suite=3)
    assert rc == 0, out
    assert await client.get_power_state(t) is True
    await client.chassis_control(t, ChassisControl.POWER_OFF)
    rc, out = await run_ipmitool(sim.host, sim.port, "chassis", "power", "status", suite=3)
    assert rc == 0 and "Chassis Power is off" in out, out
