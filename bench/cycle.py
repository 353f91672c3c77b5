"""The fleet-wide passes over N enrolled nodes, each figure printed with its target (issue 15) beside it.

Enrolls N nodes (default 10,000) in a fresh SQLite file, then times the first pass of report_driver_status
and of update_available_resource (every row read, every compute_nodes row written), the steady passes (1 %
of the nodes claimed or released between passes, as a busy scheduler would), the scheduler's take-in of
each published report (its delta) and its resync (``SchedulerRefresh``), and prints the resident memory of
this process per node after the cycle (trackers, published list, the scheduler's host states and views).

``--serve`` measures a real ``bmd serve`` instead: the same database, the service started as a child
process (fake power driver), its whole resident memory divided by N once it is ready and a few cycles of
its loops have run.

    .venv/bin/python bench/cycle.py [--nodes 10000] [--passes 7] [--serve]
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
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import func, insert, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd.config import Settings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode, utcnow
from bmd.lab.cluster import ServiceProcess
from bmd.scheduler.manager import SchedulerRefresh
from bmd.service import open_context
from bmd.tasks.report_driver_status import TOPIC, ReportDriverStatus
from bmd.tasks.update_available_resource import UpdateAvailableResource


def rss_kib(field: str = "VmRSS", pid: int | str = "self") -> int:
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        if entry.startswith(field + ":"):
            return int(entry.split()[1])
    raise RuntimeError(field)


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


def settings_for(tmp: str) -> Settings:
    return Settings.model_validate(
        {
            "service": {"host": "bench"},
            "database": {"url": f"sqlite+aiosqlite:///{tmp}/bmd.sqlite"},
            "api": {"token_file": f"{tmp}/token"},
            "secrets": {"key_file": f"{tmp}/key"},
            "driver": {"instance_type_extra_specs": ["cpu_arch:x86_64", "location:dc1"]},
        }
    )


def line(label: str, value: str, target: str = "") -> None:
    print(f"{label:<42}{value:>22}  {target}")


async def timed(run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Wall and CPU seconds of one pass (CPU: this process's, the SQLite thread's included; on a machine
    shared with other work the wall time is the noisier)."""
    t0, c0 = time.perf_counter(), time.process_time()
    await run()
    return time.perf_counter() - t0, time.process_time() - c0


async def measure(n: int, passes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(tmp)
        t0 = time.perf_counter()
        await enroll(settings, n)
        print(f"enrolled {n} nodes in {time.perf_counter() - t0:.2f} s")
        async with open_context(settings) as ctx:
            report = ReportDriverStatus(ctx.driver, ctx.bus, "127.0.0.1", 60.0)
            resources = UpdateAvailableResource(ctx.driver, ctx.sessionmaker, 60.0)
            refresh = SchedulerRefresh(ctx.scheduler, 60.0)
            await ctx.driver.get_available_nodes()  # warm the engine's connection and statement caches
            gc.collect()
            base = rss_kib()

            async def take() -> None:
                ctx.scheduler.take_report(ctx.bus.latest(TOPIC))

            steps = {"report": report.run_once, "take": take, "update": resources.run_once, "refresh": refresh.run_once}
            first = {name: await timed(steps[name]) for name in ("update", "report", "take", "refresh")}
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
            for step in range(passes):
                await churn(ctx, n, step)
                for name, run in steps.items():
                    times[name].append(await timed(run))
            gc.collect()
            held = rss_kib()
            assert len(resources.trackers) == n and len(ctx.bus.latest(TOPIC)) == n
            assert len(ctx.scheduler.selector) == n

    def ms(wall_cpu: tuple[float, float]) -> str:
        return f"{wall_cpu[0] * 1000:.0f} ms (cpu {wall_cpu[1] * 1000:.0f})"

    def median(name: str) -> str:
        return ms((statistics.median(t[0] for t in times[name]), statistics.median(t[1] for t in times[name])))

    line("nodes", str(n))
    line("report_driver_status first pass", ms(first["report"]), "target <= 2000 ms at 100,000")
    line("update_available_resource first pass", ms(first["update"]), "target <= 2000 ms at 100,000")
    line("report_driver_status pass, median", median("report"), "target <= 300 ms at 100,000 (1 % churn)")
    line("update_available_resource pass, median", median("update"), "target <= 300 ms at 100,000 (1 % churn)")
    line("scheduler take-in of the first report", ms(first["take"]))
    line("scheduler take-in of a report, median", median("take"))
    line("scheduler refresh first", ms(first["refresh"]))
    line("scheduler refresh, median", median("refresh"), "target <= 100 ms at 100,000 (1 % churn)")
    line("resident memory per node, held", f"{(held - base) / n:.2f} KiB", "(this process; serve: --serve)")


async def measure_serve(n: int, cycles: int) -> None:
    """A real ``bmd serve`` over N nodes: its whole RSS / N once ready and after ``cycles`` loop intervals."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(tmp)
        await enroll(settings, n)
        config = Path(tmp) / "bmd.toml"
        interval = 2.0
        config.write_text(
            f"""
[service]
host = "bench"
state_dir = "{tmp}/state"
[database]
url = "sqlite+aiosqlite:///{tmp}/bmd.sqlite"
[api]
port = 0
token_file = "{tmp}/token"
[secrets]
key_file = "{tmp}/key"
[logging]
format = "json"
[driver]
default_power_driver = "fake"
instance_type_extra_specs = ["cpu_arch:x86_64", "location:dc1"]
[tasks]
host_state_interval = {interval}
update_resources_interval = {interval}
[deploy]
tftp_root = "{tmp}/tftp"
http_root = "{tmp}/http"
image_cache_dir = "{tmp}/cache"
"""
        )
        t0 = time.perf_counter()
        service = ServiceProcess(config)
        try:
            service.started(deadline=600)
            ready = time.perf_counter() - t0
            ready_rss = rss_kib(pid=service.proc.pid)
            peak = ready_rss
            for _ in range(cycles):
                await asyncio.sleep(interval)
                peak = max(peak, rss_kib(pid=service.proc.pid))
            held = rss_kib(pid=service.proc.pid)
        finally:
            service.stop()
    line("nodes", str(n))
    line("bmd serve: service_started after", f"{ready:.1f} s")
    line("bmd serve: RSS per node when started", f"{ready_rss / n:.2f} KiB")
    line(f"bmd serve: RSS per node after {cycles} cycles", f"{held / n:.2f} KiB", "target <= 2 KiB (whole process)")
    line("bmd serve: peak RSS per node over them", f"{peak / n:.2f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--serve", action="store_true", help="measure a real `bmd serve` process's memory")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(measure_serve(args.nodes, args.passes))
    else:
        asyncio.run(measure(args.nodes, args.passes))


if __name__ == "__main__":
    main()
