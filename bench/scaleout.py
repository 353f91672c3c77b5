"""Several bmd services on one PostgreSQL database: claims/s, schedule p99 and takeover time with 1, 2 and 3
services (``bmd serve`` child processes, ring ownership, the PostgreSQL bus; bmd.lab.cluster).

    .venv/bin/python bench/scaleout.py [--nodes 300] [--db-url postgresql://root@127.0.0.1:5432/postgres]

Per service count: enroll ``--nodes`` nodes (fake power), wait until every scheduler sees them all, then
- schedule p99: 200 ``POST /v1/schedule`` dry runs spread over the APIs, one at a time;
- claims/s: one instance request per node plus as many again, all at once, spread over the APIs (every node
  claimed once, the rest refused; checked: no node twice). End to end through the API: each accepted request
  also starts its deploy (VIFs, PXE IP, boot files, power on) in the same processes, so this is the rate of
  instance requests a loaded cluster takes, not of the SQL claim alone (bench/claims.py measures that);
- takeover (2 and 3 services): SIGKILL one service; seconds until no node names it (``service_down_time``
  plus one ownership pass is the bound).
Each count runs in a database of its own, made and dropped here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd.config import DatabaseSettings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode
from bmd.lab.cluster import ServiceProcess, cluster_config, fake_nodes, placeholder_images

DOWN = 3.0


async def owners(engine: Any) -> collections.Counter[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(BareMetalNode.service_host, func.count()).group_by(BareMetalNode.service_host))
        return collections.Counter({host: n for host, n in rows})


async def poll(what: str, probe: Any, deadline: float) -> None:
    end = time.monotonic() + deadline
    while not await probe():
        if time.monotonic() > end:
            raise SystemExit(f"{what}: not within {deadline} s")
        await asyncio.sleep(0.05)


async def run(count: int, nodes: int, base_url: str, tmp: Path) -> dict[str, float]:
    url = make_url(base_url)
    name = f"bmd_scaleout_{uuid.uuid4().hex[:8]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    db_url = url.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    engine = make_engine(DatabaseSettings(url=db_url))
    procs: list[ServiceProcess] = []
    try:
        await upgrade(engine)
        images = placeholder_images(tmp / "images")
        hosts = [f"svc-{i}" for i in range(1, count + 1)]
        procs = [ServiceProcess(cluster_config(tmp / name, h, db_url, images, down_time=DOWN)) for h in hosts]
        apis = [(p.started(), {"Authorization": f"Bearer {p.token()}"}) for p in procs]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            first, auth = apis[0]
            body = {"nodes": fake_nodes(nodes)}
            async with http.post(f"{first}/v1/nodes/import", json=body, headers=auth) as r:
                assert r.status == 201, await r.text()
            flavor = {"name": "bm", "ram": 16384, "vcpus": 8, "disk": 200}
            async with http.post(f"{first}/v1/flavors", json=flavor, headers=auth) as r:
                assert r.status == 201, await r.text()
            for i in range(nodes):
                ip = {"address": f"10.9.{i // 200}.{i % 200 + 10}", "server_address": f"10.8.{i // 200}.{i % 200 + 10}"}
                async with http.post(f"{first}/v1/pxe_ips", json=ip, headers=auth) as r:
                    assert r.status == 201, await r.text()

            async def spread() -> bool:
                return len(await owners(engine)) == count

            await poll("the ring spreads the nodes", spread, 30)
            for api, headers in apis:

                async def sees_all(api: str = api, headers: dict[str, str] = headers) -> bool:
                    body = {"flavor": "bm", "num_instances": nodes}
                    async with http.post(f"{api}/v1/schedule", json=body, headers=headers) as r:
                        return r.status == 200

                await poll(f"{api} sees all nodes", sees_all, 30)

            latencies = []
            for i in range(200):
                api, headers = apis[i % count]
                t0 = time.perf_counter()
                async with http.post(f"{api}/v1/schedule", json={"flavor": "bm"}, headers=headers) as r:
                    assert r.status == 200, await r.text()
                latencies.append(time.perf_counter() - t0)

            request = {"flavor": "bm", "image_ref": str(images / "disk.img"), "networks": [{"id": "n1"}]}

            async def create(i: int) -> tuple[int, Any]:
                api, headers = apis[i % count]
                async with http.post(f"{api}/v1/instances", json=request, headers=headers) as r:
                    return r.status, await r.json()

            t0 = time.perf_counter()
            results = await asyncio.gather(*(create(i) for i in range(2 * nodes)))
            claim_seconds = time.perf_counter() - t0
            placed = [b["instances"][0]["bm_node_id"] for s, b in results if s == 202]
            assert len(placed) == len(set(placed)) == nodes, (len(placed), len(set(placed)))

            takeover = float("nan")
            if count > 1:
                procs[-1].proc.kill()
                killed = time.monotonic()

                async def gone() -> bool:
                    return hosts[-1] not in await owners(engine)

                await poll("takeover", gone, DOWN + 30)
                takeover = time.monotonic() - killed
        return {
            "claims_per_s": nodes / claim_seconds,
            "schedule_p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
            "takeover_s": takeover,
        }
    finally:
        for p in procs:
            p.stop()
        await engine.dispose()
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--db-url", default="postgresql://root@127.0.0.1:5432/postgres")
    parser.add_argument("--services", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    print(f"{args.nodes} nodes, {2 * args.nodes} concurrent instance requests, service_down_time {DOWN} s")
    print(f"{'services':>8} {'claims/s':>9} {'schedule p99':>13} {'takeover':>9}")
    with tempfile.TemporaryDirectory(prefix="bmd-scaleout-") as tmp:
        for count in args.services:
            r = await run(count, args.nodes, args.db_url, Path(tmp) / f"n{count}")
            takeover = "-" if count == 1 else f"{r['takeover_s']:.1f} s"
            print(f"{count:>8} {r['claims_per_s']:>9.0f} {r['schedule_p99_ms']:>10.1f} ms {takeover:>9}")
    print(f"targets: no node twice (checked); takeover within service_down_time + one pass ({DOWN} s + ~0.5 s)")


if __name__ == "__main__":
    asyncio.run(main())
