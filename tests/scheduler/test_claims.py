"""The SQL claim is the arbiter between schedulers (``bmd.scheduler.claims``): in a group commit a request that
lost its node to another writer is written off alone and retried on its next candidate, and two schedulers
racing for every node of one database place each node once, telling every request they refuse why."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select
from structlog.testing import capture_logs

from bmd.db.models import BareMetalNode, Instance, utcnow
from bmd.errors import NoValidHost
from bmd.flavors import Flavor
from bmd.provision.instances import InstanceRequest, build_instance_rows, claim_instances
from bmd.provision.request import DeployRequest
from bmd.scheduler.claims import ClaimRequest, lock_free, write_group
from bmd.scheduler.host_state import RequestSpec
from bmd.scheduler.manager import HostManager, Placement
from bmd.states import claim

from .fleet import Schedulers, add_flavor, enroll, feed, free


def one_instance(flavor: Flavor) -> InstanceRequest:
    return InstanceRequest(flavor, RequestSpec(flavor), deploy=DeployRequest("http://images/disk.img"))


async def next_pick(manager: HostManager, ids: list[int], before: set[int]) -> int:
    """The node a claim just started has consumed in memory (it selects and consumes without an await)."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        taken = {i for i in ids if not free(manager, i)} - before
        if taken:
            (node_id,) = taken
            return node_id
        assert asyncio.get_running_loop().time() < deadline, "the claim did not select a node"
        await asyncio.sleep(0)


async def holders(manager: HostManager, ids: list[int]) -> tuple[dict[int, str | None], dict[str, int | None]]:
    """What the database says: each node's instance, and each instance row's node."""
    async with manager.sessionmaker() as session:
        nodes = await session.execute(
            select(BareMetalNode.id, BareMetalNode.instance_uuid).where(BareMetalNode.id.in_(ids))
        )
        rows = await session.execute(select(Instance.uuid, Instance.bm_node_id).where(Instance.bm_node_id.in_(ids)))
        return {n: u for n, u in nodes}, {u: n for u, n in rows}


async def test_the_claim_statement_takes_only_free_nodes(two: Schedulers) -> None:
    """The UPDATE's own guard (one statement over arrays on PostgreSQL, an executemany on SQLite), whatever
    the locked read before it said."""
    a, _ = two
    free_node, taken = await enroll(a, 2)
    async with a.sessionmaker.begin() as session:
        assert await claim(session, [(taken, "theirs")], utcnow()) == 1
    async with a.sessionmaker.begin() as session:
        assert await claim(session, [(free_node, "mine"), (taken, "mine-too")], utcnow()) == 1
    nodes, _ = await holders(a.scheduler, [free_node, taken])
    assert nodes == {free_node: "mine", taken: "theirs"}


