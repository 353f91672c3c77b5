"""The scheduler's view of a node has one source, bm_nodes: change events from its writers and a resync, both
ordered by the row's version. Two schedulers (``conftest.two``) share one database and race for the same node."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from structlog.testing import capture_logs

from bmd.context import AppContext
from bmd.db.flavors import get_flavor
from bmd.db.models import BareMetalNode, Instance
from bmd.errors import NoValidHost
from bmd.flavors import Flavor
from bmd.node_events import NodeView, read_views
from bmd.provision.instances import InstanceRequest, build_instance_rows, claim_instances
from bmd.provision.request import DeployRequest
from bmd.scheduler.host_state import RequestSpec
from bmd.scheduler.manager import Placement
from tests.cloud import Cloud, make_cloud

from .fleet import Schedulers, add_flavor, enroll, feed, free


async def views(ctx: AppContext, node_id: int) -> list[NodeView]:
    async with ctx.sessionmaker() as session:
        return await read_views(session, [node_id])


async def claim_directly(ctx: AppContext, flavor: Flavor, node_id: int) -> None:
    """Scheduler A takes the node with its own claim writer: B's bus hears nothing of it."""
    request = InstanceRequest(flavor, RequestSpec(flavor), deploy=DeployRequest("http://images/disk.img"))
    placement = Placement(str(uuid.uuid4()), node_id, str(node_id), "svc1")
    rows = build_instance_rows(request, [placement], str(uuid.uuid4()))
    outcome = await ctx.scheduler.writer.claim([node_id], [placement.instance_uuid], rows)
    assert outcome.lost is None


async def test_a_lost_race_gives_back_the_other_pick_and_the_retry_takes_it(two: Schedulers) -> None:
    a, b = two
    ids = await enroll(a, 3)
    flavor = await add_flavor(a)
    await feed([a.scheduler, b.scheduler], ids)
    spec = RequestSpec(flavor, num_instances=2)
    first, taken = (int(c.nodename) for c in b.scheduler.select_destinations(spec).chosen)
    (other,) = set(ids) - {first, taken}
    before_claim = await views(b, taken)  # a row a resync of B read before A's claim
    await claim_directly(a, flavor, taken)
    assert free(b.scheduler, taken)  # B has not heard of it

    with capture_logs() as logs:
        placed = await claim_instances(
            b.scheduler, InstanceRequest(flavor, spec, deploy=DeployRequest("http://images/disk.img"))
        )

    # B lost on `taken` after consuming `first`, gave `first` back, and the retry took it with the third node:
    # without the give-back only one node would look free and the retry would fail.
    assert sorted(p.node_id for p in placed) == sorted([first, other])
    assert b.scheduler.lost_races == 1
    lost = [e for e in logs if e["event"] == "claim_lost_race"]
    assert [(e["node"], e["given_back"]) for e in lost] == [(taken, [first])]
    assert not any(free(b.scheduler, i) for i in ids)
    # The resync's stale row is older than what B holds now: ignored, the node is not free again.
    assert b.scheduler.take_node_views(before_claim) == 0
    assert not free(b.scheduler, taken)
    await b.scheduler.refresh()
    assert not any(free(b.scheduler, i) for i in ids)
    assert not b.scheduler.select_destinations(RequestSpec(flavor)).ok
    # A heard nothing of B's claim on its bus; its resync brings the rows in.
    assert free(a.scheduler, first) and free(a.scheduler, other)
    await a.scheduler.refresh()
    assert not any(free(a.scheduler, i) for i in ids)
    async with a.sessionmaker() as session:
        holders = (await session.execute(select(BareMetalNode.instance_uuid).where(BareMetalNode.id.in_(ids)))).all()
        instances = await session.scalar(select(func.count()).select_from(Instance).where(Instance.bm_node_id.in_(ids)))
    assert len({h for (h,) in holders}) == 3 and instances == 3  # the lost attempt wrote nothing


async def test_a_lost_race_with_no_node_left_fails_with_the_reason_and_gives_back(two: Schedulers) -> None:
    a, b = two
    ids = await enroll(a, 2)
    flavor = await add_flavor(a)
    await feed([a.scheduler, b.scheduler], ids)
    spec = RequestSpec(flavor, num_instances=2)
    first, taken = (int(c.nodename) for c in b.scheduler.select_destinations(spec).chosen)
    await claim_directly(a, flavor, taken)
    request = InstanceRequest(flavor, spec, deploy=DeployRequest("http://images/disk.img"))
    with pytest.raises(NoValidHost, match="removed the last 1 hosts"):
        await claim_instances(b.scheduler, request)
    assert b.scheduler.lost_races == 1
    assert free(b.scheduler, first) and not free(b.scheduler, taken)  # given back; the lost one is held
    (placed,) = await claim_instances(
        b.scheduler, InstanceRequest(flavor, RequestSpec(flavor), deploy=DeployRequest("x"))
    )
    assert placed.node_id == first


