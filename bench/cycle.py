"""One pass of report_driver_status and of update_available_resource over N enrolled nodes.

Enrolls N nodes (default 10,000) in a fresh SQLite file, then prints the median wall time of each loop's
pass and the resident memory the passes cost per node. update_available_resource is shown twice: the first
pass (every compute_nodes row written) and the steady state (1 % of the nodes change between passes).

    .venv/bin/python bench/cycle.py [--nodes 10000] [--passes 7]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import func, insert, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd.config import Settings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, utcnow
from bmd.service import open_context
from bmd.tasks.report_driver_status import ReportDriverStatus
from bmd.tasks.update_available_resource import UpdateAvailableResource


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


async def enroll(settings: Settings, n: int) -> None:
    engine = make_engine(settings.database)
    await upgrade(engine)
    now = utcnow()
    archs = ("x86_64", "x86_64", "x86_64", "aarch64")
    rows = [
        {
            "uuid": str(uuid.uuid4()),
            "name": f"node-{i:06d}",
            "service_host": settings.service.host,
            "cpus": (8, 16, 32, 64)[i % 4],
            "memory_mb": (16384, 65536, 131072, 262144)[i % 4],
            "local_gb": (200, 500, 1000, 2000)[i % 4],
            "pm_driver": "fake",
            "pm_address": f"127.1.{i // 250}.{i % 250}",
            "registration_status": "done",
            "provision_state": "available",
            "maintenance": i % 50 == 0,
            "extra_specs": {"location": f"rack{i % 40}", "cpu_arch": archs[i % 4]} if i % 3 == 0 else {},
            "power_failures": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(BareMetalNode), rows)
    await engine.dispose()


async def churn(ctx, n: int, step: int) -> None:  # type: ignore[no-untyped-def]
    """Claim or release 1 % of the nodes, as a busy scheduler would between passes."""
    ids = list(range(1 + step % 100, n + 1, 100))
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            update(BareMetalNode)
            .where(BareMetalNode.id.in_(ids))
            .values(instance_uuid=None if step % 2 else func.printf("inst-%d-%d", step, BareMetalNode.id))
        )


async def measure(n: int, passes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate(
            {
                "service": {"host": "bench"},
                "database": {"url": f"sqlite+aiosqlite:///{tmp}/bmd.sqlite"},
                "api": {"token_file": f"{tmp}/token"},
                "secrets": {"key_file": f"{tmp}/key"},
                "driver": {"instance_type_extra_specs": ["cpu_arch:x86_64", "location:dc1"]},
            }
        )
        t0 = time.perf_counter()
        await enroll(settings, n)
        print(f"enrolled {n} nodes in {time.perf_counter() - t0:.2f} s")
        async with open_context(settings) as ctx:
            report = ReportDriverStatus(ctx.driver, ctx.bus, "127.0.0.1", 60.0)
            resources = UpdateAvailableResource(ctx.driver, ctx.sessionmaker, 60.0)
            await ctx.driver.get_available_nodes()  # warm the engine's connection and statement caches
            gc.collect()
            base = rss_kib()
            reset_peak()

            t0 = time.perf_counter()
            await resources.run_once()
            first_update = time.perf_counter() - t0
            report_times, update_times = [], []
            for step in range(passes):
                await churn(ctx, n, step)
                t0 = time.perf_counter()
                await report.run_once()
                report_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await resources.run_once()
                update_times.append(time.perf_counter() - t0)
            peak = rss_kib("VmHWM")
            held = rss_kib()
            assert len(resources.trackers) == n and len(ctx.bus.latest("capabilities")) == n

    print(f"nodes                                   {n}")
    print(f"report_driver_status pass, median       {statistics.median(report_times) * 1000:8.1f} ms")
    print(f"update_available_resource first pass    {first_update * 1000:8.1f} ms  (writes all {n} rows)")
    print(f"update_available_resource pass, median  {statistics.median(update_times) * 1000:8.1f} ms  (1 % churn)")
    print(f"peak RSS over the passes                {peak / 1024:8.1f} MiB  (baseline {base / 1024:.1f} MiB)")
    print(f"resident memory per node, peak          {(peak - base) * 1024 / n:8.0f} B")
    print(f"resident memory per node, held          {(held - base) * 1024 / n:8.0f} B  (trackers + published list)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(measure(args.nodes, args.passes))


if __name__ == "__main__":
    main()
