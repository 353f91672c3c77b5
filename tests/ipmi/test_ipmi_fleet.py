"""Concurrency: 250 lab BMCs (two worker processes) read at once; every answer reaches its caller."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bmd.drivers.power.base import BootDevice, PowerState
from bmd.drivers.power.ipmi import IPMIPower, IPMIPowerSettings
from bmd.ipmi import BootTarget
from bmd.lab import Lab, LabBMCInfo, LabSpec
from tests.ipmi.helpers import FAST, access, ipmi_client, running_lab, target

pytestmark = pytest.mark.asyncio(loop_scope="module")

COUNT = 250
SELECTORS = (0, BootTarget.PXE, BootTarget.DISK, BootTarget.BIOS)


def expected(i: int) -> tuple[bool, int, bool]:
    """BMC i's state: power, boot selector, persistent — varied so that a misrouted answer shows."""
    return i % 2 == 1, SELECTORS[i // 2 % 4], i // 8 % 2 == 1


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet() -> AsyncIterator[Lab]:
    async with running_lab(LabSpec(count=COUNT, per_process=125, first_address="127.1.64.1")) as lab:
        groups: dict[tuple[bool, int, bool], list[str]] = {}
        for b in lab.bmcs:
            groups.setdefault(expected(b.index), []).append(b.name)
        assert len(groups) == 16  # neighbours differ: a misrouted answer cannot pass for the right one
        for (power, selector, persistent), names in groups.items():
            boot = {"selector": int(selector), "persistent": persistent, "valid": selector != 0}
            await lab.set_state(names, power=power, boot=boot)
        yield lab


async def test_fleet_has_two_workers_and_distinct_addresses(fleet: Lab) -> None:
    assert len(fleet._workers) == 2
    assert len({(b.host, b.port) for b in fleet.bmcs}) == COUNT
    assert len({b.port for b in fleet.bmcs}) == 1  # one port, many loopback addresses


async def test_concurrent_reads_reach_the_right_caller(fleet: Lab) -> None:
    settings = dataclasses.replace(FAST, timeout=10.0, attempt_timeout=1.0, max_in_flight=64)
    async with ipmi_client(settings) as client:

        async def read(b: LabBMCInfo) -> tuple[bool, int, bool]:
            power = await client.get_power_state(target(b))
            flags = await client.get_boot_flags(target(b))
            return power, int(flags.target), flags.persistent

        for _ in range(2):  # cold (session setup), then warm (cached sessions)
            results = await asyncio.gather(*(read(b) for b in fleet.bmcs))
            assert results == [expected(b.index) for b in fleet.bmcs]
        assert client.stats.sessions_opened == COUNT
        assert client.stats.dropped_datagrams == 0


async def test_concurrent_driver_reads_interleaved_with_changes(fleet: Lab) -> None:
    driver = IPMIPower(
        IPMIPowerSettings(
            client=dataclasses.replace(FAST, timeout=10.0, attempt_timeout=1.0),
            min_command_interval=0.0,
            confirm_interval=0.05,
        )
    )
    flip = fleet.bmcs[:40]
    try:
        changes = asyncio.gather(*(driver.set_power_state(access(b), PowerState.ON) for b in flip))
        reads = asyncio.gather(*(driver.get_boot_device(access(b)) for b in fleet.bmcs[40:]))
        _, infos = await asyncio.gather(changes, reads)
        devices = {1: BootDevice.PXE, 2: BootDevice.DISK, 6: BootDevice.BIOS}
        for b, info in zip(fleet.bmcs[40:], infos, strict=True):
            _, selector, persistent = expected(b.index)
            device = devices.get(selector)
            assert (info.device, info.persistent) == (device, persistent and device is not None)
        states = await fleet.states([b.name for b in flip])
        assert all(states[b.name]["power"] for b in flip)
    finally:
        await driver.close()
