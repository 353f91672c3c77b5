"""Every list pages by keyset: ``limit`` clamped to ``api.max_page_size``, ``next`` walks every row exactly once."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import update

from bmd.api.app import create_app
from bmd.api.capabilities import INDEX
from bmd.cli import main
from bmd.config import Settings
from bmd.context import AppContext
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, Instance, utcnow
from bmd.service import open_context
from bmd.tasks.report_driver_status import TOPIC
from tests.conftest import make_settings, node_body

PAGE = 3
ROWS = 3 * PAGE + 1  # pages of 3, 3, 3 and 1


@pytest.fixture
def settings(tmp_path: Path, db_file: Path) -> Settings:
    return make_settings(tmp_path, api={"max_page_size": PAGE})


async def walk(client: TestClient[Any, Any], path: str, items: str, key: str, **params: Any) -> list[Any]:
    """Follow ``next`` from the first page to the last; every page holds at most PAGE rows."""
    seen: list[Any] = []
    marker = None
    for _ in range(ROWS + 2):
        query = {**params, **({"marker": str(marker)} if marker is not None else {})}
        resp = await client.get(path, params=query)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert len(body[items]) <= PAGE
        seen.extend(row[key] for row in body[items])
        marker = body["next"]
        if marker is None:
            return seen
    raise AssertionError(f"{path}: next never became null")


async def enroll(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    body = node_body(0)
    body["interfaces"] = [{"address": f"52:54:00:aa:00:{i:02x}"} for i in range(ROWS)]
    assert (await client.post("/v1/nodes", json=body, headers=auth)).status == 201
    nodes = {"nodes": [node_body(i) for i in range(1, ROWS)]}
    assert (await client.post("/v1/nodes/import", json=nodes, headers=auth)).status == 201


async def test_nodes_and_interfaces_page(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    await enroll(client, auth)
    ids = await walk(client, "/v1/nodes", "nodes", "id", limit="100000")
    assert ids == sorted(set(ids)) and len(ids) == ROWS
    assert await walk(client, "/v1/nodes", "nodes", "id", limit="2") == ids  # a smaller limit walks the same rows
    filtered = await walk(client, "/v1/nodes", "nodes", "id", maintenance="false")
    assert filtered == ids
    macs = await walk(client, "/v1/nodes/node-0/interfaces", "interfaces", "address")
    assert len(macs) == len(set(macs)) == ROWS
    first = await (await client.get("/v1/nodes", params={"limit": "100000"})).json()
    assert len(first["nodes"]) == PAGE and first["next"] == first["nodes"][-1]["id"]


async def test_pxe_ips_page(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    for i in range(ROWS):
        body = {"address": f"10.9.0.{i + 10}", "server_address": f"10.8.0.{i + 10}"}
        assert (await client.post("/v1/pxe_ips", json=body, headers=auth)).status == 201
    addresses = await walk(client, "/v1/pxe_ips", "pxe_ips", "address", limit="50")
    assert sorted(addresses) == sorted(f"10.9.0.{i + 10}" for i in range(ROWS))


async def test_flavors_page_by_name(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    for i in range(ROWS):
        body = {"name": f"bm.f{i:02d}", "ram": 1024, "vcpus": 1, "disk": 10}
        assert (await client.post("/v1/flavors", json=body, headers=auth)).status == 201
    names = await walk(client, "/v1/flavors", "flavors", "name")
    assert names == [f"bm.f{i:02d}" for i in range(ROWS)]


async def test_instances_page_and_skip_deleted(client: TestClient[Any, Any], ctx: AppContext) -> None:
    uuids = [str(uuid.uuid4()) for _ in range(ROWS)]
    async with ctx.sessionmaker.begin() as session:
        for index, u in enumerate(uuids):
            state = "deleted" if index % 4 == 3 else "building"
            session.add(Instance(uuid=u, vm_state=state, image_properties={}, hints={}, deploy_info={}))
    live = [u for i, u in enumerate(uuids) if i % 4 != 3]
    assert await walk(client, "/v1/instances", "instances", "uuid") == live
    assert await walk(client, "/v1/instances", "instances", "uuid", deleted="true") == uuids


async def test_capabilities_page_by_node(client: TestClient[Any, Any], auth: dict[str, str], ctx: AppContext) -> None:
    await enroll(client, auth)
    for name in ("update_available_resource", "report_driver_status"):
        assert await ctx.runner.run_pass(name)
    nodes = await walk(client, "/v1/capabilities", "capabilities", "node")
    assert len(nodes) == len(set(nodes)) == ROWS and nodes == sorted(nodes)


async def test_cli_lists_follow_next_through_every_page(
    client: TestClient[Any, Any], auth: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    await enroll(client, auth)
    base = ["--url", str(client.make_url("")).rstrip("/")]
    code = await asyncio.to_thread(main, [*base, "node", "list", "--json"])  # the older spelling: every field
    out, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(n["name"] for n in json.loads(out)) == sorted(f"node-{i}" for i in range(ROWS))
    assert "pm_address" in json.loads(out)[0]
    code = await asyncio.to_thread(main, [*base, "node", "list", "-f", "value", "-c", "name", "--sort", "id:desc"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.split() == [f"node-{i}" for i in reversed(range(ROWS))]  # every page, sorted here


async def test_head_of_a_list_sends_no_body(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    """A HEAD answer with body bytes would be read as the next response on a keep-alive connection."""
    await enroll(client, auth)
    for path in ("/v1/nodes", "/v1/pxe_ips", "/v1/flavors", "/v1/instances", "/v1/nodes/node-0/interfaces"):
        head = await client.head(path)
        assert head.status == 200 and await head.read() == b""
        follow = await client.get(path)  # same pooled connection
        assert follow.status == 200 and "next" in await follow.json()


@pytest.fixture
async def any_db(tmp_path: Path, db_url: str) -> AsyncIterator[AppContext]:
    """A context on SQLite or on PostgreSQL (whose database the run shares: a test reads only the nodes of
    its own service_host, unique per test)."""
    settings = make_settings(
        tmp_path, db_url, service={"host": f"paging-{uuid.uuid4().hex[:8]}"}, api={"max_page_size": PAGE}
    )
    engine = make_engine(settings.database)
    try:
        await upgrade(engine)  # a no-op once migrated
    finally:
        await engine.dispose()
    async with open_context(settings) as context:
        yield context


async def test_a_listed_node_is_byte_for_byte_its_own_answer(any_db: AppContext) -> None:
    """The list reads plain rows of the view's columns (bmd.db.nodes.list_nodes), a node's own answer its ORM
    object: every field, its type and its text agree (timestamps with and without microseconds, the password's
    mask or null, JSON columns, booleans), in the same order."""
    ctx = any_db
    host = ctx.settings.service.host
    async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
        auth = {"Authorization": f"Bearer {ctx.api_token}"}
        tag = uuid.uuid4().hex[:6]
        bodies = [
            node_body(
                i,
                name=f"{tag}-{i}",
                uuid=str(uuid.uuid4()),
                interfaces=[{"address": f"52:54:0{i}:{tag[:2]}:{tag[2:4]}:{tag[4:]}"}],
            )
            for i in range(ROWS)
        ]
        bodies[1] |= {"pm_password": None, "extra_specs": {"gpu": {"model": "a100", "count": 2}, "rack": "r1 ünï"}}
        bodies[2] |= {"name": None, "maintenance": True, "maintenance_reason": "disk swap", "boot_mode": "uefi"}
        bodies[3] |= {"root_device": {"size": 100, "model": "SSD 860"}, "prov_vlan_id": 12, "terminal_port": 8023}
        resp = await client.post("/v1/nodes/import", json={"nodes": bodies}, headers=auth)
        assert resp.status == 201, await resp.text()
        ids = [n["id"] for n in (await resp.json())["nodes"]]
        whole = dt.datetime(2026, 12, 2, 6, 27, 42, tzinfo=dt.UTC)  # str() writes no microseconds for it
        async with ctx.sessionmaker.begin() as session:
            await session.execute(
                update(BareMetalNode)
                .where(BareMetalNode.id == ids[0])
                .values(last_power_check=whole, power_state="power on", deploy_steps=[{"step": "write", "ok": True}])
            )
            await session.execute(
                update(BareMetalNode)
                .where(BareMetalNode.id == ids[4])
                .values(deploy_deadline=whole + dt.timedelta(microseconds=1), inspected_at=utcnow(), last_error="x\ny")
            )
        shown = []
        for node_id in ids:
            answer = await (await client.get(f"/v1/nodes/{node_id}")).json()
            del answer["interfaces"]  # in a node's own answer only
            shown.append(answer)
        expected = ",".join(json.dumps(n) for n in shown)
        listed = b""
        for marker in (None, *ids[PAGE - 1 :: PAGE]):
            params = {"service_host": host, **({"marker": str(marker)} if marker is not None else {})}
            body = await (await client.get("/v1/nodes", params=params)).read()
            listed += body.split(b'{"nodes": [', 1)[1].rsplit(b'], "next": ', 1)[0] + b","
        assert listed.decode().rstrip(",") == expected


async def test_capabilities_pages_follow_a_new_publication(
    client: TestClient[Any, Any], auth: dict[str, str], ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sorted index a page is cut from is the published list's: a new list is paged at once, and the index
    lets go of a list within its hold time after its last use."""
    await enroll(client, auth)
    assert await ctx.runner.run_pass("report_driver_status")
    first = await walk(client, "/v1/capabilities", "capabilities", "node")
    published = ctx.bus.latest(TOPIC)
    ctx.bus.publish(TOPIC, [{**s, "node": f"x{s['node']}"} for s in published[1:]])  # one gone, all renamed
    assert await walk(client, "/v1/capabilities", "capabilities", "node") == sorted(f"x{n}" for n in first[1:])
    index = client.app[INDEX]
    monkeypatch.setattr(index, "HOLD_SECONDS", 0.0)
    assert (await client.get("/v1/capabilities")).status == 200
    deadline = asyncio.get_running_loop().time() + 5
    while index._of is not None and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - a timer
        await asyncio.sleep(0.01)
    assert index._of is None


async def test_a_capabilities_page_is_the_json_of_its_entries(
    client: TestClient[Any, Any], auth: dict[str, str], ctx: AppContext
) -> None:
    """The page is encoded a few entries at a time (the loop stays free): the bytes are json.dumps's of it."""
    unpublished = await (await client.get("/v1/capabilities")).read()
    assert unpublished == json.dumps({"capabilities": [], "published": False, "next": None}).encode()
    await enroll(client, auth)
    assert await ctx.runner.run_pass("report_driver_status")
    ordered = sorted(ctx.bus.latest(TOPIC), key=lambda s: s["node"])
    for start in range(0, ROWS, PAGE):
        params = {"marker": ordered[start - 1]["node"]} if start else {}
        body = await (await client.get("/v1/capabilities", params=params)).read()
        page = ordered[start : start + PAGE]
        last = start + PAGE >= ROWS
        expected = {"capabilities": page, "published": True, "next": None if last else page[-1]["node"]}
        assert body == json.dumps(expected).encode()