async def test_views_older_than_the_one_held_are_ignored(two: Schedulers) -> None:
    a, _ = two
    (node_id,) = await enroll(a, 1)
    await feed([a.scheduler], [node_id])
    (current,) = await views(a, node_id)
    held = NodeView(node_id, current.version + 2, instance_uuid="someone", provision_state="deploying")
    assert a.scheduler.take_node_views([held]) == 1
    assert not free(a.scheduler, node_id)
    older_free = NodeView(node_id, current.version + 1)
    same_free = NodeView(node_id, current.version + 2)
    assert a.scheduler.take_node_views([older_free, same_free]) == 0
    assert not free(a.scheduler, node_id)
    assert a.scheduler.take_node_views([NodeView(node_id, current.version + 3)]) == 1
    assert free(a.scheduler, node_id)


@pytest.fixture
async def cloud(tmp_path: Path, db_file: Path) -> AsyncIterator[Cloud]:
    async with make_cloud(tmp_path) as c:
        yield c


async def test_api_writes_reach_the_scheduler_as_events_without_a_resync(cloud: Cloud) -> None:
    ids = await cloud.enroll(2)
    async with cloud.ctx.sessionmaker() as session:
        spec = RequestSpec(await get_flavor(session, "bm.small"))
    scheduler = cloud.ctx.scheduler

    def offered() -> set[int]:
        return {int(c.nodename) for c in scheduler.select_destinations(spec).candidates[0]}

    assert offered() == set(ids)
    resp = await cloud.client.put(f"/v1/nodes/{ids[0]}/maintenance", json={"reason": "disk"}, headers=cloud.auth)
    assert resp.status == 200
    assert offered() == {ids[1]} and scheduler.selector.get(str(ids[0])).maintenance
    assert (await cloud.client.delete(f"/v1/nodes/{ids[0]}/maintenance", headers=cloud.auth)).status == 200
    assert offered() == set(ids)
    assert (await cloud.client.delete(f"/v1/nodes/{ids[1]}", headers=cloud.auth)).status == 204
    assert offered() == {ids[0]} and str(ids[1]) not in scheduler.selector


async def test_a_deleted_instance_frees_its_node_through_the_state_machine_event(cloud: Cloud) -> None:
    (node_id,) = await cloud.enroll(1)
    await cloud.add_pxe_ips(1)
    resp = await cloud.client.post("/v1/instances", json=cloud.request(), headers=cloud.auth)
    assert resp.status == 202, await resp.text()
    (instance,) = (await resp.json())["instances"]
    await cloud.settle()
    assert not free(cloud.ctx.scheduler, node_id)
    assert (await cloud.client.delete(f"/v1/instances/{instance['uuid']}", headers=cloud.auth)).status in (202, 204)
    await cloud.settle()
    assert (await cloud.node(node_id)).provision_state == "available"
    assert not free(cloud.ctx.scheduler, node_id)  # events are taken in before a selection, not pushed
    cloud.ctx.scheduler.take_node_events()
    assert free(cloud.ctx.scheduler, node_id)  # no resync: the transition's event gave it back


async def test_a_view_arriving_during_a_claim_waits_for_its_outcome(ctx: AppContext) -> None:
    """A resync row read while the claim is in flight says the node is free (the claim has not committed);
    it must not free the consumed node meanwhile, and the claim's own row wins afterwards."""
    (node_id,) = await enroll(ctx, 1)
    flavor = await add_flavor(ctx)
    await feed([ctx.scheduler], [node_id])
    (current,) = await views(ctx, node_id)
    loop = asyncio.get_running_loop()
    async with ctx.sessionmaker.begin() as session:  # holds this process's SQLite write lock: the claim waits
        claim = asyncio.create_task(
            claim_instances(ctx.scheduler, InstanceRequest(flavor, RequestSpec(flavor), deploy=DeployRequest("x")))
        )
        deadline = loop.time() + 5
        while free(ctx.scheduler, node_id):  # until the claim has consumed the node in memory
            assert loop.time() < deadline
            await asyncio.sleep(0)
        # Another write of the row meanwhile (a power check), read as a resync would: newer, and free.
        await session.execute(update(BareMetalNode).where(BareMetalNode.id == node_id).values(power_failures=0))
        (meanwhile,) = await read_views(session, [node_id])
        assert meanwhile.version == current.version + 1 and meanwhile.free
        assert ctx.scheduler.take_node_views([meanwhile]) == 1
        assert not free(ctx.scheduler, node_id)  # held for the claim
    (placed,) = await claim
    assert placed.node_id == node_id and not free(ctx.scheduler, node_id)
    (claimed,) = await views(ctx, node_id)
    assert claimed.version == current.version + 2 and not claimed.free
