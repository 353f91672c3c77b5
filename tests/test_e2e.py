"""End to end: lab BMCs, a real ``bmd serve`` process, a flavor with extra specs, an instance request, the
simulated deploy agent over the real wire protocol; delete; the agent that never calls back; and bmd killed
with SIGKILL in every state of the provision machine, restarted, every node left in a legal state."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bmd.drivers.deploy.agent_sim import run_agent
from bmd.lab import Lab, LabSpec
from bmd.lab.enroll import enroll_inventory
from bmd.lab.faults import Fault
from tests.cloud import write_image
from tests.test_service import Daemon

LEGAL = {"available", "deploying", "wait_callback", "active", "deleting", "error"}


def free_port() -> int:
    """A port nobody listens on now. The daemon keeps it across restarts, as a real deployment does: the PXE
    configs written before a restart carry URLs with it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp: Path, **tasks: float) -> Path:
    images = tmp / "images-src"
    path = tmp / "bmd.toml"
    path.write_text(
        f"""
[service]
host = "e2e"
graceful_timeout = 5.0
state_dir = "{tmp / "state"}"
[database]
url = "sqlite+aiosqlite:///{tmp / "bmd.sqlite"}"
[api]
port = {free_port()}
token_file = "{tmp / "token"}"
[secrets]
key_file = "{tmp / "secret.key"}"
[logging]
format = "json"
[tasks]
host_state_interval = 0.2
update_resources_interval = 0.2
power_sync_interval = {tasks.get("power_sync_interval", 0.5)}
power_sync_timeout = 1.0
[ipmi]
timeout = 2.0
min_command_interval = 0.0
[deploy]
tftp_root = "{tmp / "tftp"}"
http_root = "{tmp / "http"}"
image_cache_dir = "{tmp / "cache"}"
allowed_image_roots = ["{images}"]
deploy_kernel = "{images / "deploy_kernel"}"
deploy_ramdisk = "{images / "deploy_ramdisk"}"
boot_kernel = "{images / "kernel"}"
boot_ramdisk = "{images / "ramdisk"}"
deploy_timeout = {tasks.get("deploy_timeout", 600)}
deploy_timeout_check_interval = 0.2
automated_clean = false  # cleaning after a delete: tests/test_cleaning.py, tests/test_clean_qemu.py
[scheduler]
filters = ["ComputeFilter", "ImagePropertiesFilter", "ComputeCapabilitiesFilter", "RamFilter", "CoreFilter",
           "DiskFilter"]
"""
    )
    return path


