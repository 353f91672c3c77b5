"""``GET /v1/events/stream`` over real HTTP: a node change arrives as an event; a stream whose queue overflowed
says ``resync``; a client that stops reading is closed within the write timeout while the others (and the
API) go on; heartbeats; the cap on streams; every stream ends at once when bmd stops. Also the dashboard's
static files (``GET /``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bmd.api.node_stream import PATH, STREAMS, NodeStreams
from bmd.context import AppContext
from bmd.node_events import TOPIC, NodeView
from bmd.service import Endpoint, serve
from tests.conftest import make_settings, node_body


class Events:
    """The events of one stream as (event, data) pairs; comments as ("comment", text)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, within: float = 5.0) -> tuple[str, Any]:
        block = await asyncio.wait_for(self.resp.content.readuntil(b"\n\n"), within)
        lines = block.decode().strip("\n").split("\n")
        if lines[0].startswith(":"):
            return "comment", lines[0][1:].strip()
        fields = dict(line.split(": ", 1) for line in lines)
        return fields["event"], json.loads(fields["data"])

    async def until(self, event: str, within: float = 5.0) -> Any:
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while True:
            got, data = await self.next(max(0.01, end - loop.time()))
            if got == event:
                return data


@contextlib.asynccontextmanager
async def open_stream(client: TestClient[Any, Any]) -> AsyncIterator[Events]:
    async with client.get(PATH) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = Events(resp)
        assert (await events.next())[0] == "hello"
        yield events


def streams_of(client: TestClient[Any, Any]) -> NodeStreams:
    return client.server.app[STREAMS]


