"""Health under load and idle connections: /healthz answers from the loops' state while big lists stream,
and the server closes a keep-alive connection left idle for ``api.keepalive_timeout``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from bmd.config import Settings
from bmd.context import AppContext
from bmd.health import DB_PROBE
from bmd.service import Endpoint, serve
from tests.conftest import make_settings, node_body

NODES = 3000
LISTERS = 64


async def test_healthz_answers_while_64_big_lists_stream(
    client: TestClient[Any, Any], auth: dict[str, str], ctx: AppContext
) -> None:
    inventory = {"nodes": [node_body(i) for i in range(NODES)]}
    resp = await client.post("/v1/nodes/import", data=json.dumps(inventory, separators=(",", ":")), headers=auth)
    assert resp.status == 201, await resp.text()
    assert await ctx.runner.run_pass(DB_PROBE)

    url = str(client.make_url("/v1/nodes"))

    async def list_all() -> list[int]:
        # the 64 clients are other processes in real life: here a thread with its own loop, not the server's
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.get(url, params={"limit": "100000"}) as resp:
                    body = await resp.json()
                    assert resp.status == 200 and body["next"] is not None
                    return len(body["nodes"])

            return await asyncio.gather(*(one() for _ in range(LISTERS)))

    stop = asyncio.Event()
    loops = asyncio.create_task(ctx.runner.run(stop))  # the probe loop keeps running, as in the service
    listers = asyncio.create_task(asyncio.to_thread(asyncio.run, list_all()))
    answered_in_flight = 0
    try:
        while not listers.done():
            resp = await client.get("/healthz")
            body = await resp.json()
            assert resp.status == 200 and body["checks"]["database"]["status"] == "ok", body
            answered_in_flight += not listers.done()
        sizes = await listers
    finally:
        stop.set()
        loops.cancel()
        await asyncio.gather(loops, listers, return_exceptions=True)
    assert sizes == [ctx.settings.api.max_page_size] * LISTERS  # limit=100000 clamped to one page
    assert answered_in_flight >= 1


async def test_idle_keepalive_connection_is_closed(tmp_path: Path, db_file: Path) -> None:
    settings: Settings = make_settings(tmp_path, api={"keepalive_timeout": 0.2})
    stop = asyncio.Event()
    result: dict[str, Any] = {}

    async def idle_client(_ctx: AppContext, endpoint: Endpoint) -> None:
        try:
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bmd\r\nConnection: keep-alive\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            result["status"] = head.split(b" ")[1]
            async with asyncio.timeout(10):  # the deadline: far above the 0.2 s keep-alive timeout
                result["after_idle"] = await reader.read()  # b"": the server closed the connection
            writer.close()
        finally:
            stop.set()

    async with asyncio.timeout(60):
        await serve(settings, stop, on_ready=idle_client)
    assert result == {"status": b"200", "after_idle": b""}
