"""RedfishPower against sushy-tools' emulator (real Redfish over HTTP on 127.0.0.1, Basic auth on)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from bmd.drivers.power.base import BMCAccess, BootDevice, BootDeviceInfo, PowerState
from bmd.drivers.power.redfish import RedfishPower, RedfishSettings
from bmd.errors import (
    BMCAuthError,
    BMCError,
    BMCTimeout,
    BMCUnreachable,
    InvalidInput,
    UnsupportedOperation,
)
from tests.drivers.power.redfish.conftest import PASSWORD, USER, Emulator

# The fake driver applies a power change 1-11 s after accepting it.
POWER_WAIT = 20.0


def access(url: str, user: str | None = USER, password: str | None = PASSWORD, **options: Any) -> BMCAccess:
    return BMCAccess(node_id=1, address=url, username=user, password=password, options=options)


@pytest.fixture
async def driver() -> AsyncIterator[RedfishPower]:
    drv = RedfishPower(RedfishSettings(timeout=5.0))
    yield drv
    await drv.close()


@pytest.fixture
async def waiting_driver() -> AsyncIterator[RedfishPower]:
    drv = RedfishPower(RedfishSettings(timeout=5.0, power_wait=POWER_WAIT, poll_interval=0.2))
    yield drv
    await drv.close()


def resets(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [e["reset_type"] for e in logs if e["event"] == "redfish_reset_requested"]


async def test_reads_power_state(driver: RedfishPower, emulator: Emulator) -> None:
    assert await driver.get_power_state(access(emulator.system_url("read-off"))) is PowerState.OFF
    assert await driver.get_power_state(access(emulator.system_url("read-on"))) is PowerState.ON


@pytest.mark.parametrize("root", ["", "/", "/redfish/v1", "/redfish/v1/"])
async def test_service_root_with_system_id(driver: RedfishPower, emulator: Emulator, root: str) -> None:
    acc = access(emulator.base_url + root, system_id=emulator.systems["read-on"])
    driver.validate(acc)
    assert await driver.get_power_state(acc) is PowerState.ON


async def test_service_root_without_system_id_needs_exactly_one(driver: RedfishPower, emulator: Emulator) -> None:
    with pytest.raises(BMCError, match=r"has 8 systems; set options.system_id"):
        await driver.get_power_state(access(emulator.base_url))


async def test_single_system_root_and_no_credentials(driver: RedfishPower, single_emulator: Emulator) -> None:
    acc = access(single_emulator.base_url + "/redfish/v1", user=None, password=None)
    driver.validate(acc)
    assert await driver.get_power_state(acc) is PowerState.ON


async def test_power_verbs_reach_their_state(waiting_driver: RedfishPower, emulator: Emulator) -> None:
    """On, ForceOff, reboot (on and off node) and an unwaited On, concurrently: one 1-11 s delay in all."""
    plain = RedfishPower(RedfishSettings(timeout=5.0))
    try:
        with capture_logs() as logs:
            await asyncio.gather(
                waiting_driver.set_power_state(access(emulator.system_url("power-on")), PowerState.ON),
                waiting_driver.set_power_state(access(emulator.system_url("power-off")), PowerState.OFF),
                waiting_driver.reboot(access(emulator.system_url("reboot"))),
                waiting_driver.reboot(access(emulator.system_url("reboot-off"))),
                plain.set_power_state(access(emulator.system_url("nowait")), PowerState.ON),
            )
        assert sorted(resets(logs)) == sorted(["On", "ForceOff", "ForceRestart", "On", "On"])
        await plain.wait_for_power_state(access(emulator.system_url("nowait")), PowerState.ON, POWER_WAIT)
        expected = {"power-on": PowerState.ON, "power-off": PowerState.OFF, "reboot": PowerState.ON}
        expected |= {"reboot-off": PowerState.ON, "nowait": PowerState.ON}
        for role, state in expected.items():
            assert await plain.get_power_state(access(emulator.system_url(role))) is state, role
    finally:
        await plain.close()


async def test_set_power_state_already_there_sends_nothing(driver: RedfishPower, emulator: Emulator) -> None:
    with capture_logs() as logs:
        await driver.set_power_state(access(emulator.system_url("read-on")), PowerState.ON)
        await driver.set_power_state(access(emulator.system_url("read-off")), PowerState.OFF)
    assert resets(logs) == []


async def test_wait_for_power_state_times_out_naming_last_state(driver: RedfishPower, emulator: Emulator) -> None:
    started = time.monotonic()
    with pytest.raises(BMCTimeout, match=r"did not reach power on within 0.3s \(last PowerState Off\)"):
        await driver.wait_for_power_state(access(emulator.system_url("read-off")), PowerState.ON, 0.3)
    assert time.monotonic() - started < 2.0


async def test_boot_device(driver: RedfishPower, emulator: Emulator) -> None:
    acc = access(emulator.system_url("boot"))
    assert await driver.get_boot_device(acc) == BootDeviceInfo(BootDevice.DISK, persistent=True)
    await driver.set_boot_device(acc, BootDevice.PXE, persistent=False)
    # sushy-tools ignores BootSourceOverrideEnabled and always reads back Continuous.
    assert (await driver.get_boot_device(acc)).device is BootDevice.PXE
    await driver.set_boot_device(acc, BootDevice.DISK, persistent=True)
    assert await driver.get_boot_device(acc) == BootDeviceInfo(BootDevice.DISK, persistent=True)


async def test_boot_target_not_advertised_is_refused(driver: RedfishPower, emulator: Emulator) -> None:
    acc = access(emulator.system_url("boot"))
    with pytest.raises(UnsupportedOperation, match=r"does not allow boot target BiosSetup \(allowed: Pxe"):
        await driver.set_boot_device(acc, BootDevice.BIOS)


@pytest.mark.parametrize(("user", "password"), [(USER, "wrong"), ("nobody", PASSWORD), (None, None)])
async def test_bad_credentials(
    driver: RedfishPower, emulator: Emulator, user: str | None, password: str | None
) -> None:
    with pytest.raises(BMCAuthError, match=r"HTTP 401"):
        await driver.get_power_state(access(emulator.system_url("read-on"), user=user, password=password))


async def test_redfish_error_message_is_kept(driver: RedfishPower, emulator: Emulator) -> None:
    with pytest.raises(BMCError, match=r"HTTP 404\): Fake system no-such-system was not found") as info:
        await driver.get_power_state(access(emulator.base_url + "/redfish/v1/Systems/no-such-system"))
    assert type(info.value) is BMCError


@pytest.mark.parametrize(
    ("address", "user", "password", "field"),
    [
        ("", USER, PASSWORD, "pm_address"),
        ("127.0.0.1:8000", USER, PASSWORD, "pm_address"),
        ("ftp://127.0.0.1/redfish/v1", USER, PASSWORD, "pm_address"),
        ("http://127.0.0.1/some/other/path", USER, PASSWORD, "pm_address"),
        ("http://127.0.0.1/redfish/v1/Systems/1", USER, None, "pm_password"),
    ],
)
def test_validate_rejects(address: str, user: str | None, password: str | None, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        RedfishPower().validate(access(address, user=user, password=password))
    assert info.value.field == field


def test_validate_accepts_system_url() -> None:
    RedfishPower().validate(access("https://10.0.0.5/redfish/v1/Systems/System.Embedded.1"))


async def test_tls_verification(tls_emulator: Emulator) -> None:
    """A self-signed BMC: refused by default, trusted through ca_file, or accepted with verify_tls=False."""
    acc = access(tls_emulator.system_url("only"), user=None, password=None)
    ca_file = str(tls_emulator.log_path / "bmc.crt")
    strict, pinned, lax = (
        RedfishPower(RedfishSettings(timeout=5.0)),
        RedfishPower(RedfishSettings(timeout=5.0, ca_file=ca_file)),
        RedfishPower(RedfishSettings(timeout=5.0, verify_tls=False)),
    )
    try:
        with pytest.raises(BMCError, match=r"TLS failure") as info:
            await strict.get_power_state(acc)
        assert not isinstance(info.value, BMCUnreachable)
        assert await pinned.get_power_state(acc) is PowerState.OFF
        assert await lax.get_power_state(acc) is PowerState.OFF
    finally:
        for drv in (strict, pinned, lax):
            await drv.close()
