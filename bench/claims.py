"""Claims per second on SQLite or PostgreSQL: concurrent clients place instances through one or more
HostManagers on one database — selection through the configured chain, then the atomic SQL claim and the
instance row (``bmd.scheduler.claims``) — until every matching node is taken.

    .venv/bin/python bench/claims.py [--nodes 2000] [--clients 100] [--schedulers 2 [--ring] [--bus postgresql]]
        [--db-url postgresql://root@127.0.0.1:5432/postgres]

``--db-url``: a PostgreSQL server; the bench makes its own database there and drops it afterwards.
``--schedulers 2``: two HostManagers (two service contexts) share the database and the clients. Each hears
only its own claims: it learns that the other took a node by losing the race for it (retried by the manager,
counted), and its clients go on until it has seen every node taken — the worst case, where every node is
raced for once. All nodes belong to the first service unless ``--ring``.
``--ring``: the nodes belong to the services in turn, as ring ownership shares a fleet out; each scheduler
picks its own service's nodes first among equal ones.
``--bus postgresql`` (with ``--db-url``): node changes reach the other schedulers over LISTEN/NOTIFY, as
several services sharing a PostgreSQL database are deployed.

Prints claims/s and checks afterwards that no node holds two instances and every claim has its row.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd.config import Settings
from bmd.context import AppContext
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, Instance, InstanceType, Interface, utcnow
from bmd.errors import NoValidHost
from bmd.flavors import Flavor
from bmd.provision.instances import InstanceRequest, claim_instances
from bmd.provision.request import DeployRequest
from bmd.scheduler.host_state import RequestSpec
from bmd.service import open_context
from bmd.tasks.report_driver_status import TOPIC, ReportDriverStatus


@asynccontextmanager
async def database(server_url: str | None, tmp: str) -> AsyncIterator[str]:
    """An empty database: a SQLite file under ``tmp``, or a fresh one on the PostgreSQL server, dropped after."""
    if server_url is None:
        yield f"sqlite+aiosqlite:///{tmp}/bmd.sqlite"
        return
    import asyncpg

    url = make_url(server_url)
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"bmd_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def bench_settings(db_url: str, tmp: str, host: str, bus: str = "memory") -> Settings:
    return Settings.model_validate(
        {
            "service": {"host": host, "state_dir": f"{tmp}/{host}/state"},
            "database": {"url": db_url},
            "bus": {"backend": bus},
            "api": {"token_file": f"{tmp}/{host}/token"},
            "secrets": {"key_file": f"{tmp}/key"},
            "deploy": {"image_cache_dir": f"{tmp}/{host}/cache"},
        }
    )


async def enroll(settings: Settings, n: int, owners: list[str]) -> None:
    engine = make_engine(settings.database)
    await upgrade(engine)
    now = utcnow()
    rows = [
        {
            "uuid": str(uuid.uuid4()),
            "service_host": owners[i % len(owners)],
            "cpus": 8,
            "memory_mb": 16384,
            "local_gb": 200,
            "pm_driver": "fake",
            "registration_status": "done",
            "provision_state": "available",
            "maintenance": False,
            "extra_specs": {"location": f"rack{i % 20}"},
            "power_failures": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(BareMetalNode), rows)
        ids = (await conn.execute(select(BareMetalNode.id))).scalars().all()
        nics = [  # one interface each: a node without one cannot PXE boot (DeployReadyFilter skips it)
            {"bm_node_id": i, "address": f"52:54:02:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"} for i in ids
        ]
        await conn.execute(insert(Interface), [{**nic, "created_at": now, "updated_at": now} for nic in nics])
        await conn.execute(
            insert(InstanceType).values(
                name="bm.small",
                flavorid="1",
                memory_mb=16384,
                vcpus=8,
                root_gb=200,
                ephemeral_gb=0,
                swap=0,
                rxtx_factor=1.0,
                is_public=True,
                disabled=False,
                created_at=now,
                updated_at=now,
            )
        )
    await engine.dispose()


FLAVOR = Flavor(
    id=1,
    name="bm.small",
    flavorid="1",
    memory_mb=16384,
    vcpus=8,
    root_gb=200,
    ephemeral_gb=0,
    swap=0,
    extra_specs={"capabilities:cpu_arch": "x86_64"},
)


async def place_until_full(ctx: AppContext, request: InstanceRequest) -> int:
    """Claim one instance after another until this scheduler sees no free node; how many it placed."""
    placed = 0
    while True:
        try:
            placed += len(await claim_instances(ctx.scheduler, request))
        except NoValidHost:
            if ctx.scheduler.select_destinations(request.spec).ok:
                continue  # lost three races in a row to the other scheduler: nodes are left, go on
            return placed


async def measure(n: int, clients: int, schedulers: int, server_url: str | None, bus: str, ring: bool) -> None:
    hosts = ["bench" if i == 0 else f"bench{i}" for i in range(schedulers)]
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            db_url = await stack.enter_async_context(database(server_url, tmp))
            await enroll(bench_settings(db_url, tmp, "enroll"), n, hosts if ring else hosts[:1])
            contexts = [
                await stack.enter_async_context(open_context(bench_settings(db_url, tmp, host, bus))) for host in hosts
            ]
            capabilities: list[dict[str, Any]] = []  # every service's nodes under their owner: the ring's fleet view
            for ctx in contexts:
                await ReportDriverStatus(ctx.driver, ctx.bus, "127.0.0.1", 60).run_once()
                capabilities += ctx.bus.latest(TOPIC)
            for ctx in contexts:
                ctx.scheduler.take_capabilities(capabilities)
                await ctx.scheduler.refresh()
            request = InstanceRequest(FLAVOR, RequestSpec(FLAVOR), deploy=DeployRequest("http://images/disk.img"))
            for ctx in contexts:
                ctx.scheduler.selector.prepare(request.spec)
            started = time.perf_counter()
            placed = await asyncio.gather(
                *(place_until_full(contexts[i % schedulers], request) for i in range(clients))
            )
            elapsed = time.perf_counter() - started
            async with contexts[0].sessionmaker() as session:
                held = await session.scalar(select(func.count()).where(BareMetalNode.instance_uuid.is_not(None)))
                distinct = await session.scalar(select(func.count(func.distinct(BareMetalNode.instance_uuid))))
                rows = await session.scalar(select(func.count()).select_from(Instance))
            claimed = sum(placed)
            assert claimed == held == distinct == rows == n, (claimed, held, distinct, rows)
            lost = sum(ctx.scheduler.lost_races for ctx in contexts)
            groups = sum(ctx.scheduler.writer.groups_written for ctx in contexts)
    backend = "postgresql" if server_url else "sqlite"
    print(
        f"{backend}: {n} claims by {clients} concurrent clients on {schedulers} scheduler(s) in {elapsed:.2f} s"
        f" = {n / elapsed:.0f} claims/s (lost races retried: {lost}, groups written: {groups})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--schedulers", type=int, default=1, help="HostManagers sharing the database")
    parser.add_argument("--db-url", help="a PostgreSQL server (the bench makes and drops its own database there)")
    parser.add_argument("--ring", action="store_true", help="the nodes belong to the schedulers' services in turn")
    parser.add_argument("--bus", choices=["memory", "postgresql"], default="memory", help="how node changes travel")
    args = parser.parse_args()
    if args.bus == "postgresql" and not args.db_url:
        parser.error("--bus postgresql needs --db-url")
    asyncio.run(measure(args.nodes, args.clients, args.schedulers, args.db_url, args.bus, args.ring))


if __name__ == "__main__":
    main()