async def until(what: str, check: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not check():
        if loop.time() > end:
            raise AssertionError(f"{what} did not happen within {within} s")
        await asyncio.sleep(0.02)


async def test_a_node_change_arrives_as_its_newest_view(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    created = await (await client.post("/v1/nodes", json=node_body(1), headers=auth)).json()
    async with open_stream(client) as events:
        resp = await client.put(f"/v1/nodes/{created['id']}/maintenance", json={"reason": "disk swap"}, headers=auth)
        assert resp.status == 200, await resp.text()
        data = await events.until("nodes")
        [view] = data["nodes"]
        assert view["id"] == created["id"] and view["name"] == "node-1" and view["maintenance"] is True
        first = view["version"]
        resp = await client.put(f"/v1/nodes/{created['id']}/states/power", json={"target": "power on"}, headers=auth)
        assert resp.status == 200, await resp.text()
        [view] = (await events.until("nodes"))["nodes"]
        assert view["power_state"] == "power on" and view["version"] > first
        assert set(view) == {
            *("id", "version", "uuid", "name", "power_state", "provision_state", "maintenance"),
            *("instance_uuid", "power_failures", "deleted"),
        }  # as documented: no secret, nothing of the scheduler's own (its capability fingerprint)


async def test_a_stream_is_no_request_latency(client: TestClient[Any, Any]) -> None:
    """Its life is how long a dashboard stayed open: kept out of the API latency histogram (here it ends
    from the server's side, as at shutdown, so the handler returns its response)."""
    async with open_stream(client) as events:
        streams_of(client).close_all()
        assert await asyncio.wait_for(events.resp.content.read(), 5) == b""
    await until("the stream released", lambda: not streams_of(client).open)
    await client.get("/v1/nodes")
    text = await (await client.get("/metrics")).text()
    assert 'route="/v1/nodes"' in text and PATH not in text


async def test_an_overflowed_queue_says_resync(client: TestClient[Any, Any], ctx: AppContext) -> None:
    """More batches than the queue holds, published while the stream waits: the oldest are dropped and the
    client is told to reload rather than given a partial picture; later changes arrive as views again."""
    size = streams_of(client).queue_size
    async with open_stream(client) as events:
        await until("the stream subscribed", lambda: ctx.bus.stats().get(TOPIC, {}).get("subscribers", 0) >= 1)
        for version in range(1, size * 3 + 1):  # no await between: the stream cannot take any meanwhile
            ctx.bus.publish(TOPIC, [NodeView(node_id=7, version=version)])
        assert await events.until("resync") == {"dropped": size * 2}
        ctx.bus.publish(TOPIC, [NodeView(node_id=7, version=1000), NodeView(node_id=3, version=5)])
        ctx.bus.publish(TOPIC, [NodeView(node_id=7, version=999)])
        data = await events.until("nodes")
        assert [(v["id"], v["version"]) for v in data["nodes"]] == [(3, 5), (7, 1000)]  # merged, newest kept


async def test_heartbeats_and_the_cap_on_streams(client: TestClient[Any, Any]) -> None:
    streams = streams_of(client)
    streams.heartbeat, streams.max_clients = 0.2, 1
    async with open_stream(client) as events:
        assert await events.next() == ("comment", "keepalive")
        async with client.get(PATH) as second:
            assert second.status == 503
            assert (await second.json())["error"] == "unavailable"
    await until("the stream released", lambda: not streams.open)
    async with client.head(PATH) as head:
        assert head.status == 200 and head.headers["Content-Type"].startswith("text/event-stream")


def _big_batch(n: int, start: int) -> list[NodeView]:
    return [NodeView(node_id=i, version=start, name="n" * 200) for i in range(n)]


async def test_a_client_that_stops_reading_is_closed_and_holds_nothing_up(
    client: TestClient[Any, Any], ctx: AppContext
) -> None:
    """A raw socket that asks for the stream and never reads: its writes fill the socket buffers, the next one
    does not finish within ``write_timeout`` and the stream is closed; meanwhile the publisher never waited,
    a reading client got every event and the API answered."""
    streams = streams_of(client)
    streams.write_timeout = 0.5
    host, port = client.server.host, client.server.port
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(stuck, (host, port))
        await loop.sock_sendall(stuck, f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        async with open_stream(client) as events:
            await until("both streams open", lambda: len(streams.open) == 2)
            start = time.perf_counter()
            published, longest = 0, 0.0
            while streams.slow_closed == 0:
                assert time.perf_counter() - start < 30, "the stuck client was never closed"
                t0 = time.perf_counter()
                ctx.bus.publish(TOPIC, _big_batch(500, published))
                longest = max(longest, time.perf_counter() - t0)
                published += 1
                assert len((await events.until("nodes"))["nodes"]) == 500  # the reader that reads gets each one
            closed_after = time.perf_counter() - start
            await until("the stuck stream released", lambda: len(streams.open) == 1)
            resp = await client.get("/v1/nodes")
            assert resp.status == 200
            print(f"stuck client closed after {published} batches ({closed_after:.2f} s)")
            print(f"longest publish {longest * 1e3:.3f} ms")
    finally:
        stuck.close()


async def test_every_stream_ends_when_bmd_stops(tmp_path: Path, db_file: Path) -> None:
    """``serve`` stopping: the streams end at once (not after the runner's shutdown timeout, here 5 s)."""
    settings = make_settings(tmp_path, service={"graceful_timeout": 10.0})
    stop = asyncio.Event()
    ready: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()

    def on_ready(ctx: AppContext, endpoint: Endpoint) -> None:
        ready.set_result(endpoint)

    task = asyncio.create_task(serve(settings, stop, on_ready=on_ready))
    try:
        endpoint = await asyncio.wait_for(asyncio.shield(ready), 30)
        async with aiohttp.ClientSession() as http, http.get(endpoint.url + PATH) as resp:
            events = Events(resp)
            assert (await events.next())[0] == "hello"
            start = time.perf_counter()
            stop.set()
            assert await asyncio.wait_for(resp.content.read(), 5) == b""  # the end of the stream
            ended = time.perf_counter() - start
            await asyncio.wait_for(task, 10)
            stopped = time.perf_counter() - start
        print(f"stream ended {ended * 1e3:.0f} ms after stop, serve returned after {stopped * 1e3:.0f} ms")
        assert stopped < 3.0
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/", "text/html"), ("/dashboard/app.js", "text/javascript"), ("/dashboard/app.css", "text/css")],
)
async def test_the_dashboard_files(client: TestClient[Any, Any], path: str, content_type: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == f"{content_type}; charset=utf-8"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    body = await resp.text()
    assert "http://" not in body and "https://" not in body  # nothing from outside: offline data centres
    again = await client.get(path, headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


@pytest.mark.parametrize("path", ["/dashboard/index.html", "/dashboard/nope.js", "/dashboard/..%2Fapi%2Fapp.py"])
async def test_only_the_dashboard_files_are_served(client: TestClient[Any, Any], path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404
    assert set(await resp.json()) == {"error", "message", "field"}
