"""The simulated deploy agent against a loopback "bmd": real PXE files, real HTTP, a real callback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from bmd.drivers.deploy.agent_sim import AgentError, read_boot_args, run_agent
from bmd.drivers.deploy.http import create_image_app
from bmd.drivers.deploy.images import ImageCache
from bmd.drivers.deploy.pxe import DeploySpec, ImageRef, PXEDeploy, PXESettings
from tests.drivers.deploy.servers import ImageServer

REPO = Path(__file__).resolve().parents[2]
NODE = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
MAC = "52:54:00:12:34:56"
TOKEN = "Zq3xTg7vLm2nPw8rKs4yHd6jBf1cNa5eZq3xTg7vLm2"


@dataclass
class MiniBmd:
    """Just enough of bmd's agent protocol: a lookup that issues TOKEN, an image and a callback that
    want it. ``image_prefix`` picks the image route (``norange`` ignores Range)."""

    base: str
    image_prefix: str = "v1/agent/nodes"
    pxe: PXEDeploy | None = None
    lookups: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, str | None, int]] = field(default_factory=list)


MINI = web.AppKey("mini", MiniBmd)


def pxe_of(request: web.Request) -> PXEDeploy:
    pxe = request.app[MINI].pxe
    assert pxe is not None
    return pxe


async def record(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: sees the final status (FileResponse picks 200/206/416 in prepare)."""
    entry = (request.method, request.path, request.headers.get("Range"), response.status)
    request.config_dict[MINI].requests.append(entry)


def check_token(request: web.Request) -> None:
    if request.headers.get("X-Agent-Token") != TOKEN:
        raise web.HTTPUnauthorized(text='{"error": "agent_token_refused"}', content_type="application/json")


async def lookup(request: web.Request) -> web.Response:
    mini = request.app[MINI]
    body = await request.json()
    mini.lookups.append(body)
    if body.get("node_uuid") != NODE or len(mini.lookups) > 1:
        return web.json_response({"error": "agent_token_already_issued"}, status=409)
    node = f"{mini.base}/v1/agent/nodes/{NODE}"
    return web.json_response(
        {
            "node_uuid": NODE,
            "deployment_id": "7",
            "token": TOKEN,
            "image_url": f"{mini.base}/{mini.image_prefix}/{NODE}/image",
            "image_checksum": await pxe_of(request).image_checksum(NODE),
            "root_mb": 10240,
            "swap_mb": 0,
            "heartbeat_url": f"{node}/heartbeat",
            "callback_url": f"{mini.base}/v1/nodes/{NODE}/vendor_passthru/pass_deploy_info",
        }
    )


async def image(request: web.Request) -> web.StreamResponse:
    check_token(request)
    return web.FileResponse(pxe_of(request).image_path(request.match_info["node"]))


async def no_range(request: web.Request) -> web.Response:
    """A server that ignores Range and always sends the whole file."""
    check_token(request)
    return web.Response(body=pxe_of(request).image_path(request.match_info["node"]).read_bytes())


async def heartbeat(request: web.Request) -> web.Response:
    check_token(request)
    request.app[MINI].heartbeats.append(await request.json())
    return web.json_response({"provision_state": "wait_callback"}, status=202)


