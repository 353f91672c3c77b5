"""Inputs found by trying to break bmd: each one a clear 4xx (or a named 507), never a 500.

The fuzz test (tests/test_fuzz_api.py) proves the class closed over every route; these pin the cases that
were found by hand, with the exact status and field."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import event, func, select

from bmd.context import AppContext
from bmd.db.models import BareMetalNode
from tests.conftest import node_body

ERROR_KEYS = {"error", "message", "field"}


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    assert set(body) == ERROR_KEYS, body
    return dict(body)


def strict_loads(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("[" * 100_000 + "]" * 100_000, "nests deeper"),
        ('{"a":' * 50_000 + "1" + "}" * 50_000, "nests deeper"),
        ('{"extra_specs": ' + '{"k": ' * 40 + "1" + "}" * 41, "nests deeper"),
        ('{"cpus": ' + "9" * 5000 + "}", "longer than"),
        ('{"cpus": 1e400}', "finite"),
        ('{"cpus": NaN}', "not a JSON number"),
        ('{"cpus": -Infinity}', "not a JSON number"),
        ('{"name": "\\ud800"}', "surrogate"),
        ('{"name": "a\\u0000b"}', "NUL"),
        ("\xff\xfe{}", "not UTF-8"),
        ("{", "not valid JSON"),
    ],
)
async def test_hostile_json_is_400_naming_body(
    client: TestClient[Any, Any], auth: dict[str, str], raw: str, says: str
) -> None:
    data = raw.encode("latin-1") if raw.startswith("\xff") else raw.encode()
    for path in ("/v1/nodes", "/v1/nodes/import"):
        resp = await client.post(path, data=data, headers={**auth, "Content-Type": "application/json"})
        body = await error_of(resp, 400)
        assert body["field"] == "body" and says in body["message"], body


async def test_brackets_inside_strings_do_not_count_as_nesting(
    client: TestClient[Any, Any], auth: dict[str, str]
) -> None:
    body = node_body(1, extra_specs={"note": "[[[[{{{{" * 20 + '\\"]]'})
    resp = await client.post("/v1/nodes", json=body, headers=auth)
    assert resp.status == 201, await resp.text()


async def test_huge_body_is_413(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    big = json.dumps({"nodes": [node_body(1, maintenance_reason="x" * 1000)] * 1500}).encode()
    assert len(big) > 1024**2
    body = await error_of(await client.post("/v1/nodes/import", data=big, headers=auth), 413)
    assert body["field"] == "body"

    async def chunks() -> Any:  # no Content-Length: the bound holds on the bytes read
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    body = await error_of(await client.post("/v1/nodes/import", data=chunks(), headers=auth), 413)


async def test_nan_never_becomes_a_capability(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    assert (await client.post("/v1/nodes", json=node_body(1), headers=auth)).status == 201
    for raw in ('{"value": NaN}', '{"value": Infinity}', '{"value": [1, -Infinity]}', '{"value": 1e999}'):
        resp = await client.put("/v1/nodes/node-1/capabilities/speed", data=raw, headers=auth)
        await error_of(resp, 400)
    resp = await client.put("/v1/nodes/node-1/capabilities/speed", json={"value": 2.5}, headers=auth)
    assert resp.status == 200
    listed = strict_loads(await (await client.get("/v1/nodes")).text())
    assert listed["nodes"][0]["extra_specs"] == {"speed": 2.5}


@pytest.mark.parametrize("ident", ["²", "\u0661", "1²", str(2**63), "9" * 40, "-1", "+1", " 1"])
async def test_ids_that_are_not_ascii_digits_or_too_big_are_404(
    client: TestClient[Any, Any], auth: dict[str, str], ident: str
) -> None:
    assert (await client.post("/v1/nodes", json=node_body(1), headers=auth)).status == 201
    for method, path in (
        ("GET", f"/v1/nodes/{ident}"),
        ("PATCH", f"/v1/nodes/{ident}"),
        ("GET", f"/v1/nodes/{ident}/interfaces"),
        ("DELETE", f"/v1/nodes/1/interfaces/{ident}"),
        ("DELETE", f"/v1/pxe_ips/{ident}"),
        ("GET", f"/v1/nodes/{ident}/states"),
    ):
        kwargs: dict[str, Any] = {"json": {"cpus": 4}} if method == "PATCH" else {}
        resp = await client.request(method, path, headers=auth, **kwargs)
        await error_of(resp, 404)
    assert (await client.get("/v1/nodes/1")).status == 200  # the plain spelling still works


@pytest.mark.parametrize("value", ["²", "\u0661", str(2**63), "9" * 40, "-1", "1.0", "", "0x10"])
@pytest.mark.parametrize("param", ["limit", "marker"])
@pytest.mark.parametrize("path", ["/v1/nodes", "/v1/instances", "/v1/pxe_ips", "/v1/nodes/1/interfaces"])
async def test_bad_limit_or_marker_is_400_naming_it(
    client: TestClient[Any, Any], auth: dict[str, str], path: str, param: str, value: str
) -> None:
    if path.startswith("/v1/nodes/1"):
        assert (await client.post("/v1/nodes", json=node_body(1), headers=auth)).status == 201
    body = await error_of(await client.get(path, params={param: value}), 400)
    assert body["field"] == param


async def test_non_ascii_authorization_is_401(client: TestClient[Any, Any]) -> None:
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(
            b"POST /v1/pxe_ips HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3\xa9\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), raw
    assert set(json.loads(payload.split(b"\r\n")[1] if b"chunked" in head else payload)) == ERROR_KEYS


@pytest.mark.parametrize(
    ("change", "field"),
    [({"name": "node-1"}, "name"), ({"prov_mac_address": "52:54:00:aa:00:01"}, "prov_mac_address")],
)
async def test_patch_to_another_nodes_unique_value_is_409(
    client: TestClient[Any, Any], auth: dict[str, str], ctx: AppContext, change: dict[str, str], field: str
) -> None:
    first = node_body(1, prov_mac_address="52:54:00:aa:00:01")
    assert (await client.post("/v1/nodes", json=first, headers=auth)).status == 201
    assert (await client.post("/v1/nodes", json=node_body(2), headers=auth)).status == 201
    body = await error_of(await client.patch("/v1/nodes/node-2", json=change, headers=auth), 409)
    assert body["field"] == field and "node 1" in body["message"], body
    shown = await (await client.get("/v1/nodes/node-2")).json()
    assert shown["name"] == "node-2" and shown["prov_mac_address"] is None


async def test_full_disk_is_507_naming_the_database(
    client: TestClient[Any, Any], auth: dict[str, str], ctx: AppContext
) -> None:
    assert (await client.post("/v1/nodes", json=node_body(1), headers=auth)).status == 201
    await ctx.engine.dispose()  # every later connection is opened with the cap below

    def cap_pages(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow by one page: SQLITE_FULL
        cursor.close()

    event.listen(ctx.engine.sync_engine, "connect", cap_pages)
    try:
        inventory = {"nodes": [node_body(i, maintenance_reason="r" * 900) for i in range(2, 400)]}
        body = await error_of(await client.post("/v1/nodes/import", json=inventory, headers=auth), 507)
        assert body["error"] == "storage_full"
        assert body["message"].startswith("database or disk is full") and "bmd.sqlite" in body["message"]
        async with ctx.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(BareMetalNode)) == 1  # nothing written
        assert (await client.get("/v1/nodes/node-1")).status == 200  # reads still work
    finally:
        event.remove(ctx.engine.sync_engine, "connect", cap_pages)


async def test_hostile_request_id_is_replaced_not_echoed(client: TestClient[Any, Any]) -> None:
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nX-Request-Id: \xff\xfe<x>\r\nConnection: close\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 200")
    rid = next(line.split(": ", 1)[1] for line in head.split("\r\n") if line.lower().startswith("x-request-id"))
    assert len(rid) == 32 and rid.isalnum()
    resp = await client.get("/healthz", headers={"X-Request-Id": "trace-42.a"})
    assert resp.headers["X-Request-Id"] == "trace-42.a"  # a well-formed id from a proxy is kept
