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

from bmd.deploy.agent_sim import AgentError, read_deploy_params, run_agent
from bmd.deploy.http import create_image_app
from bmd.deploy.images import ImageCache
from bmd.deploy.pxe import DeploySpec, ImageRef, PXEDeploy, PXESettings
from tests.deploy.servers import ImageServer

REPO = Path(__file__).resolve().parents[2]
NODE = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
MAC = "52:54:00:12:34:56"
KEY = "Zq3xTg7vLm2nPw8rKs4yHd6jBf1cNa5e"


@dataclass
class MiniBmd:
    """Just enough of bmd: the image sub-app and a callback endpoint that checks the key."""

    base: str
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, str | None, int]] = field(default_factory=list)


MINI = web.AppKey("mini", MiniBmd)


async def record(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: sees the final status (FileResponse picks 200/206/416 in prepare)."""
    entry = (request.method, request.path, request.headers.get("Range"), response.status)
    request.config_dict[MINI].requests.append(entry)


async def pass_deploy_info(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[MINI].callbacks.append(body)
    if body.get("key") != KEY:
        return web.json_response({"error": "wrong key"}, status=403)
    return web.json_response({"accepted": True}, status=202)


async def no_range(request: web.Request) -> web.Response:
    """A server that ignores Range and always sends the whole file."""
    root: Path = request.app[ROOT]
    return web.Response(body=(root / request.match_info["path"]).read_bytes())


ROOT = web.AppKey("root", Path)


@dataclass
class World:
    bmd: MiniBmd
    pxe: PXEDeploy
    tftp: Path
    http: Path
    disk: bytes
    spec: DeploySpec


async def build_world(
    tmp_path: Path, server: ImageServer, cache: ImageCache, prefix: str, servers: list[TestServer]
) -> World:
    tftp, http = tmp_path / "tftp", tmp_path / "http"
    http.mkdir()
    app = web.Application()
    app.on_response_prepare.append(record)
    mini = MiniBmd("")
    app[MINI] = mini
    app[ROOT] = http
    app.add_subapp("/images/", create_image_app(http))
    app.router.add_get("/norange/{path:.+}", no_range)
    app.router.add_post("/v1/nodes/{id}/vendor_passthru/pass_deploy_info", pass_deploy_info)
    test_server = TestServer(app, host="127.0.0.1", port=0)
    servers.append(test_server)
    await test_server.start_server()
    base = mini.base = f"http://127.0.0.1:{test_server.port}"
    disk = os.urandom(300_001)
    for name in ("deploy_kernel", "deploy_ramdisk", "kernel", "ramdisk"):
        server.add(name, name.encode() * 10)
    pxe = PXEDeploy(PXESettings(tftp, http, f"{base}/{prefix}"), cache)
    spec = DeploySpec(
        node_uuid=NODE,
        macs=(MAC,),
        deployment_id="7",
        deployment_key=KEY,
        callback_url=f"{base}/v1/nodes/7/vendor_passthru/pass_deploy_info",
        deploy_kernel=ImageRef(server.url("deploy_kernel")),
        deploy_ramdisk=ImageRef(server.url("deploy_ramdisk")),
        kernel=ImageRef(server.url("kernel")),
        ramdisk=ImageRef(server.url("ramdisk")),
        image=ImageRef(server.url("disk"), server.add("disk", disk)),
    )
    await pxe.prepare(spec)
    return World(mini, pxe, tftp, http, disk, spec)


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
    return await build_world(tmp_path, image_server, cache, "images", servers)


async def test_round_trip(world: World, tmp_path: Path) -> None:
    dest = tmp_path / "written-disk"
    result = await run_agent(world.tftp, MAC.upper(), address="10.1.2.3", dest=dest)
    assert (result.status, result.error, result.resumed) == (202, None, True)
    assert result.bytes_downloaded == len(world.disk) and dest.read_bytes() == world.disk
    assert world.bmd.callbacks == [{"deployment_id": "7", "key": KEY, "address": "10.1.2.3", "error": None}]
    disk_path = f"/images/{NODE}/disk"
    gets = [(r, s) for m, p, r, s in world.bmd.requests if m == "GET" and p == disk_path]
    assert gets[0] == (None, 200)
    assert gets[1][1] == 206 and gets[1][0] is not None and gets[1][0].startswith("bytes=")
    assert 0 < int(gets[1][0].removeprefix("bytes=").rstrip("-")) < len(world.disk)


async def test_plain_download_without_resume(world: World) -> None:
    result = await run_agent(world.tftp, MAC, resume_at=None)
    assert (result.status, result.error, result.resumed) == (202, None, False)
    assert [r for m, p, r, s in world.bmd.requests if p.endswith("/disk")] == [None]


async def test_wrong_key_gets_403(world: World) -> None:
    result = await run_agent(world.tftp, MAC, key="not-the-key-at-all")
    assert result.status == 403 and result.error is None
    assert world.bmd.callbacks[0]["key"] == "not-the-key-at-all"


async def test_reported_failure(world: World) -> None:
    result = await run_agent(world.tftp, MAC, fail_with="disk /dev/sda not found")
    assert result.status == 202 and result.error == "disk /dev/sda not found"
    assert world.bmd.callbacks[0]["error"] == "disk /dev/sda not found"
    assert not [p for _, p, _, _ in world.bmd.requests if p.endswith("/disk")]


async def test_corrupt_image_is_reported(world: World) -> None:
    served = world.http / NODE / "disk"
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
    assert world.bmd.callbacks == []


async def test_params_and_logs(world: World) -> None:
    params = read_deploy_params(world.tftp, MAC)
    assert params.deployment_id == "7" and params.deployment_key == KEY
    assert params.image_url == f"{world.bmd.base}/images/{NODE}/disk"
    assert params.root_mb == 0 and KEY not in repr(params)
    with capture_logs() as logs:
        await run_agent(world.tftp, MAC)
    assert "agent_callback_sent" in [e["event"] for e in logs] and KEY not in repr(logs)


async def test_command_line(world: World) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bmd.deploy.agent_sim",
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
