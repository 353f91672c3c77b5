"""Loopback servers for the deploy tests: an image server that counts requests and can hold a response."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class ImageServer:
    """Serves ``files[name]`` at ``/img/<name>``. ``hits`` counts GETs; ``gates[name]`` holds the body."""

    server: TestServer
    files: dict[str, bytes] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)

    def url(self, name: str, *, auth: str = "", query: str = "") -> str:
        host = f"{auth}@" if auth else ""
        return f"http://{host}127.0.0.1:{self.server.port}/img/{name}" + (f"?{query}" if query else "")

    def add(self, name: str, data: bytes) -> str:
        """Add a file; returns its ``sha256:<hex>`` checksum."""
        self.files[name] = data
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def hold(self, name: str) -> tuple[asyncio.Event, asyncio.Event]:
        """Hold ``name``'s body until the returned gate is set; ``started`` is set when a request arrives."""
        self.gates[name] = asyncio.Event()
        self.started[name] = asyncio.Event()
        return self.gates[name], self.started[name]


STATE = web.AppKey("state", ImageServer)


async def _serve(request: web.Request) -> web.StreamResponse:
    state: ImageServer = request.app[STATE]
    name = request.match_info["name"]
    if name not in state.files:
        raise web.HTTPNotFound()
    state.hits[name] += 1
    data = state.files[name]
    resp = web.StreamResponse()
    resp.content_length = len(data)
    await resp.prepare(request)
    if name in state.started:
        state.started[name].set()
    if name in state.truncate:
        await resp.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp
    half = len(data) // 2
    await resp.write(data[:half])
    if name in state.gates:
        await state.gates[name].wait()
    await resp.write(data[half:])
    await resp.write_eof()
    return resp


async def start_image_server() -> ImageServer:
    app = web.Application()
    app.router.add_get("/img/{name}", _serve)
    server = TestServer(app, host="127.0.0.1", port=0)
    state = ImageServer(server)
    app[STATE] = state
    await server.start_server()
    return state


async def stop_image_server(state: ImageServer) -> None:
    for gate in state.gates.values():
        gate.set()
    await state.server.close()
