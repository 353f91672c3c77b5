"""Claims per second on SQLite (or PostgreSQL): 32 concurrent clients place instances through the
HostManager — selection through the configured chain, then the atomic SQL claim and the instance row, in
one transaction per request — until every matching node is taken.

    .venv/bin/python bench/claims.py [--nodes 2000] [--clients 32] [--db-url postgresql+asyncpg://...]

Prints claims/s and checks afterwards that no node holds two instances and every claim has its row.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd.config import Settings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, Instance, InstanceType, Interface, utcnow
from bmd.errors import NoValidHost
from bmd.flavors import Flavor
from bmd.provision.instances import InstanceRequest, claim_instances
from bmd.scheduler.host_state import RequestSpec
from bmd.service import open_context
from bmd.tasks.report_driver_status import TOPIC, ReportDriverStatus


async def enroll(settings: Settings, n: int) -> None:
    engine = make_engine(settings.database)
    await upgrade(engine)
    now = utcnow()
    rows = [
        {
            "uuid": str(uuid.uuid4()),
            "service_host": settings.service.host,
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


async def measure(n: int, clients: int, db_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate(
            {
                "service": {"host": "bench"},
                "database": {"url": db_url or f"sqlite+aiosqlite:///{tmp}/bmd.sqlite"},
                "api": {"token_file": f"{tmp}/token"},
                "secrets": {"key_file": f"{tmp}/key"},
                "deploy": {"image_cache_dir": f"{tmp}/cache"},
            }
        )
        await enroll(settings, n)
        async with open_context(settings) as ctx:
            await ReportDriverStatus(ctx.driver, ctx.bus, "127.0.0.1", 60).run_once()
            ctx.scheduler.take_capabilities(ctx.bus.latest(TOPIC))
            flavor = Flavor(
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
            request = InstanceRequest(flavor, RequestSpec(flavor), image_ref="http://images/disk.img")
            ctx.scheduler.selector.prepare(request.spec)
            claimed = 0

            async def client() -> None:
                nonlocal claimed
                while True:
                    try:
                        placed = await claim_instances(ctx.scheduler, request)
                        claimed += len(placed)
                    except NoValidHost:
                        return

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            elapsed = time.perf_counter() - started
            async with ctx.sessionmaker() as session:
                held = await session.scalar(select(func.count()).where(BareMetalNode.instance_uuid.is_not(None)))
                distinct = await session.scalar(select(func.count(func.distinct(BareMetalNode.instance_uuid))))
                rows = await session.scalar(select(func.count()).select_from(Instance))
            assert claimed == held == distinct == rows == n, (claimed, held, distinct, rows)
    backend = "postgresql" if db_url else "sqlite"
    print(
        f"{backend}: {n} claims by {clients} concurrent clients in {elapsed:.2f} s = {n / elapsed:.0f} claims/s "
        f"(lost races retried: {ctx.scheduler.lost_races})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--db-url", help="a PostgreSQL URL (an empty, throw-away database) instead of SQLite")
    args = parser.parse_args()
    asyncio.run(measure(args.nodes, args.clients, args.db_url))


if __name__ == "__main__":
    main()