async def test_a_request_that_lost_its_node_in_a_group_is_retried_and_the_group_commits(two: Schedulers) -> None:
    a, b = two
    ids = await enroll(a, 6)
    flavor = await add_flavor(a)
    await feed([a.scheduler, b.scheduler], ids)
    request = one_instance(flavor)
    picks: list[int] = []
    claims: list[asyncio.Task[list[Placement]]] = []
    with capture_logs() as logs:
        # Another service's claim transaction holds the nodes (their row locks on PostgreSQL, the write lock
        # on SQLite): B's first claim is written as a group of its own and waits; the three after it queue
        # for the next group.
        async with a.sessionmaker.begin() as other:
            assert await lock_free(other, ids) == set(ids)
            for _ in range(4):
                claims.append(asyncio.create_task(claim_instances(b.scheduler, request)))
                picks.append(await next_pick(b.scheduler, ids, set(picks)))
            # Between B's selection and its claim, the other service takes the node of B's third request.
            taken = picks[2]
            placement = Placement(str(uuid.uuid4()), taken, str(taken), "svc1")
            rows = build_instance_rows(request, [placement], str(uuid.uuid4()))
            theirs = ClaimRequest([taken], [placement.instance_uuid], rows, asyncio.get_running_loop().create_future())
            (outcome,) = await write_group(other, [theirs])
            assert outcome.lost is None
        placed = [p for (p,) in await asyncio.gather(*claims)]

    # The others of the group kept their picks; the loser took a node none of them had chosen.
    assert [p.node_id for i, p in enumerate(placed) if i != 2] == [n for i, n in enumerate(picks) if i != 2]
    assert placed[2].node_id in ids and placed[2].node_id not in picks
    assert b.scheduler.lost_races == 1 and b.scheduler.claims == 4
    # Three groups: the first claim's, the queued three's (the loser written off alone), the retry's.
    assert b.scheduler.writer.groups_written == 3
    lost = [e for e in logs if e["event"] == "claim_lost_race"]
    assert [(e["node"], e["given_back"]) for e in lost] == [(taken, [])]
    nodes, instances = await holders(b.scheduler, ids)
    mine = {p.node_id: p.instance_uuid for p in placed}
    assert {n: u for n, u in nodes.items() if u is not None} == {**mine, taken: placement.instance_uuid}
    assert instances == {u: n for n, u in {**mine, taken: placement.instance_uuid}.items()}


async def test_two_schedulers_racing_for_every_node_place_each_once_and_refuse_the_rest(two: Schedulers) -> None:
    a, b = two
    ids = await enroll(a, 100)  # owned by neither scheduler's service: both rank them alike and race for each
    flavor = await add_flavor(a)
    await feed([a.scheduler, b.scheduler], ids)
    request = one_instance(flavor)
    managers = (a.scheduler, b.scheduler)
    results = await asyncio.gather(
        *(claim_instances(m, request) for _ in range(100) for m in managers), return_exceptions=True
    )

    placed = [p for r in results if isinstance(r, list) for p in r]
    refused = [r for r in results if not isinstance(r, list)]
    assert sorted(p.node_id for p in placed) == ids  # every node once, none twice
    assert len(refused) == 100
    for err in refused:
        assert isinstance(err, NoValidHost), repr(err)
        assert "removed the last" in str(err) or "concurrent schedulers" in str(err), str(err)
    assert sum(m.lost_races for m in managers) > 0  # they did race for the same nodes
    assert sum(m.claims for m in managers) == 100
    reasons = a.scheduler.no_valid_host + b.scheduler.no_valid_host
    assert sum(reasons.values()) == 100 and set(reasons) <= {"ExactRamFilter", "lost_races"}, reasons
    nodes, instances = await holders(a.scheduler, ids)
    assert nodes == {p.node_id: p.instance_uuid for p in placed}
    assert instances == {p.instance_uuid: p.node_id for p in placed}


async def test_two_services_each_claim_their_own_nodes_first_and_lose_no_race(two: Schedulers) -> None:
    """Among equal nodes each scheduler picks those its service owns (the ring shares a fleet out), so
    two services placing at once do not chase the same node."""
    a, b = two
    owners = ("svc-a", "svc-b")
    ids = await enroll(a, 40, owners)
    flavor = await add_flavor(a)
    await feed([a.scheduler, b.scheduler], ids, owners)
    request = one_instance(flavor)
    managers = (a.scheduler, b.scheduler)
    results = await asyncio.gather(*(claim_instances(m, request) for _ in range(10) for m in managers))

    by_manager = {m: [p for r in results[i::2] for p in r] for i, m in enumerate(managers)}
    assert all(p.host == "svc-a" for p in by_manager[a.scheduler])
    assert all(p.host == "svc-b" for p in by_manager[b.scheduler])
    assert a.scheduler.lost_races == b.scheduler.lost_races == 0
    nodes, _ = await holders(a.scheduler, ids)
    assert {n: u for n, u in nodes.items() if u is not None} == {p.node_id: p.instance_uuid for r in results for p in r}
