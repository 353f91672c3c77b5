"""What reading every node's ``NodeView`` costs (``bmd.node_events.read_views``: the scheduler's resync, the
PostgreSQL listener's resync), at fleet scale, on SQLite or PostgreSQL.

    .venv/bin/python bench/node_views.py [--nodes 100000] [--runs 7]
        [--db-url postgresql://root@127.0.0.1:5432/postgres]

Fills ``--nodes`` rows (BMC fields with an encrypted-size password, a few distinct per-node extra specs,
as an enrolled fleet has), then times ``read_views`` of every node, and of 500 ids (one chunk, what a
notification's read costs). Prints the median and the fastest run in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.claims import database
from bmd.config import DatabaseSettings
from bmd.db.engine import make_engine, make_sessionmaker
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, utcnow
from bmd.node_events import read_views


async def fill(db_url: str, nodes: int) -> None:
    engine = make_engine(DatabaseSettings(url=db_url))
    await upgrade(engine)
    now = utcnow()
    rows = [
        {
            "uuid": str(uuid.UUID(int=i + 1)),
            "name": f"n{i:06d}",
            "service_host": f"svc{i % 3}",
            "cpus": 8,
            "memory_mb": 16384,
            "local_gb": 200,
            "pm_driver": "ipmi",
            "pm_address": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:623",
            "pm_user": "admin",
            "pm_password": "gAAAAA" + "x" * 134,  # a Fernet token's length
            "registration_status": "done",
            "provision_state": "available",
            "maintenance": False,
            "extra_specs": {"location": f"rack{i % 20}"},
            "power_state": "power off",
            "power_failures": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(nodes)
    ]
    async with engine.begin() as conn:
        for start in range(0, nodes, 10_000):
            await conn.execute(insert(BareMetalNode), rows[start : start + 10_000])
    await engine.dispose()


async def timed(runs: int, step: Callable[[], Awaitable[object]]) -> list[float]:
    await step()  # warm: statement cache, page cache
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await step()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def measure(nodes: int, runs: int, server_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with database(server_url, tmp) as db_url:
            await fill(db_url, nodes)
            engine = make_engine(DatabaseSettings(url=db_url))
            sessionmaker = make_sessionmaker(engine)
            try:

                async def every() -> None:
                    async with sessionmaker() as session:
                        assert len(await read_views(session)) == nodes

                async def chunk() -> None:
                    async with sessionmaker() as session:
                        assert len(await read_views(session, range(1, 501))) == min(500, nodes)

                backend = "postgresql" if server_url else "sqlite"
                for label, step in ((f"all {nodes}", every), ("500 ids", chunk)):
                    samples = await timed(runs, step)
                    print(
                        f"{backend}: read_views of {label}: median {statistics.median(samples):.1f} ms,"
                        f" fastest {min(samples):.1f} ms ({runs} runs)"
                    )
            finally:
                await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--db-url", help="a PostgreSQL server (the bench makes and drops its own database there)")
    args = parser.parse_args()
    asyncio.run(measure(args.nodes, args.runs, args.db_url))


if __name__ == "__main__":
    main()
