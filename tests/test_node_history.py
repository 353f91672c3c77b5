"""A node's history (bmd/node_history.py) against the real app on 127.0.0.1 (real SQLite, fake power, the
Python agent as the node): a deploy, a delete, its clean and a maintenance give the expected entries in
order; ``GET /v1/nodes/{node}/events`` pages newest first; the bound holds; a deleted node takes its
history with it; power sync and the loops' errors are recorded on change only."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bmd import node_history as history
from bmd import states
from bmd.auth import FILE_TOKEN_NAME
from bmd.cli import main
from bmd.config import DatabaseSettings, TaskSettings
from bmd.db.engine import make_engine, make_sessionmaker
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, NodeEvent
from bmd.drivers.deploy.agent_sim import run_agent
from bmd.errors import BMCUnreachable
from bmd.tasks.steps import StepChanges, record_step_errors
from bmd.tasks.sync_power_states import SyncPowerStates
from tests.cloud import Cloud, make_cloud
from tests.test_agent_token import MAC
from tests.test_cleaning import delete, deploy_active
from tests.test_cli import run_cli


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path, deploy={"automated_clean": True}) as c:
        yield c


async def events(cloud: Cloud, node: int | str, **query: Any) -> dict[str, Any]:
    resp = await cloud.client.get(f"/v1/nodes/{node}/events", params=query, headers=cloud.auth)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def brief(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["kind"], e["event"], e["from_state"], e["to_state"]) for e in entries]


async def stored(cloud: Cloud, node_id: int) -> int:
    async with cloud.ctx.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).where(NodeEvent.bm_node_id == node_id)) or 0)


async def test_deploy_delete_clean_and_maintenance_are_recorded_in_order(cloud: Cloud) -> None:
    w = await deploy_active(cloud)
    await delete(cloud, w)
    assert (await run_agent(cloud.tftp_root, MAC)).status == 202  # the clean agent
    await cloud.settle()
    put = await cloud.client.put(
        f"/v1/nodes/{w.node_id}/maintenance", json={"reason": "fan replacement"}, headers=cloud.auth
    )
    assert put.status == 200, await put.text()
    off = await cloud.client.delete(f"/v1/nodes/{w.node_id}/maintenance", headers=cloud.auth)
    assert off.status == 200

    body = await events(cloud, "node-1")  # by name, as every node route
    entries = list(reversed(body["events"]))  # oldest first, to read as a story
    assert brief(entries) == [
        ("provision", "deploy", "available", "deploying"),
        ("power", "power on", None, "power on"),  # bmd's own power actions: known at once, not at the next sync
        ("provision", "wait", "deploying", "wait_callback"),
        ("provision", "callback", "wait_callback", "wait_callback"),
        ("power", "reboot", "power on", "power on"),  # from its disk
        ("provision", "done", "wait_callback", "active"),
        ("provision", "delete", "active", "deleting"),
        ("power", "power off", "power on", "power off"),
        ("provision", "clean", "deleting", "cleaning"),
        ("power", "power on", "power off", "power on"),  # the clean ramdisk
        ("provision", "clean_callback", "cleaning", "cleaning"),
        ("power", "power off", "power on", "power off"),
        ("provision", "cleaned", "cleaning", "available"),
        ("maintenance", "set", "off", "on"),
        ("maintenance", "unset", "on", "off"),
    ]
    assert body["next"] is None
    deploy = [e for e in entries if e["kind"] == "provision"][:5]
    assert {e["instance_uuid"] for e in deploy} == {w.instance_uuid}  # the instance it was about
    assert {e["actor"] for e in entries if e["kind"] == "power"} == {"bmd"}
    assert entries[13]["message"] == "fan replacement" and entries[13]["actor"] == FILE_TOKEN_NAME
    assert [e["id"] for e in body["events"]] == sorted((e["id"] for e in body["events"]), reverse=True)
    assert all(e["node_id"] == w.node_id and e["at"] for e in entries)


async def test_a_failed_clean_records_the_reason_and_the_maintenance_it_sets(cloud: Cloud) -> None:
    w = await deploy_active(cloud)
    await delete(cloud, w)
    assert (await run_agent(cloud.tftp_root, MAC, fail_with="dd: /dev/vda: Input/output error")).status == 202
    await cloud.settle()
    recent = (await events(cloud, w.node_id, limit=3))["events"]
    assert brief(recent[:1]) == [("power", "power off", "power on", "power off")]  # the tidy-up after it
    newest = recent[1:]
    assert brief(newest) == [
        ("maintenance", "set", "off", "on"),
        ("provision", "clean_fail", "cleaning", "clean failed"),
    ]
    assert "Input/output error" in newest[1]["message"] and newest[0]["actor"] == "bmd"
    assert newest[0]["message"] == newest[1]["message"]


async def test_the_list_pages_newest_first_with_a_marker(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    async with cloud.ctx.sessionmaker.begin() as session:
        await history.record(session, [history.Entry(node_id, history.Kind.ERROR, message=str(i)) for i in range(7)])
    seen: list[str] = []
    marker = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 3} | ({"marker": marker} if marker is not None else {})
        body = await events(cloud, node_id, **query)
        seen += [e["message"] for e in body["events"]]
        pages += 1
        marker = body["next"]
        if marker is None:
            break
    assert seen == [str(i) for i in reversed(range(7))] and pages == 3
    missing = await cloud.client.get("/v1/nodes/no-such-node/events", headers=cloud.auth)
    assert missing.status == 404
    bad = await cloud.client.get(f"/v1/nodes/{node_id}/events?marker=x", headers=cloud.auth)
    assert bad.status == 400 and (await bad.json())["field"] == "marker"


async def test_the_bound_holds_and_keeps_the_newest(cloud: Cloud) -> None:
    a, b = await cloud.enroll(2)
    async with cloud.ctx.sessionmaker.begin() as session:  # one write over the bound, in one transaction
        await history.record(session, [history.Entry(a, history.Kind.ERROR, message=str(i)) for i in range(250)])
    async with cloud.ctx.sessionmaker.begin() as session:
        await history.record(session, [history.Entry(b, history.Kind.ERROR, message="only one")])
    for i in range(250, 260):  # and one at a time past it
        async with cloud.ctx.sessionmaker.begin() as session:
            await history.record(session, [history.Entry(a, history.Kind.ERROR, message=str(i))])
    assert await stored(cloud, a) == history.KEEP and await stored(cloud, b) == 1
    async with cloud.ctx.sessionmaker() as session:
        kept = await history.list_events(session, a, 1000)
    assert [e.message for e in kept] == [str(i) for i in reversed(range(60, 260))]


async def test_a_deleted_node_takes_its_history_with_it(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    assert (await cloud.client.put(f"/v1/nodes/{node_id}/maintenance", headers=cloud.auth)).status == 200
    assert await stored(cloud, node_id) == 1
    assert (await cloud.client.delete(f"/v1/nodes/{node_id}", headers=cloud.auth)).status == 204
    assert await stored(cloud, node_id) == 0
    # An entry for a node deleted meanwhile (a loop read it before) is skipped, never an error.
    async with cloud.ctx.sessionmaker.begin() as session:
        await history.record(session, [history.Entry(node_id, history.Kind.ERROR, message="late")])
    assert await stored(cloud, node_id) == 0


async def test_patching_maintenance_is_recorded(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    for body in ({"maintenance": True, "maintenance_reason": "rack move"}, {"cpus": 4}, {"maintenance": False}):
        resp = await cloud.client.patch(f"/v1/nodes/{node_id}", json=body, headers=cloud.auth)
        assert resp.status == 200, await resp.text()
    entries = (await events(cloud, node_id))["events"]
    assert brief(entries) == [("maintenance", "unset", "on", "off"), ("maintenance", "set", "off", "on")]
    assert entries[1]["message"] == "rack move"


async def test_power_sync_records_changes_failures_and_recovery_once_each(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    settings = TaskSettings(power_sync_max_retries=2, force_power_state_during_sync=False)
    sync = SyncPowerStates(cloud.ctx.sessionmaker, cloud.ctx.power, cloud.ctx.settings.service.host, settings)
    await sync.run_once()
    await sync.run_once()  # nothing changed: nothing added
    cloud.fake.inject_failure(node_id, BMCUnreachable("no route to the BMC"))
    for _ in range(3):
        await sync.run_once()
    cloud.fake.inject_failure(node_id, None)
    await sync.run_once()
    entries = list(reversed((await events(cloud, node_id))["events"]))
    assert brief(entries) == [
        ("power", "changed", None, "power off"),
        ("power", "failed", None, None),
        ("power", "changed", "power off", "error"),
        ("maintenance", "set", "off", "on"),
        ("power", "changed", "error", "power off"),
        ("power", "recovered", None, None),
        ("maintenance", "unset", "on", "off"),
    ]
    assert {e["actor"] for e in entries} == {"power_sync"} and "power failure" in entries[3]["message"]


async def test_an_operators_power_action_is_recorded(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    for target in ("power on", "reboot"):
        resp = await cloud.client.put(f"/v1/nodes/{node_id}/states/power", json={"target": target}, headers=cloud.auth)
        assert resp.status == 200, await resp.text()
    entries = (await events(cloud, node_id))["events"]
    assert brief(entries) == [("power", "reboot", "power on", "power on"), ("power", "power on", None, "power on")]
    assert {e["actor"] for e in entries} == {FILE_TOKEN_NAME}


async def test_a_loop_step_error_and_its_recovery_are_recorded(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    for changes in (StepChanges({node_id: "t: KeyError: 'x'"}, {}), StepChanges({}, {node_id: "t: KeyError: 'x'"})):
        async with cloud.ctx.sessionmaker.begin() as session:
            await record_step_errors(session, changes)
    entries = (await events(cloud, node_id))["events"]
    assert brief(entries) == [("error", "recovered", None, None), ("error", "failed", None, None)]
    assert entries[1]["message"] == "t: KeyError: 'x'"


async def test_bmd_node_history_prints_the_newest_first(cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    (node_id,) = await cloud.enroll(1)
    put = await cloud.client.put(
        f"/v1/nodes/{node_id}/maintenance", json={"reason": "fan replacement"}, headers=cloud.auth
    )
    assert put.status == 200
    entries = [history.Entry(node_id, history.Kind.ERROR, "failed", message=f"e{i}") for i in range(5)]
    async with cloud.ctx.sessionmaker.begin() as session:
        await history.record(session, entries)
    code, out, err = await run_cli(cloud.client, cloud.ctx.api_token, "node", "history", "node-1", capsys=capsys)
    assert code == 0, err
    lines = out.splitlines()  # a table: border, header, border, 6 rows, border
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == ["at", "kind", "event", "change", "actor", "message"]
    assert len(lines) == 10 and "e4" in lines[3] and "maintenance" in lines[-2] and "off -> on" in lines[-2]
    assert "fan replacement" in lines[-2] and FILE_TOKEN_NAME in lines[-2]
    code, out, _ = await run_cli(
        cloud.client, None, "node", "history", "node-1", "--limit", "2", "--json", capsys=capsys
    )
    assert code == 0 and [e["message"] for e in json.loads(out)] == ["e4", "e3"]
    code, out, _ = await run_cli(
        cloud.client, None, "node", "history", "node-1", "--limit", "2", "-f", "value", "-c", "message", capsys=capsys
    )
    assert code == 0 and out.split() == ["e4", "e3"]
    assert main(["node", "history", "node-1", "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
    code, _, err = await run_cli(cloud.client, None, "node", "history", "nope", capsys=capsys)
    assert code == 1 and "nope" in err


async def test_the_history_on_postgresql(postgres_url: str) -> None:
    """The same verbs on PostgreSQL: the state a multi-source transition leaves is read under FOR UPDATE,
    the trim's OFFSET subquery and the INSERT ... SELECT that skips a deleted node work there too."""
    engine = make_engine(DatabaseSettings(url=postgres_url))
    try:
        await upgrade(engine)
        sm = make_sessionmaker(engine)
        async with sm.begin() as session:
            node = BareMetalNode(uuid=str(uuid.uuid4()), service_host="pg", cpus=1, memory_mb=1, local_gb=1)
            session.add(node)
            await session.flush()
            node_id = node.id
        async with sm.begin() as session:  # INSPECT has two sources: the one left is read first
            await states.start_inspect(session, node_id, states.deadline_after(60))
        async with sm.begin() as session:
            await states.fail_inspect(session, node_id, "no answer")
        async with sm.begin() as session:
            await history.record(
                session, [history.Entry(node_id, history.Kind.ERROR, message=str(i)) for i in range(205)]
            )
            await history.record(session, [history.Entry(10**9, history.Kind.ERROR, message="no such node")])
        async with sm() as session:
            rows = await history.list_events(session, node_id, 1000)
            assert len(rows) == history.KEEP and rows[0].message == "204" and rows[-1].message == "5"
        async with sm.begin() as session:  # a fresh node: its first two entries are the transitions
            other = BareMetalNode(uuid=str(uuid.uuid4()), service_host="pg", cpus=1, memory_mb=1, local_gb=1)
            session.add(other)
            await session.flush()
            await states.start_inspect(session, other.id, states.deadline_after(60))
            await states.fail_inspect(session, other.id, "no answer")
        async with sm() as session:
            got = [
                (r.event, r.from_state, r.to_state, r.message) for r in await history.list_events(session, other.id, 9)
            ]
        assert got == [
            ("inspect_fail", "inspecting", "inspect failed", "no answer"),
            ("inspect", "available", "inspecting", None),
        ]
    finally:
        await engine.dispose()
