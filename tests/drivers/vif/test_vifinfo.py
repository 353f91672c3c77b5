"""VifInfoClient against the fake controller over real HTTP on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bmd.drivers.vif.fake_controller import FakeVifController, serve
from bmd.drivers.vif.vifinfo import (
    VifConflict,
    VifInfoClient,
    VifInfoError,
    VifInfoSettings,
    VifInfoUnavailable,
    VifMapping,
)
from bmd.errors import Conflict, InvalidInput

VIF = "3f1c2d4e-0000-4000-8000-00000000beef"
DPID = "000000000000000a"


@pytest.fixture
async def controller() -> AsyncIterator[tuple[FakeVifController, str]]:
    fake = FakeVifController()
    async with serve(fake) as url:
        yield fake, url


@pytest.fixture
async def client(controller: tuple[FakeVifController, str]) -> AsyncIterator[VifInfoClient]:
    async with VifInfoClient(VifInfoSettings(url=controller[1], timeout=2.0, retries=2, retry_backoff=0)) as c:
        yield c


async def test_absent_is_created(client: VifInfoClient, controller: tuple[FakeVifController, str]) -> None:
    fake, _ = controller
    assert await client.get(VIF) is None
    fake.requests.clear()
    mapping = await client.ensure(VIF, DPID, 3)
    assert mapping == VifMapping(VIF, DPID, 3)
    assert fake.requests == [("GET", f"/vifinfo/{VIF}"), ("POST", "/vifinfo")]
    assert fake.table[VIF] == {"vif_uuid": VIF, "datapath_id": DPID, "port_no": 3}
    assert await client.get(VIF) == mapping


@pytest.mark.parametrize("dpid", [DPID, "0xa", "0x000000000000000A", "a"])
async def test_same_mapping_is_a_no_op(
    client: VifInfoClient, controller: tuple[FakeVifController, str], dpid: str
) -> None:
    fake, _ = controller
    await client.ensure(VIF, DPID, 3)
    fake.requests.clear()
    assert await client.ensure(VIF, dpid, 3) == VifMapping(VIF, DPID, 3)
    assert fake.requests == [("GET", f"/vifinfo/{VIF}")]


@pytest.mark.parametrize(("dpid", "port_no"), [(DPID, 4), ("000000000000000b", 3)])
async def test_mapped_elsewhere_is_a_conflict(
    client: VifInfoClient, controller: tuple[FakeVifController, str], dpid: str, port_no: int
) -> None:
    fake, _ = controller
    await client.ensure(VIF, DPID, 3)
    fake.requests.clear()
    with pytest.raises(VifConflict) as info:
        await client.ensure(VIF, dpid, port_no)
    assert str(info.value) == f"vif_uuid {VIF} exists"
    assert isinstance(info.value, Conflict)
    assert fake.requests == [("GET", f"/vifinfo/{VIF}")]
    assert fake.table[VIF]["port_no"] == 3 and fake.table[VIF]["datapath_id"] == DPID


async def test_delete_is_idempotent(client: VifInfoClient, controller: tuple[FakeVifController, str]) -> None:
    fake, _ = controller
    await client.ensure(VIF, DPID, 3)
    await client.delete(VIF)
    assert VIF not in fake.table
    await client.delete(VIF)  # 404: already gone, fine
    assert fake.requests[-2:] == [("DELETE", f"/vifinfo/{VIF}"), ("DELETE", f"/vifinfo/{VIF}")]


async def test_5xx_is_retried_then_succeeds(client: VifInfoClient, controller: tuple[FakeVifController, str]) -> None:
    fake, _ = controller
    fake.fail_next = [503, 500]
    assert await client.get(VIF) is None
    assert fake.requests == [("GET", f"/vifinfo/{VIF}")] * 3


async def test_5xx_retries_are_bounded(client: VifInfoClient, controller: tuple[FakeVifController, str]) -> None:
    fake, url = controller
    fake.fail_next = [503] * 10
    with pytest.raises(
        VifInfoUnavailable, match=rf"vifinfo controller at {url} failed GET .* 3 attempt\(s\): HTTP 503"
    ):
        await client.ensure(VIF, DPID, 3)
    assert len(fake.requests) == 3  # 1 + retries=2, and no POST
    assert fake.table == {}


async def test_4xx_is_not_retried(client: VifInfoClient, controller: tuple[FakeVifController, str]) -> None:
    fake, _ = controller
    fake.fail_next = [400]
    with pytest.raises(VifInfoError, match=r"HTTP 400") as info:
        await client.get(VIF)
    assert not isinstance(info.value, VifInfoUnavailable)
    assert len(fake.requests) == 1


async def test_controller_down_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    async with VifInfoClient(VifInfoSettings(url=url, timeout=2.0, retries=1, retry_backoff=0)) as client:
        with pytest.raises(VifInfoUnavailable) as info:
            await client.ensure(VIF, DPID, 3)
    message = str(info.value)
    assert f"vifinfo controller at {url}" in message and "unreachable" in message and "2 attempt(s)" in message


async def test_silent_controller_times_out_per_attempt() -> None:
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        settings = VifInfoSettings(url=url, timeout=0.3, retries=1, retry_backoff=0)
        async with VifInfoClient(settings) as client:
            started = time.monotonic()
            with pytest.raises(VifInfoUnavailable, match=r"no answer within 0.3s"):
                await client.delete(VIF)
            assert 0.5 < time.monotonic() - started < 2.0  # two bounded attempts
    finally:
        release.set()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "127.0.0.1:8090"}, "vifinfo.url"),
        ({"url": "http://127.0.0.1:8090", "timeout": 0}, "vifinfo.timeout"),
        ({"url": "http://127.0.0.1:8090", "retries": -1}, "vifinfo.retries"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        VifInfoSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


async def test_fake_controller_validates_posts(controller: tuple[FakeVifController, str]) -> None:
    """The fake must refuse what a real controller refuses, or client tests would prove nothing."""
    _, url = controller
    async with aiohttp.ClientSession() as session:
        for body in (
            {"vif_uuid": VIF, "datapath_id": DPID},
            {"vif_uuid": "", "datapath_id": DPID, "port_no": 1},
        ):
            async with session.post(url + "/vifinfo", json=body) as resp:
                assert resp.status == 400
        good = {"vif_uuid": VIF, "datapath_id": DPID, "port_no": 1}
        async with session.post(url + "/vifinfo", json=good) as resp:
            assert resp.status == 201
        async with session.post(url + "/vifinfo", json=good) as resp:
            assert resp.status == 409
            assert (await resp.json())["error"] == f"vif_uuid {VIF} exists"
