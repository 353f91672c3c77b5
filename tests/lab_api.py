"""Driving a bmd that runs beside a lab (``bmd.service.serve_lab``) over its HTTP API, for the lab and e2e
tests: polls with deadlines (the daemon and the VMs are other processes; nothing in-process to wait on);
and the small helpers of the tests that run QEMU lab machines."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bmd.config import Settings
from bmd.context import AppContext
from bmd.lab import Lab
from bmd.service import Endpoint, serve_lab

T = TypeVar("T")


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def closed_port() -> int:
    """A TCP port nothing listens on (a lab VM's bmd address when the guest never reaches bmd)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def put_on_disk(image: Path, disk: Path) -> None:
    """A raw image onto a lab VM's qcow2 disk."""
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(image), str(disk)], check=True, timeout=60)


async def until(what: str, probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], deadline: float) -> T:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: T | None = None
    while loop.time() < end:
        last = await probe()
        if accept(last):
            return last
        await asyncio.sleep(0.2)  # a VM and a daemon in other processes: nothing in-process to wait on
    raise AssertionError(f"{what} did not happen within {deadline} s (last: {last!r})")


class LabApi:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, path, json=body) as resp:
            return resp.status, await resp.json(content_type=None) if resp.status != 204 else None

    async def instance(self, uuid: str) -> dict[str, Any]:
        return (await self.call("GET", f"/v1/instances/{uuid}"))[1]  # type: ignore[no-any-return]

    async def node(self, ident: str | int) -> dict[str, Any]:
        return (await self.call("GET", f"/v1/nodes/{ident}"))[1]  # type: ignore[no-any-return]

    async def create(self, flavor: str, image: Path, **extra: Any) -> str:
        status, body = await self.call("POST", "/v1/instances", {"flavor": flavor, "image_ref": str(image), **extra})
        assert status == 202, body
        return str(body["instances"][0]["uuid"])

    async def schedulable(self, flavor: str) -> bool:
        status, body = await self.call("POST", "/v1/schedule", {"flavor": flavor})
        return status == 200 and bool(body["ok"])

    async def settle(self, uuid: str, vm_state: str, deadline: float) -> dict[str, Any]:
        def accept(inst: dict[str, Any]) -> bool:
            if inst["vm_state"] == "error" and vm_state not in ("error", "deleted"):
                raise AssertionError(f"instance {uuid} failed: {inst['last_error']}")
            return inst["vm_state"] == vm_state and not inst.get("task_state")

        return await until(f"instance {uuid} {vm_state}", lambda: self.instance(uuid), accept, deadline)

    async def delete(self, uuid: str, deadline: float = 90) -> None:
        status, body = await self.call("DELETE", f"/v1/instances/{uuid}")
        assert status == 202, body
        await self.settle(uuid, "deleted", deadline)


@contextlib.asynccontextmanager
async def serving_lab(
    settings: Settings, *, within: float = 90, **lab: Any
) -> AsyncIterator[tuple[Lab, AppContext, Endpoint]]:
    """``bmd serve --lab`` in-process (``serve_lab`` with ``lab``'s keywords): yields once the lab is enrolled
    and bmd is up; stops both, bounded by ``within`` seconds each way."""
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[Lab, AppContext, Endpoint]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_lab(settings, stop, on_ready=lambda *a: ready.set_result(a), **lab))
    try:
        yield await asyncio.wait_for(asyncio.shield(ready), within)
    finally:
        stop.set()
        await asyncio.wait_for(task, within)
