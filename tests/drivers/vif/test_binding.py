"""VIF plugging with the seed's semantics, over the generic and openflow drivers (real HTTP controller)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from bmd.context import AppContext
from bmd.db.models import Interface
from bmd.drivers.vif.binding import NoFreeInterface, plug_vifs, unplug_vifs
from bmd.drivers.vif.fake_controller import FakeVifController, serve
from bmd.drivers.vif.generic import GenericVif
from bmd.drivers.vif.openflow import OpenFlowVif
from bmd.drivers.vif.vifinfo import VifConflict
from bmd.errors import Conflict, DriverError
from tests.conftest import make_settings, node_body


def net(vif: str, network: str = "net-a", vlan: int | None = 100) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({"id": network, "vlan": vlan}, {"vif_uuid": vif})


async def make_node(client: Any, auth: dict[str, str], i: int, nics: int) -> int:
    ifaces = [
        {"address": f"52:54:00:{i:02x}:00:{n:02x}", "datapath_id": f"0x{i:x}", "port_no": 10 + n} for n in range(nics)
    ]
    resp = await client.post("/v1/nodes", json=node_body(i, interfaces=ifaces), headers=auth)
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"])


async def vifs(ctx: AppContext, node_id: int) -> list[str | None]:
    async with ctx.sessionmaker() as session:
        rows = await session.execute(
            select(Interface.vif_uuid).where(Interface.bm_node_id == node_id).order_by(Interface.id)
        )
        return list(rows.scalars())


async def test_plug_clears_then_binds_first_free(client, auth, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    node = await make_node(client, auth, 1, 3)
    driver = GenericVif()
    await plug_vifs(ctx.sessionmaker, driver, node, [net("vif-a"), net("vif-b")])
    assert await vifs(ctx, node) == ["vif-a", "vif-b", None]
    # plugging again first clears every interface: the old VIFs do not linger
    await plug_vifs(ctx.sessionmaker, driver, node, [net("vif-c")])
    assert await vifs(ctx, node) == ["vif-c", None, None]
    await unplug_vifs(ctx.sessionmaker, driver, node)
    assert await vifs(ctx, node) == [None, None, None]
    await unplug_vifs(ctx.sessionmaker, driver, node)  # idempotent


async def test_no_free_interface_binds_nothing(client, auth, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    node = await make_node(client, auth, 1, 1)
    with pytest.raises(NoFreeInterface, match="no free interface"):
        await plug_vifs(ctx.sessionmaker, GenericVif(), node, [net("vif-a"), net("vif-b")])
    assert await vifs(ctx, node) == [None]


async def test_vif_bound_elsewhere_is_a_conflict(client, auth, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    a, b = await make_node(client, auth, 1, 1), await make_node(client, auth, 2, 1)
    await plug_vifs(ctx.sessionmaker, GenericVif(), a, [net("vif-a")])
    with pytest.raises(Conflict):
        await plug_vifs(ctx.sessionmaker, GenericVif(), b, [net("vif-a")])
    assert await vifs(ctx, b) == [None] and await vifs(ctx, a) == ["vif-a"]


@pytest.fixture
async def controller() -> AsyncIterator[tuple[FakeVifController, str]]:
    fake = FakeVifController()
    async with serve(fake) as url:
        yield fake, url


def openflow(tmp_path: Any, url: str) -> OpenFlowVif:
    settings = make_settings(
        tmp_path, network={"controller_url": url, "controller_timeout": 1.0, "controller_retries": 1}
    )
    return OpenFlowVif.from_settings(settings)


async def test_openflow_maps_ports_at_the_controller(client, auth, ctx, controller, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake, url = controller
    node = await make_node(client, auth, 3, 2)
    driver = openflow(tmp_path, url)
    try:
        await plug_vifs(ctx.sessionmaker, driver, node, [net("vif-a"), net("vif-b")])
        assert {k: (v["datapath_id"], v["port_no"]) for k, v in fake.table.items()} == {
            "vif-a": ("0x3", 10),
            "vif-b": ("0x3", 11),
        }
        assert ("POST", "/vifinfo") in fake.requests and ("GET", "/vifinfo/vif-a") in fake.requests
        await unplug_vifs(ctx.sessionmaker, driver, node)
        assert fake.table == {} and await vifs(ctx, node) == [None, None]
    finally:
        await driver.close()


async def test_openflow_conflict_binds_nothing(client, auth, ctx, controller, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake, url = controller
    node = await make_node(client, auth, 4, 2)
    fake.table["vif-b"] = {"vif_uuid": "vif-b", "datapath_id": "0x99", "port_no": 1}
    driver = openflow(tmp_path, url)
    try:
        with pytest.raises(VifConflict, match="vif_uuid vif-b exists"):
            await plug_vifs(ctx.sessionmaker, driver, node, [net("vif-a"), net("vif-b")])
    finally:
        await driver.close()
    assert await vifs(ctx, node) == [None, None]
    assert set(fake.table) == {"vif-b"}  # vif-a's mapping was undone


async def test_openflow_controller_down_is_a_clean_failure(client, auth, ctx, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    node = await make_node(client, auth, 5, 1)
    driver = openflow(tmp_path, f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(DriverError, match=f"127.0.0.1:{port}"):
            await plug_vifs(ctx.sessionmaker, driver, node, [net("vif-a")])
    finally:
        await driver.close()
    assert await vifs(ctx, node) == [None]
