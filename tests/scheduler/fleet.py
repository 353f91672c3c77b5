"""Nodes, flavors and capabilities for the tests of schedulers on a real database (``conftest.two``)."""

from __future__ import annotations

import uuid

from bmd.context import AppContext
from bmd.db.flavors import get_flavor
from bmd.db.models import BareMetalNode, InstanceType
from bmd.flavors import Flavor
from bmd.scheduler.manager import HostManager

from .factories import make_caps

Schedulers = tuple[AppContext, AppContext]


async def enroll(ctx: AppContext, count: int, owners: tuple[str, ...] = ("svc1",)) -> list[int]:
    """``count`` free nodes, owned by ``owners`` in turn."""
    async with ctx.sessionmaker.begin() as session:
        nodes = [
            BareMetalNode(
                uuid=str(uuid.uuid4()), service_host=owners[i % len(owners)], cpus=8, memory_mb=4096, local_gb=100
            )
            for i in range(count)
        ]
        session.add_all(nodes)
    return [n.id for n in nodes]


async def add_flavor(ctx: AppContext) -> Flavor:
    name = f"f-{uuid.uuid4().hex[:8]}"
    async with ctx.sessionmaker.begin() as session:
        session.add(InstanceType(name=name, flavorid=name, memory_mb=4096, vcpus=8, root_gb=100))
    async with ctx.sessionmaker() as session:
        return await get_flavor(session, name)


async def feed(managers: list[HostManager], ids: list[int], owners: tuple[str, ...] = ("svc1",)) -> None:
    """Every node's capabilities under its owner (as report_driver_status publishes them), then a resync."""
    for manager in managers:
        manager.take_capabilities([make_caps(n, host=owners[i % len(owners)]) for i, n in enumerate(ids)])
        await manager.refresh()


def free(manager: HostManager, node_id: int) -> bool:
    return manager.selector.get(str(node_id)).free_ram_mb > 0
