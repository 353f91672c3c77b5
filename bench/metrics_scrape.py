"""A ``GET /metrics`` scrape over real HTTP at N enrolled nodes (default 10,000 and 100,000).

Enrolls the nodes in a fresh SQLite file (bench/cycle.py's rows: 2 % in maintenance; power states mixed
here), starts the real app on 127.0.0.1, takes the scheduler's views in (one resync, as the service does at
start), then prints the median and worst wall time of a scrape, the part of it spent counting the fleet
(the scheduler's counts, kept as views arrive) and the size of the page.

    .venv/bin/python bench/metrics_scrape.py [--sizes 10000 100000] [--scrapes 21]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy import case, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cycle import enroll  # type: ignore[import-not-found]

from bmd.api.app import create_app
from bmd.api.metrics import ServiceCollector
from bmd.config import Settings
from bmd.db.models import BareMetalNode
from bmd.service import open_context


async def measure(n: int, scrapes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate(
            {
                "service": {"host": "bench", "state_dir": f"{tmp}/state"},
                "database": {"url": f"sqlite+aiosqlite:///{tmp}/bmd.sqlite"},
                "api": {"token_file": f"{tmp}/token"},
                "secrets": {"key_file": f"{tmp}/key"},
                "deploy": {"http_root": f"{tmp}/http", "tftp_root": f"{tmp}/tftp", "image_cache_dir": f"{tmp}/c"},
            }
        )
        await enroll(settings, n)
        async with open_context(settings) as ctx:
            async with ctx.sessionmaker.begin() as session:
                states = case((BareMetalNode.id % 3 == 0, "power off"), else_="power on")
                await session.execute(update(BareMetalNode).values(power_state=states))
            await ctx.scheduler.refresh()
            runner = web.AppRunner(create_app(ctx), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            times, body = [], b""
            try:
                async with aiohttp.ClientSession() as http:
                    for _ in range(scrapes):
                        t0 = time.perf_counter()
                        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                            body = await resp.read()
                        times.append(time.perf_counter() - t0)
            finally:
                await runner.cleanup()
            collector = ServiceCollector(ctx)
            counting = []
            for _ in range(scrapes):
                t0 = time.perf_counter()
                list(collector._nodes())
                counting.append(time.perf_counter() - t0)
            line = next(x for x in body.decode().splitlines() if x.startswith("bmd_nodes_in_maintenance "))
            assert float(line.split()[1]) == n // 50 + (1 if n % 50 else 0)
    print(f"nodes                        {n}")
    worst = max(times) * 1000
    print("scrapes, ms", [round(t * 1000, 1) for t in times])
    print(f"scrape over HTTP, median     {statistics.median(times) * 1000:8.1f} ms   (worst {worst:.1f} ms)")
    print(f"counting the fleet, median   {statistics.median(counting) * 1000:8.1f} ms")
    print(f"page size                    {len(body):8d} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--scrapes", type=int, default=21)
    args = parser.parse_args()
    for n in args.sizes:
        asyncio.run(measure(n, args.scrapes))


if __name__ == "__main__":
    main()
