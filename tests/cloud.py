"""A small bmd cloud in-process for instance tests: the real app on 127.0.0.1, real SQLite, fake power (a
registered plugin), local images, PXE IPs, a flavor, nodes known to the scheduler."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from bmd.api.app import create_app
from bmd.context import AppContext
from bmd.db.models import BareMetalNode, Instance
from bmd.drivers.power.fake import FakePower
from bmd.service import bind_api_socket, open_context
from bmd.tasks.report_driver_status import TOPIC, ReportDriverStatus
from tests.conftest import make_settings

FLAVOR = {"name": "bm.small", "ram": 16384, "vcpus": 8, "disk": 200}


@dataclass
class Cloud:
    ctx: AppContext
    client: TestClient[Any, Any]
    fake: FakePower
    tmp: Path
    image_ref: str
    image_checksum: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ctx.api_token}"}

    @property
    def tftp_root(self) -> Path:
        return Path(self.ctx.settings.deploy.tftp_root)

    async def enroll(self, count: int, *, start: int = 1, nics: int = 1, **extra: Any) -> list[int]:
        nodes = []
        for i in range(start, start + count):
            ifaces = [
                {
                    "address": f"52:54:00:{i // 256:02x}:{i % 256:02x}:{n:02x}",
                    "datapath_id": "0x1",
                    "port_no": i * 4 + n,
                }
                for n in range(nics)
            ]
            nodes.append(
                {
                    "uuid": str(uuid.UUID(int=i)),  # fixed: where the ring puts the nodes is the same every run
                    "name": f"node-{i}",
                    "cpus": 8,
                    "memory_mb": 16384,
                    "local_gb": 200,
                    "pm_driver": "fake",
                    "pm_address": f"fake-{i}",
                    "pm_user": "admin",
                    "pm_password": "pw",
                    "interfaces": ifaces,
                    **extra,
                }
            )
        resp = await self.client.post("/v1/nodes/import", json={"nodes": nodes}, headers=self.auth)
        assert resp.status == 201, await resp.text()
        await self.publish()
        return [n["id"] for n in (await resp.json())["nodes"]]

    async def publish(self) -> None:
        """One report_driver_status pass, taken in by the scheduler (as the bus loop would)."""
        await ReportDriverStatus(self.ctx.driver, self.ctx.bus, "127.0.0.1", 60).run_once()
        self.ctx.scheduler.take_capabilities(self.ctx.bus.latest(TOPIC))
        await self.ctx.scheduler.refresh()

    async def add_pxe_ips(self, count: int) -> None:
        for i in range(count):
            body = {"address": f"10.9.{i // 200}.{i % 200 + 10}", "server_address": f"10.8.{i // 200}.{i % 200 + 10}"}
            assert (await self.client.post("/v1/pxe_ips", json=body, headers=self.auth)).status == 201

    def request(self, **extra: Any) -> dict[str, Any]:
        return {"flavor": "bm.small", "image_ref": self.image_ref, "image_checksum": self.image_checksum, **extra}

    async def create(self, **extra: Any) -> tuple[int, dict[str, Any]]:
        resp = await self.client.post("/v1/instances", json=self.request(**extra), headers=self.auth)
        return resp.status, await resp.json()

    async def settle(self) -> None:
        """Wait for every running spawn/destroy job (bounded)."""
        async with asyncio.timeout(30):
            await self.ctx.conductor.wait_idle()

    async def node(self, node_id: int) -> BareMetalNode:
        async with self.ctx.sessionmaker() as session:
            node = await session.get(BareMetalNode, node_id)
            assert node is not None
            return node

    async def instance(self, uuid: str) -> Instance:
        async with self.ctx.sessionmaker() as session:
            inst = await session.scalar(select(Instance).where(Instance.uuid == uuid))
            assert inst is not None
            return inst


def write_image(path: Path, size: int) -> str:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path.write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def make_cloud(tmp: Path, *, flavor: bool = True, **sections: dict[str, Any]) -> AsyncIterator[Cloud]:
    """``flavor``: create the flavor (a second service on the same database finds it there)."""
    images = tmp / "images-src"
    images.mkdir()
    checksum = write_image(images / "disk.img", 300_000)
    for name in ("deploy_kernel", "deploy_ramdisk", "kernel", "ramdisk"):
        write_image(images / name, 4096)
    deploy = {
        "tftp_root": str(tmp / "tftp"),
        "http_root": str(tmp / "http"),
        "image_cache_dir": str(tmp / "cache"),
        "allowed_image_roots": [str(images)],
        "deploy_kernel": str(images / "deploy_kernel"),
        "deploy_ramdisk": str(images / "deploy_ramdisk"),
        "boot_kernel": str(images / "kernel"),
        "boot_ramdisk": str(images / "ramdisk"),
        **sections.pop("deploy", {}),
    }
    settings = make_settings(tmp, deploy=deploy, **sections)
    # Bound first, as the service does: the conductor is built knowing the URL the agents are given.
    sock = bind_api_socket("127.0.0.1", 0)
    public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with open_context(settings, public_url=public_url) as ctx:
        ctx.mark_ready()  # no start-up phase here: the service is ready once built
        fake = FakePower()
        ctx.power.register("fake", fake)
        server = TestServer(create_app(ctx), host="127.0.0.1", port=0, socket_factory=lambda *_: sock)
        async with TestClient(server) as client:
            cloud = Cloud(ctx, client, fake, tmp, str(images / "disk.img"), checksum)
            if flavor:
                resp = await client.post("/v1/flavors", json=FLAVOR, headers=cloud.auth)
                assert resp.status == 201
            try:
                yield cloud
            finally:
                await ctx.conductor.close()
