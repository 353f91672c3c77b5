"""One definition of a free node (bmd.db.nodes.FREE / is_free), and bm_nodes.version bumped by every write."""

from __future__ import annotations

import itertools
import uuid

from sqlalchemy import select, update

from bmd.context import AppContext
from bmd.db.models import BareMetalNode
from bmd.db.nodes import FREE, is_free

CASES = list(itertools.product([None, "inst"], ["available", "deploying", "active", "error"], [False, True]))


def make_node(i: int, instance: str | None, state: str, maintenance: bool) -> BareMetalNode:
    return BareMetalNode(
        uuid=str(uuid.uuid4()),
        service_host="svc",
        cpus=1,
        memory_mb=1024,
        local_gb=10,
        instance_uuid=None if instance is None else f"{instance}-{i}",
        provision_state=state,
        maintenance=maintenance,
    )


async def test_the_sql_and_the_python_definitions_agree(ctx: AppContext) -> None:
    async with ctx.sessionmaker.begin() as session:
        nodes = [make_node(i, *case) for i, case in enumerate(CASES)]
        session.add_all(nodes)
    async with ctx.sessionmaker() as session:
        free_ids = set((await session.execute(select(BareMetalNode.id).where(FREE))).scalars())
    assert free_ids == {n.id for n in nodes if is_free(n.instance_uuid, n.provision_state, n.maintenance)}
    assert len(free_ids) == 1  # no instance, available, not in maintenance: only that one


async def test_every_write_bumps_the_version(ctx: AppContext) -> None:
    async with ctx.sessionmaker.begin() as session:
        node = make_node(0, None, "available", False)
        session.add(node)
    versions = []

    async def version() -> int:
        async with ctx.sessionmaker() as session:
            return int(await session.scalar(select(BareMetalNode.version).where(BareMetalNode.id == node.id)) or 0)

    versions.append(await version())
    async with ctx.sessionmaker.begin() as session:  # an ORM flush
        loaded = await session.get(BareMetalNode, node.id)
        assert loaded is not None
        loaded.maintenance = True
    versions.append(await version())
    async with ctx.sessionmaker.begin() as session:  # a Core statement
        await session.execute(update(BareMetalNode).where(BareMetalNode.id == node.id).values(maintenance=False))
    versions.append(await version())
    assert versions == [1, 2, 3]