@dataclass
class Env:
    tmp: Path
    config: Path
    lab: Lab
    daemon: Daemon | None = None
    url: str = ""
    checksum: str = ""

    @property
    def token(self) -> str:
        return (self.tmp / "token").read_text().strip()

    def start(self) -> None:
        self.daemon = Daemon(self.config)
        self.url = self.daemon.wait_for("service_started")["api"]

    def kill(self) -> None:
        assert self.daemon is not None
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(10)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.url + path, json=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None) if resp.status != 204 else None

    async def wait(self, what: str, probe: Any, deadline: float = 30.0) -> Any:
        end = time.monotonic() + deadline
        last = None
        while time.monotonic() < end:
            last = await probe()
            if last:
                return last
            await asyncio.sleep(0.1)  # polling a live process with a deadline: nothing to wait on in-process
        raise AssertionError(f"{what} did not happen within {deadline} s (last: {last})")

    async def instance(self, uuid: str) -> dict[str, Any]:
        return (await self.call("GET", f"/v1/instances/{uuid}"))[1]

    async def create(self, **extra: Any) -> str:
        body = {"flavor": "bm.ssd", "image_ref": str(self.tmp / "images-src" / "disk.img"),
                "image_checksum": self.checksum, "networks": [{"id": "tenant", "vlan": 42}], **extra}  # fmt: skip
        status, result = await self.call("POST", "/v1/instances", body)
        assert status == 202, result
        return str(result["instances"][0]["uuid"])

    def db(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.tmp / "bmd.sqlite") as conn:
            return conn.execute(sql).fetchall()

    def assert_legal(self) -> None:
        for node_id, state, inst in self.db("SELECT id, provision_state, instance_uuid FROM bm_nodes"):
            assert state in LEGAL, (node_id, state)
            if state == "available":
                assert inst is None, (node_id, inst)
            if inst is not None:
                rows = self.db(f"SELECT vm_state FROM instances WHERE uuid = '{inst}'")
                assert rows and rows[0][0] != "deleted", (node_id, inst, rows)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    images = tmp_path / "images-src"
    images.mkdir()
    checksum = write_image(images / "disk.img", 200_000)
    for name in ("deploy_kernel", "deploy_ramdisk", "kernel", "ramdisk"):
        write_image(images / name, 2048)
    path = config(tmp_path)
    upgrade = [sys.executable, "-m", "bmd", "--config", str(path), "db", "upgrade"]
    done = await asyncio.to_thread(subprocess.run, upgrade, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr  # fmt: skip
    async with Lab(LabSpec(count=3)) as lab:
        e = Env(tmp_path, path, lab, checksum=checksum)
        e.start()
        try:
            result = await enroll_inventory(e.url, e.token, lab.inventory())
            assert result["created"] == 3
            for i in range(3):
                status, _ = await e.call(
                    "POST", "/v1/pxe_ips", {"address": f"10.0.0.{10 + i}", "server_address": f"10.0.1.{i}"}
                )
                assert status == 201
            status, body = await e.call("POST", "/v1/flavors", {"name": "bm.ssd", "ram": 8192, "vcpus": 4, "disk": 100,
                                        "extra_specs": {"capabilities:cpu_arch": "x86_64"}})  # fmt: skip
            assert status == 201, body
            # the scheduler has heard of the nodes once a capability list was published
            await e.wait("capabilities", lambda: _schedulable(e))
            yield e
        finally:
            if e.daemon is not None:
                e.daemon.stop()


async def _schedulable(e: Env) -> bool:
    status, body = await e.call("POST", "/v1/schedule", {"flavor": "bm.ssd"})
    return status == 200 and body["ok"]


def mac_of(e: Env, node: str) -> str:
    return next(n["interfaces"][0]["address"] for n in e.lab.inventory() if n["name"] == f"lab-{int(node):04d}")


async def test_instance_lifecycle_with_the_real_daemon(env: Env) -> None:
    e = env
    uuid = await e.create()
    inst = await e.wait("wait_callback", lambda: _task(e, uuid, "wait_callback"))
    node = inst["node"]
    lab_name = f"lab-{int(node):04d}"
    state = await e.lab.state(lab_name)
    assert state["power"] is True and state["last_boot"] == 1  # it booted from the network (a next-boot override)
    assert state["boot"]["persistent"] is False

    # The disk image is not served anonymously, and the operators' bearer token is not an agent token.
    _, shown = await e.call("GET", f"/v1/nodes/{node}")
    assert (await e.call("GET", f"/images/{shown['uuid']}/disk"))[0] == 404
    status, refused = await e.call("GET", f"/v1/agent/nodes/{shown['uuid']}/image")
    assert (status, refused["error"]) == (401, "agent_token_refused")

    result = await run_agent(e.tmp / "tftp", mac_of(e, node))
    assert result.status == 202, result.body
    inst = await e.wait("active", lambda: _vm(e, uuid, "active"))
    assert inst["provision_state"] == "active"
    state = await e.lab.state(lab_name)
    assert state["power"] is True and state["last_boot"] == 2  # rebooted from disk
    assert state["boot"]["selector"] == 2 and state["boot"]["persistent"] is True

    status, _ = await e.call("DELETE", f"/v1/instances/{uuid}")
    assert status == 202
    await e.wait("deleted", lambda: _vm(e, uuid, "deleted"))
    assert (await e.lab.state(lab_name))["power"] is False
    rows = e.db(f"SELECT provision_state, instance_uuid FROM bm_nodes WHERE id = {node}")
    assert rows == [("available", None)]
    assert e.db(f"SELECT vif_uuid FROM bm_interfaces WHERE bm_node_id = {node}") == [(None,)]
    assert e.db(f"SELECT bm_node_id FROM bm_pxe_ips WHERE bm_node_id = {node}") == []


async def test_agent_that_never_calls_back(tmp_path: Path, env: Env) -> None:
    e = env
    e.kill()
    e.config.write_text(e.config.read_text().replace("deploy_timeout = 600", "deploy_timeout = 1"))
    e.start()
    uuid = await e.create()
    inst = await e.wait("error", lambda: _vm(e, uuid, "error"))
    assert "deploy timed out" in inst["last_error"]
    e.assert_legal()


async def test_sigkill_in_every_state_then_restart(env: Env) -> None:
    e = env
    # wait_callback: survives a restart and can still finish
    waiting = await e.create()
    inst = await e.wait("wait_callback", lambda: _task(e, waiting, "wait_callback"))
    waiting_node = inst["node"]
    # active: another instance taken to the end
    active = await e.create()
    inst = await e.wait("wait_callback", lambda: _task(e, active, "wait_callback"))
    assert (await run_agent(e.tmp / "tftp", mac_of(e, inst["node"]))).status == 202
    await e.wait("active", lambda: _vm(e, active, "active"))
    # deploying: the third node's BMC is slow, so the spawn is mid-way when bmd dies
    third = next(n for n in ("1", "2", "3") if n not in (waiting_node, inst["node"]))
    await e.lab.set_fault([f"lab-{int(third):04d}"], Fault("slow", 1.5))
    deploying = await e.create()
    await e.wait("deploying", lambda: _node_state(e, third, "deploying"))
    e.kill()
    e.assert_legal()
    await e.lab.set_fault([f"lab-{int(third):04d}"], None)
    e.start()
    await e.wait("recovered", lambda: _settled(e))
    e.assert_legal()
    assert (await e.instance(deploying))["vm_state"] == "error"  # spawn interrupted: undone, node free
    assert e.db(f"SELECT provision_state, instance_uuid FROM bm_nodes WHERE id = {third}") == [("available", None)]
    assert (await e.instance(active))["vm_state"] == "active"
    assert (await e.instance(waiting))["task_state"] == "wait_callback"
    assert (await run_agent(e.tmp / "tftp", mac_of(e, waiting_node))).status == 202
    await e.wait("active after restart", lambda: _vm(e, waiting, "active"))

    # deleting: the BMC is slow again, bmd dies half-way through the delete; the restart finishes it
    await e.lab.set_fault([f"lab-{int(waiting_node):04d}"], Fault("slow", 1.5))
    assert (await e.call("DELETE", f"/v1/instances/{waiting}"))[0] == 202
    await e.wait("deleting", lambda: _node_state(e, waiting_node, "deleting"))
    e.kill()
    e.assert_legal()
    await e.lab.set_fault([f"lab-{int(waiting_node):04d}"], None)
    e.start()
    await e.wait("delete resumed", lambda: _vm(e, waiting, "deleted"))
    await e.wait("recovered", lambda: _settled(e))
    e.assert_legal()
    assert e.db(f"SELECT provision_state, instance_uuid FROM bm_nodes WHERE id = {waiting_node}") == [
        ("available", None)
    ]
    # a second delete of a deleted instance is a no-op
    assert (await e.call("DELETE", f"/v1/instances/{waiting}"))[0] == 204


async def _task(e: Env, uuid: str, task: str) -> dict[str, Any] | None:
    inst = await e.instance(uuid)
    if inst["vm_state"] == "error":
        raise AssertionError(f"instance failed: {inst['last_error']}")
    return inst if inst.get("task_state") == task else None


async def _vm(e: Env, uuid: str, vm_state: str) -> dict[str, Any] | None:
    inst = await e.instance(uuid)
    return inst if inst["vm_state"] == vm_state and not inst.get("task_state") else None


async def _node_state(e: Env, node: str, state: str) -> bool:
    return bool(e.db(f"SELECT 1 FROM bm_nodes WHERE id = {node} AND provision_state = '{state}'"))


async def _settled(e: Env) -> bool:
    return not e.db("SELECT 1 FROM bm_nodes WHERE provision_state IN ('deploying', 'deleting')")
