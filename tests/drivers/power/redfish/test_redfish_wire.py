"""RedfishPower against wire details the emulator does not exercise, and against dead endpoints.

The peer below is a loopback aiohttp server speaking Redfish's JSON shapes (ActionInfo-advertised reset
types, transitional power states, DMTF error bodies with ExtendedInfo); it records what it receives.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bmd.drivers.power.base import BMCAccess, BootDevice, PowerState
from bmd.drivers.power.redfish import RedfishPower, RedfishSettings
from bmd.errors import BMCError, BMCTimeout, BMCUnreachable, UnsupportedOperation

SYSTEM = "/redfish/v1/Systems/System.Embedded.1"


class Peer:
    def __init__(self) -> None:
        self.power_state = "On"
        self.reset_types: list[str] = ["On", "ForceOff", "PowerCycle"]
        self.received: list[tuple[str, Any]] = []
        self.fail_with: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(SYSTEM, self.system)
        app.router.add_patch(SYSTEM, self.patch)
        app.router.add_get(SYSTEM + "/ResetActionInfo", self.action_info)
        app.router.add_post(SYSTEM + "/Actions/ComputerSystem.Reset", self.reset)
        return app

    async def system(self, request: web.Request) -> web.Response:
        if self.fail_with is not None:
            body = {
                "error": {
                    "code": "Base.1.8.GeneralError",
                    "message": "A general error has occurred.",
                    "@Message.ExtendedInfo": [{"MessageId": "IDRAC.2.8.SYS446", "Message": "BMC is busy."}],
                }
            }
            return web.json_response(body, status=self.fail_with)
        return web.json_response(
            {
                "@odata.id": SYSTEM,
                "Id": "System.Embedded.1",
                "PowerState": self.power_state,
                "Boot": {"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Pxe"},
                "Actions": {
                    "#ComputerSystem.Reset": {
                        "target": SYSTEM + "/Actions/ComputerSystem.Reset",
                        "@Redfish.ActionInfo": SYSTEM + "/ResetActionInfo",
                    }
                },
            }
        )

    async def action_info(self, request: web.Request) -> web.Response:
        params = [{"Name": "ResetType", "Required": True, "AllowableValues": self.reset_types}]
        return web.json_response({"Id": "ResetActionInfo", "Parameters": params})

    async def reset(self, request: web.Request) -> web.Response:
        self.received.append(("reset", await request.json()))
        return web.Response(status=204)

    async def patch(self, request: web.Request) -> web.Response:
        self.received.append(("patch", await request.json()))
        return web.Response(status=204)


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, str]]:
    p = Peer()
    server = TestServer(p.app(), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield p, str(server.make_url(SYSTEM))
    finally:
        await server.close()


@pytest.fixture
async def driver() -> AsyncIterator[RedfishPower]:
    drv = RedfishPower(RedfishSettings(timeout=2.0, poll_interval=0.05))
    yield drv
    await drv.close()


def acc(url: str) -> BMCAccess:
    return BMCAccess(node_id=7, address=url, username="root", password="calvin")


async def test_reset_type_from_action_info(driver: RedfishPower, peer: tuple[Peer, str]) -> None:
    p, url = peer
    await driver.reboot(acc(url))  # no ForceRestart advertised: PowerCycle
    p.power_state = "Off"
    await driver.set_power_state(acc(url), PowerState.ON)
    assert p.received == [("reset", {"ResetType": "PowerCycle"}), ("reset", {"ResetType": "On"})]


async def test_reset_type_not_advertised(driver: RedfishPower, peer: tuple[Peer, str]) -> None:
    p, url = peer
    p.reset_types = ["On", "ForceOff"]
    with pytest.raises(UnsupportedOperation, match=r"allows none of ResetType ForceRestart, PowerCycle"):
        await driver.reboot(acc(url))
    assert p.received == []


async def test_boot_override_once_and_continuous_on_the_wire(driver: RedfishPower, peer: tuple[Peer, str]) -> None:
    p, url = peer
    await driver.set_boot_device(acc(url), BootDevice.PXE)
    await driver.set_boot_device(acc(url), BootDevice.BIOS, persistent=True)
    assert [body for _, body in p.received] == [
        {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}},
        {"Boot": {"BootSourceOverrideTarget": "BiosSetup", "BootSourceOverrideEnabled": "Continuous"}},
    ]
    info = await driver.get_boot_device(acc(url))
    assert (info.device, info.persistent) == (BootDevice.PXE, False)


async def test_transitional_state_reads_as_target_but_is_not_arrival(
    driver: RedfishPower, peer: tuple[Peer, str]
) -> None:
    p, url = peer
    p.power_state = "PoweringOn"
    assert await driver.get_power_state(acc(url)) is PowerState.ON
    with pytest.raises(BMCTimeout, match=r"last PowerState PoweringOn"):
        await driver.wait_for_power_state(acc(url), PowerState.ON, 0.2)
    p.power_state = "Paused"
    assert await driver.get_power_state(acc(url)) is PowerState.ERROR


async def test_error_body_messages(driver: RedfishPower, peer: tuple[Peer, str]) -> None:
    p, url = peer
    p.fail_with = 500
    with pytest.raises(BMCError, match=r"HTTP 500\): A general error has occurred.; BMC is busy.$"):
        await driver.get_power_state(acc(url))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed on exit: connecting is refused


async def test_refused_is_unreachable(driver: RedfishPower) -> None:
    url = f"http://127.0.0.1:{_closed_port()}{SYSTEM}"
    with pytest.raises(BMCUnreachable, match=r"unreachable"):
        await driver.get_power_state(acc(url))


async def test_silent_bmc_times_out_within_the_timeout() -> None:
    """A peer that accepts the connection and never answers: BMCTimeout after ~timeout, not later."""
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    drv = RedfishPower(RedfishSettings(timeout=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(BMCTimeout, match=r"no answer within 0.5s"):
            await drv.get_power_state(acc(f"http://127.0.0.1:{port}{SYSTEM}"))
        elapsed = time.monotonic() - started
        assert 0.4 < elapsed < 1.5
    finally:
        release.set()
        await drv.close()
        server.close()
        await server.wait_closed()