async def pass_deploy_info(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[MINI].callbacks.append({**body, "token": request.headers.get("X-Agent-Token")})
    check_token(request)
    return web.json_response({"accepted": True}, status=202)


@dataclass
class World:
    bmd: MiniBmd
    pxe: PXEDeploy
    tftp: Path
    http: Path
    private: Path
    disk: bytes
    spec: DeploySpec


async def build_world(
    tmp_path: Path, server: ImageServer, cache: ImageCache, image_prefix: str, servers: list[TestServer]
) -> World:
    tftp, http, private = tmp_path / "tftp", tmp_path / "http", tmp_path / "private"
    http.mkdir()
    app = web.Application()
    app.on_response_prepare.append(record)
    mini = MiniBmd("", image_prefix)
    app[MINI] = mini
    app.add_subapp("/images/", create_image_app(http))
    app.router.add_post("/v1/agent/lookup", lookup)
    app.router.add_get("/v1/agent/nodes/{node}/image", image)
    app.router.add_get("/norange/{node}/image", no_range)
    app.router.add_post("/v1/agent/nodes/{node}/heartbeat", heartbeat)
    app.router.add_post("/v1/nodes/{node}/vendor_passthru/pass_deploy_info", pass_deploy_info)
    test_server = TestServer(app, host="127.0.0.1", port=0)
    servers.append(test_server)
    await test_server.start_server()
    base = mini.base = f"http://127.0.0.1:{test_server.port}"
    disk = os.urandom(300_001)
    for name in ("deploy_kernel", "deploy_ramdisk", "kernel", "ramdisk"):
        server.add(name, name.encode() * 10)
    pxe = mini.pxe = PXEDeploy(PXESettings(tftp, http, f"{base}/images", private), cache)
    spec = DeploySpec(
        node_uuid=NODE,
        macs=(MAC,),
        deployment_id="7",
        bmd_url=base,
        deploy_kernel=ImageRef(server.url("deploy_kernel")),
        deploy_ramdisk=ImageRef(server.url("deploy_ramdisk")),
        kernel=ImageRef(server.url("kernel")),
        ramdisk=ImageRef(server.url("ramdisk")),
        image=ImageRef(server.url("disk"), server.add("disk", disk)),
    )
    await pxe.prepare(spec)
    return World(mini, pxe, tftp, http, private, disk, spec)


@pytest.fixture
async def servers() -> AsyncIterator[list[TestServer]]:
    started: list[TestServer] = []
    try:
        yield started
    finally:
        for server in started:
            await server.close()


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[ImageCache]:
    c = ImageCache(tmp_path / "cache", 10**9)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def world(tmp_path: Path, image_server: ImageServer, cache: ImageCache, servers: list[TestServer]) -> World:
    return await build_world(tmp_path, image_server, cache, "v1/agent/nodes", servers)


async def test_round_trip(world: World, tmp_path: Path) -> None:
    dest = tmp_path / "written-disk"
    result = await run_agent(world.tftp, MAC.upper(), address="10.1.2.3", dest=dest)
    assert (result.status, result.error, result.resumed, result.stage) == (202, None, True, "callback")
    assert result.bytes_downloaded == len(world.disk) and dest.read_bytes() == world.disk
    assert world.bmd.lookups == [{"node_uuid": NODE, "mac": MAC.upper()}]
    assert world.bmd.heartbeats == [{"message": f"image written: {len(world.disk)} bytes"}]
    assert world.bmd.callbacks == [{"deployment_id": "7", "address": "10.1.2.3", "error": None, "token": TOKEN}]
    disk_path = f"/v1/agent/nodes/{NODE}/image"
    gets = [(r, s) for m, p, r, s in world.bmd.requests if m == "GET" and p == disk_path]
    assert gets[0] == (None, 200)
    assert gets[1][1] == 206 and gets[1][0] is not None and gets[1][0].startswith("bytes=")
    assert 0 < int(gets[1][0].removeprefix("bytes=").rstrip("-")) < len(world.disk)
    # The agent read nothing over the anonymous /images/ route: it had no reason to.
    assert not [p for _, p, _, _ in world.bmd.requests if p.startswith("/images/")]


async def test_plain_download_without_resume(world: World) -> None:
    result = await run_agent(world.tftp, MAC, resume_at=None)
    assert (result.status, result.error, result.resumed) == (202, None, False)
    assert [r for m, p, r, s in world.bmd.requests if p.endswith("/image")] == [None]


async def test_wrong_token_is_refused_everywhere(world: World) -> None:
    result = await run_agent(world.tftp, MAC, token="not-the-token-at-all")
    assert result.status == 401 and result.error is not None and "HTTP 401" in result.error
    assert world.bmd.callbacks[0]["token"] == "not-the-token-at-all"
    assert [s for _, p, _, s in world.bmd.requests if p.endswith("/image")] == [401]


async def test_a_refused_lookup_ends_the_agent(world: World) -> None:
    assert (await run_agent(world.tftp, MAC)).status == 202
    again = await run_agent(world.tftp, MAC)
    assert (again.status, again.stage, again.bytes_downloaded) == (409, "lookup", 0)
    assert "agent_token_already_issued" in again.body and len(world.bmd.callbacks) == 1


async def test_reported_failure(world: World) -> None:
    result = await run_agent(world.tftp, MAC, fail_with="disk /dev/sda not found")
    assert result.status == 202 and result.error == "disk /dev/sda not found"
    assert world.bmd.callbacks[0]["error"] == "disk /dev/sda not found"
    assert not [p for _, p, _, _ in world.bmd.requests if p.endswith("/image")]


async def test_corrupt_image_is_reported(world: World) -> None:
    served = world.private / NODE / "disk"
    served.unlink()  # break the hard link first: the cache's copy stays intact
    served.write_bytes(b"\0" * len(world.disk))
    result = await run_agent(world.tftp, MAC)
    assert result.status == 202
    assert result.error is not None and "checksum mismatch" in result.error
    expected = "sha256:" + hashlib.sha256(world.disk).hexdigest()
    assert expected in world.bmd.callbacks[0]["error"]


async def test_a_server_ignoring_range_is_reported(
    tmp_path: Path, image_server: ImageServer, cache: ImageCache, servers: list[TestServer]
) -> None:
    world = await build_world(tmp_path, image_server, cache, "norange", servers)
    result = await run_agent(world.tftp, MAC)
    assert result.error is not None and "expected 206" in result.error
    assert world.bmd.callbacks[0]["error"] == result.error


async def test_boot_mode_and_unknown_macs_are_agent_errors(world: World) -> None:
    with pytest.raises(AgentError, match="no PXE config"):
        await run_agent(world.tftp, "52:54:00:00:00:01")
    await world.pxe.switch_to_boot(NODE)
    with pytest.raises(AgentError, match="not in deploy mode"):
        await run_agent(world.tftp, MAC)
    assert world.bmd.lookups == [] and world.bmd.callbacks == []


async def test_boot_args_and_logs(world: World) -> None:
    boot = read_boot_args(world.tftp, MAC)
    assert (boot.node_uuid, boot.bmd_url) == (NODE, world.bmd.base)
    assert set(boot.kernel_args) == {"initrd", "bmd_node_uuid", "bmd_url"}
    with capture_logs() as logs:
        await run_agent(world.tftp, MAC)
    events = [e["event"] for e in logs]
    assert "agent_heartbeat_sent" in events and "agent_callback_sent" in events and TOKEN not in repr(logs)


async def test_command_line(world: World) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bmd.drivers.deploy.agent_sim",
        "--tftp-root",
        str(world.tftp),
        "--mac",
        MAC,
        "--address",
        "10.9.9.9",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert json.loads(out.decode().splitlines()[-1]) == {"status": 202, "error": None, "resumed": True}
    assert world.bmd.callbacks[0]["address"] == "10.9.9.9"
