"""Every list pages by keyset: ``limit`` clamped to ``api.max_page_size``, ``next`` walks every row exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bmd.cli import main
from bmd.config import Settings
from bmd.context import AppContext
from bmd.db.models import Instance
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
