"""One ``sync_power_states`` pass over a lab fleet: the real task, reading every BMC and writing SQLite.

    .venv/bin/python bench/power_sync.py [--count 1000] [--dead 10%] [--workers 64] [--timeout 2]

Starts ``--count`` lab BMCs (``--dead`` never answer) in worker processes on this machine, enrolls them in
a fresh SQLite file, then prints wall time and bmd's own CPU time (this process; the lab's CPU is on the
same cores but not counted) for:

- the concurrent pass, first (cold: IPMI sessions opened) and second (warm; the dead BMCs, which failed
  the first time, are polled first) — the figure the target is about;
- a warm pass over the live BMCs only (dead nodes in maintenance are skipped by moving them away);
- the same sync done sequentially (one worker, a dead BMC costs its whole timeout): measured on the live
  BMCs plus three dead ones and extrapolated to the fleet;
- the ``ipmi-pyghmi`` driver (pyghmi's client on one thread) over ``--pyghmi-count`` live BMCs, warm.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd.config import Settings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.db.models import BareMetalNode
from bmd.lab import Lab, LabSpec
from bmd.lab.enroll import enroll_inventory
from bmd.logs import configure_logging
from bmd.service import Endpoint, open_context, serve
from bmd.tasks.sync_power_states import SyncPowerStates


async def timed(label: str, run, nodes: int) -> float:  # type: ignore[no-untyped-def]
    cpu, wall = time.process_time(), time.perf_counter()
    await run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:<52} {nodes:>5} BMCs  wall {wall:6.2f} s  bmd cpu {cpu:5.2f} s", flush=True)
    return wall


async def enroll(settings: Settings, lab: Lab) -> None:
    engine = make_engine(settings.database)
    await upgrade(engine)
    await engine.dispose()
    stop = asyncio.Event()
    done = asyncio.Event()

    async def on_ready(ctx, endpoint: Endpoint) -> None:  # type: ignore[no-untyped-def]
        await enroll_inventory(endpoint.url, ctx.api_token, lab.inventory())
        done.set()
        stop.set()

    await serve(settings, stop, on_ready=on_ready)
    assert done.is_set()


async def main(args: argparse.Namespace) -> None:
    configure_logging("console", "warning", stream=sys.stderr)
    spec = LabSpec(count=args.count, faults=f"dead={args.dead}" if args.dead else "")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate(
            {
                "service": {"host": "bench"},
                "database": {"url": f"sqlite+aiosqlite:///{tmp}/bmd.sqlite"},
                "api": {"port": 0, "token_file": f"{tmp}/token"},
                "secrets": {"key_file": f"{tmp}/key"},
                "deploy": {"image_cache_dir": f"{tmp}/cache"},
                "logging": {"level": "warning"},
                "ipmi": {"timeout": args.timeout, "max_in_flight": 256, "min_command_interval": 0},
                "tasks": {"power_sync_workers": args.workers, "power_sync_timeout": args.timeout,
                          "power_sync_max_retries": 1000},
            }
        )  # fmt: skip
        async with Lab(spec) as lab:
            await enroll(settings, lab)
            dead = {b.name for b in lab.bmcs if b.fault is not None}
            async with open_context(settings) as ctx:
                task = SyncPowerStates(ctx.sessionmaker, ctx.power, "bench", settings.tasks)
                n = len(lab.bmcs)
                await timed("concurrent pass, cold (sessions opened)", task.run_once, n)
                await timed("concurrent pass, warm, failed BMCs first", task.run_once, n)
                print(f"    last pass: {task.last_pass}")
                async with ctx.sessionmaker.begin() as session:  # the dead move to another service
                    await session.execute(
                        update(BareMetalNode).where(BareMetalNode.name.in_(dead)).values(service_host="elsewhere")
                    )
                await timed("concurrent pass, warm, live BMCs only", task.run_once, n - len(dead))

                seq = settings.tasks.model_copy(update={"power_sync_workers": 1})
                sequential = SyncPowerStates(ctx.sessionmaker, ctx.power, "bench", seq, release_after=args.timeout)
                live_wall = await timed("sequential pass, warm, live BMCs", sequential.run_once, n - len(dead))
                sample = sorted(dead)[:3]
                async with ctx.sessionmaker.begin() as session:
                    await session.execute(
                        update(BareMetalNode).where(BareMetalNode.name.in_(sample)).values(service_host="bench")
                    )
                with_dead = await timed("sequential pass, warm, live + 3 dead", sequential.run_once, n - len(dead) + 3)
                per_dead = (with_dead - live_wall) / max(len(sample), 1)
                print(f"{'sequential pass, whole fleet (extrapolated)':<52} {n:>5} BMCs  wall "
                      f"{live_wall + per_dead * len(dead):6.2f} s")  # fmt: skip

                async with ctx.sessionmaker.begin() as session:
                    await session.execute(update(BareMetalNode).values(service_host="elsewhere"))
                    live = [b.name for b in lab.bmcs if b.name not in dead][: args.pyghmi_count]
                    await session.execute(
                        update(BareMetalNode)
                        .where(BareMetalNode.name.in_(live))
                        .values(service_host="bench", pm_driver="ipmi-pyghmi")
                    )
                py = SyncPowerStates(ctx.sessionmaker, ctx.power, "bench", settings.tasks)
                await timed("ipmi-pyghmi driver, concurrent, cold", py.run_once, len(live))
                await timed("ipmi-pyghmi driver, concurrent, warm", py.run_once, len(live))
                print(f"    last pass: {py.last_pass}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--dead", default="10%")
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--pyghmi-count", dest="pyghmi_count", type=int, default=200)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
