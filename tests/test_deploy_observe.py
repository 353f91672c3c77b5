"""A deploy is observable, through the real daemon (tests/cloud.py: the real app on 127.0.0.1, real SQLite,
fake power, the simulated agent over the real agent protocol): its steps with timings on the node
(``GET /v1/nodes/{node}`` and ``bmd node show --steps``), the node's serial console recorded from its
terminal port into its console log (``GET /v1/nodes/{node}/console-log``, operators only, and
``bmd node console-log``), and the agent's error in ``last_error``."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bmd.cli import main
from bmd.drivers.deploy.agent_sim import run_agent
from bmd.errors import BMCError
from tests.cloud import Cloud, make_cloud

MAC = "52:54:00:00:01:00"  # node-1's interface in tests.cloud
SPAWN_STEPS = ["validate", "plug_vifs", "allocate_pxe_ip", "write_boot_config", "power_on"]


@contextlib.asynccontextmanager
async def console_server() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """The node's serial port as QEMU serves it: TCP on loopback, printing what a PXE boot prints."""
    connected = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def boot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(b"iPXE initialising devices...\r\nbmd-agent: looking up my token\r\n")
        await writer.drain()
        connected.set()
        with contextlib.suppress(ConnectionError):
            await reader.read()

    server = await asyncio.start_server(boot, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connected
    finally:
        for w in writers:
            w.close()
        server.close()
        async with asyncio.timeout(5):
            await server.wait_closed()


async def deploy(cloud: Cloud, **node: Any) -> tuple[int, str]:
    (node_id,) = await cloud.enroll(1, **node)
    await cloud.add_pxe_ips(1)
    status, body = await cloud.create()
    assert status == 202, body
    await cloud.settle()
    return node_id, body["instances"][0]["uuid"]


async def show(cloud: Cloud, node_id: int) -> dict[str, Any]:
    resp = await cloud.client.get(f"/v1/nodes/{node_id}")
    assert resp.status == 200
    return dict(await resp.json())


async def wait_state(cloud: Cloud, node_id: int, state: str) -> None:
    async with asyncio.timeout(30):
        while (await cloud.node(node_id)).provision_state != state:  # noqa: ASYNC110 - a job changes it
            await asyncio.sleep(0.05)


def started(steps: list[dict[str, Any]]) -> list[dt.datetime]:
    return [dt.datetime.fromisoformat(s["started_at"]) for s in steps]


async def test_a_deploy_records_every_step_with_timings(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path) as cloud:
        node_id, _ = await deploy(cloud)
        steps = (await show(cloud, node_id))["deploy_steps"]
        assert [s["step"] for s in steps] == [*SPAWN_STEPS, "wait_agent"]
        assert all(s["ok"] is True and s["seconds"] >= 0 for s in steps[:-1])
        assert steps[-1]["ok"] is None and steps[-1]["seconds"] is None  # the wait runs
        assert (await run_agent(cloud.tftp_root, MAC)).status == 202
        await cloud.settle()
        node = await show(cloud, node_id)
        assert node["provision_state"] == "active"
        steps = node["deploy_steps"]
        names = [s["step"] for s in steps]
        assert names == [*SPAWN_STEPS, "wait_agent", "heartbeat", "callback", "switch_to_boot", "boot_from_disk"]
        assert started(steps) == sorted(started(steps))  # in the order they ran
        assert all(s["ok"] is True for s in steps)  # a heartbeat is an event: ok, no duration
        assert all(isinstance(s["seconds"], float) for s in steps if s["step"] != "heartbeat")
        assert steps[names.index("heartbeat")]["detail"].startswith("image written: ")
        assert set(steps[0]) == {"step", "started_at", "seconds", "ok", "detail"}

        # A new deploy replaces the list.
        assert (await cloud.client.delete(f"/v1/instances/{node['instance_uuid']}", headers=cloud.auth)).status < 300
        await cloud.settle()
        await wait_state(cloud, node_id, "available")
        await cloud.publish()
        status, _ = await cloud.create()
        assert status == 202
        await cloud.settle()
        again = (await show(cloud, node_id))["deploy_steps"]
        assert [s["step"] for s in again] == [*SPAWN_STEPS, "wait_agent"]
        assert started(again)[0] > started(steps)[-1]


async def test_a_failed_step_is_recorded_with_its_error(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path) as cloud:
        (node_id,) = await cloud.enroll(1)
        cloud.fake.inject_failure(node_id, BMCError("BMC at https://admin:hunter2@10.0.0.9/x said no"))
        await cloud.add_pxe_ips(1)
        assert (await cloud.create())[0] == 202
        await cloud.settle()
        node = await show(cloud, node_id)
        steps = node["deploy_steps"]
        assert [s["step"] for s in steps] == SPAWN_STEPS
        assert [s["ok"] for s in steps] == [True, True, True, True, False]
        assert "said no" in steps[-1]["detail"] and "hunter2" not in str(node)  # URL-scrubbed like last_error
        assert node["provision_state"] == "available" and "said no" in node["last_error"]


async def test_the_agents_error_goes_to_last_error_and_the_steps(tmp_path: Path, db_file: Path) -> None:
    async with make_cloud(tmp_path) as cloud:
        node_id, instance = await deploy(cloud)
        error = "bmd-agent: image checksum mismatch: expected sha256:abc, got sha256:def"
        result = await run_agent(cloud.tftp_root, MAC, fail_with=error)
        assert result.status == 202
        node = await show(cloud, node_id)
        assert node["provision_state"] == "error" and error in node["last_error"]
        steps = {s["step"]: s for s in node["deploy_steps"]}
        assert steps["callback"]["ok"] is False and error in steps["callback"]["detail"]
        assert steps["wait_agent"]["ok"] is False and steps["wait_agent"]["seconds"] >= 0
        assert steps["heartbeat"]["detail"] == "deploy failed"
        resp = await cloud.client.get(f"/v1/instances/{instance}")
        assert resp.status == 200 and error in str(await resp.json())


async def test_the_console_is_recorded_during_the_deploy(tmp_path: Path, db_file: Path) -> None:
    async with (
        console_server() as (port, connected),
        make_cloud(tmp_path, driver={"console_interface": "tcp"}, console={"grace": 0.1, "retry_max": 0.2}) as cloud,
    ):
        node_id, instance = await deploy(cloud, pm_address="127.0.0.1", terminal_port=port)
        async with asyncio.timeout(15):
            await connected.wait()
        recorder = cloud.ctx.conductor.console
        assert recorder is not None and node_id in recorder.recordings
        rec = recorder.recordings[node_id]
        node = await show(cloud, node_id)
        logs = cloud.ctx.console_logs
        async with asyncio.timeout(15):
            while b"looking up my token" not in await logs.aread(node["uuid"]):  # noqa: ASYNC110 - the recorder
                await asyncio.sleep(0.05)
        assert (await run_agent(cloud.tftp_root, MAC)).status == 202
        await cloud.settle()
        async with asyncio.timeout(15):  # active: the recording ends after console.grace
            await rec.done.wait()
        assert node_id not in recorder.recordings

        url = f"/v1/nodes/{node['name']}/console-log"
        assert (await cloud.client.get(url)).status == 401  # console output is for operators only
        assert (await cloud.client.get(url, headers={"Authorization": "Bearer nope"})).status == 401
        resp = await cloud.client.get(url, headers=cloud.auth)
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.read()
        assert f"deploy of instance {instance}".encode() in text
        assert text.endswith(b"iPXE initialising devices...\r\nbmd-agent: looking up my token\r\n")
        resp = await cloud.client.get(url + "?tail=21", headers=cloud.auth)
        assert await resp.read() == b"looking up my token\r\n"
        resp = await cloud.client.get(url + "?tail=-1", headers=cloud.auth)
        assert resp.status == 400 and (await resp.json())["field"] == "tail"
        assert (await cloud.client.get("/v1/nodes/nope/console-log", headers=cloud.auth)).status == 404


async def run_cli(cloud: Cloud, token: str | None, *args: str) -> int:
    base = ["--url", str(cloud.client.make_url("")).rstrip("/")] + ([f"--token={token}"] if token else [])
    return await asyncio.to_thread(main, [*base, *args])


async def test_the_cli_shows_steps_and_writes_the_console_log_raw(
    tmp_path: Path, db_file: Path, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default api.token_file (./var/api-token) is not a checkout's own
    monkeypatch.delenv("BMD_TOKEN", raising=False)
    async with make_cloud(tmp_path) as cloud:
        node_id, _ = await deploy(cloud)
        node = await show(cloud, node_id)
        raw = b"\x1b[2J\xffnot utf-8\r\nlast line\n"
        await cloud.ctx.console_logs.aappend(node["uuid"], raw)
        tok = cloud.ctx.api_token
        capsysbinary.readouterr()  # the daemon's log so far

        assert await run_cli(cloud, tok, "node", "console-log", "node-1") == 0
        assert capsysbinary.readouterr().out == raw  # the bytes as stored
        assert await run_cli(cloud, tok, "node", "console-log", "node-1", "--tail", "10") == 0
        assert capsysbinary.readouterr().out == b"last line\n"
        assert await run_cli(cloud, None, "node", "console-log", "node-1") == 1
        assert b"no API token: set api.token_file or BMD_TOKEN" in capsysbinary.readouterr().err

        assert await run_cli(cloud, None, "node", "show", "node-1", "--steps", "-f", "csv") == 0
        rows = list(csv.reader(capsysbinary.readouterr().out.decode().splitlines()))
        assert rows[0] == ["step", "started_at", "seconds", "ok", "detail"]
        assert [row[0] for row in rows[1:]] == [*SPAWN_STEPS, "wait_agent"]
        assert rows[-1][2:4] == ["", "running"] and all(row[3] == "ok" for row in rows[1:-1])
        assert await run_cli(cloud, None, "node", "show", "node-1", "--steps") == 0  # the table for a human
        table = capsysbinary.readouterr().out.decode().splitlines()
        assert table[1].split("|")[1].strip() == "step" and "running" in table[-2]


async def test_a_restart_resumes_the_recording_of_a_deploy_that_waits(tmp_path: Path, db_file: Path) -> None:
    from bmd.provision.recovery import recover

    async with (
        console_server() as (port, _),
        make_cloud(tmp_path, driver={"console_interface": "tcp"}, console={"grace": 0.1, "retry_max": 0.2}) as cloud,
    ):
        node_id, instance = await deploy(cloud, pm_address="127.0.0.1", terminal_port=port)
        recorder = cloud.ctx.conductor.console
        assert recorder is not None
        first = recorder.recordings[node_id]
        recorder.stop(node_id)  # as if bmd had stopped while the node waited for its agent
        async with asyncio.timeout(10):
            await first.done.wait()
        await recover(cloud.ctx.conductor)
        again = recorder.recordings[node_id]
        assert again is not first and again.instance_uuid == instance
        uuid = (await cloud.node(node_id)).uuid
        async with asyncio.timeout(15):
            while (await cloud.ctx.console_logs.aread(uuid)).count(b"looking up my token") < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
