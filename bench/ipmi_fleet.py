"""Read the power state of a lab fleet: native client (concurrent, sequential) vs pyghmi's client.

    python bench/ipmi_fleet.py [--count 1000] [--dead 10%] [--timeout 2] [--in-flight 256]

Starts a lab of ``--count`` BMCs (``--dead`` of them never answer) in worker processes on this machine,
then prints, for each pass, the wall time, this process's CPU time and the lab's CPU time:

- native, concurrent: cold (a new client: session setup + read), warm (cached sessions), warm with the
  BMCs that failed in the previous pass first (as the power sync task orders them), warm over the live
  BMCs only;
- native, sequential: warm over the live BMCs, plus the dead BMCs one after the other (measured on a
  few of them and extrapolated unless ``--full-sequential``);
- ``ipmi-pyghmi`` (pyghmi's client on one thread), sequential over ``--pyghmi-count`` live BMCs.

Measured 2026-11-25 on the 2-core dev machine (load average 2-3 from other work), defaults
(1000 BMCs, 100 dead, timeout 2 s, attempt 0.5 s, 256 in flight, lab in 2 processes on the same cores):

    native concurrent, cold (all)           1000 calls  wall 3.1-4.1 s  bmd cpu 1.0-1.3 s  lab cpu 0.8-1.0 s
    native concurrent, warm (all)           1000 calls  wall 2.3-2.6 s  bmd cpu 0.4 s      lab cpu 0.25 s
    native concurrent, warm, failed first   1000 calls  wall 2.04 s     bmd cpu 0.4-0.5 s  lab cpu 0.25 s
    native concurrent, warm (live only)      900 calls  wall 0.4-0.7 s  bmd cpu 0.35-0.5 s lab cpu 0.22 s
    native sequential, warm (live only)      900 calls  wall 0.5-0.65 s bmd cpu 0.3-0.4 s  lab cpu 0.27 s
    native sequential, all 1000 (100 dead x 2 s timeout, extrapolated)      ~201 s
    ipmi-pyghmi sequential, cold (900 live) wall 9.7-15.7 s  bmd cpu 3.8 s
    ipmi-pyghmi sequential, warm (900 live) wall 1.8-14.5 s  bmd cpu 1.4-1.6 s (2-16 ms per BMC)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bmd.drivers.power.base import BMCAccess
from bmd.drivers.power.ipmi_pyghmi import PyghmiPower, PyghmiPowerSettings
from bmd.errors import BMCError
from bmd.ipmi import BMCTarget, IPMIClient, IPMISettings
from bmd.lab import Lab, LabBMCInfo, LabSpec

TICK = os.sysconf("SC_CLK_TCK")


def lab_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICK


@dataclass
class Result:
    name: str
    calls: int
    wall: float
    cpu: float
    lab_cpu: float
    outcomes: Counter[str]
    note: str = ""

    def line(self) -> str:
        outcomes = " ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items()))
        return (
            f"{self.name:<44} {self.calls:>5} calls  wall {self.wall:7.2f} s  bmd cpu {self.cpu:6.2f} s  "
            f"lab cpu {self.lab_cpu:6.2f} s  {outcomes} {self.note}"
        )


async def measure(
    name: str,
    lab: Lab,
    bmcs: list[LabBMCInfo],
    call: Callable[[LabBMCInfo], Awaitable[object]],
    concurrent: bool,
) -> Result:
    outcomes: Counter[str] = Counter()

    async def one(b: LabBMCInfo) -> None:
        try:
            await call(b)
            outcomes["ok"] += 1
        except BMCError as err:
            outcomes[type(err).__name__] += 1

    lab_before, cpu_before, started = lab_cpu(lab.pids), time.process_time(), time.perf_counter()
    if concurrent:
        await asyncio.gather(*(one(b) for b in bmcs))
    else:
        for b in bmcs:
            await one(b)
    wall = time.perf_counter() - started
    return Result(name, len(bmcs), wall, time.process_time() - cpu_before, lab_cpu(lab.pids) - lab_before, outcomes)


def target(b: LabBMCInfo) -> BMCTarget:
    return BMCTarget(b.host, b.port, b.username, b.password)


async def main(args: argparse.Namespace) -> None:
    spec = LabSpec(count=args.count, faults=f"dead={args.dead}" if args.dead else "", per_process=args.per_process)
    settings = IPMISettings(timeout=args.timeout, attempt_timeout=args.attempt_timeout, max_in_flight=args.in_flight)
    print(
        f"lab: {args.count} BMCs, dead={args.dead or 0}, {os.cpu_count()} CPUs; client: timeout "
        f"{settings.timeout}s, attempt {settings.attempt_timeout}s, in flight {settings.max_in_flight}"
    )
    results: list[Result] = []
    async with Lab(spec) as lab:
        live = [b for b in lab.bmcs if b.fault is None]
        dead = [b for b in lab.bmcs if b.fault is not None]
        print(f"lab up: {len(lab.pids)} worker processes, {len(live)} live, {len(dead)} dead")

        client = IPMIClient(settings)
        try:

            async def read(b: LabBMCInfo) -> object:
                return await client.get_power_state(target(b))

            results.append(await measure("native concurrent, cold (all)", lab, lab.bmcs, read, True))
            results.append(await measure("native concurrent, warm (all)", lab, lab.bmcs, read, True))
            # What the power sync task does: the BMCs that failed last time go first, so that their
            # timeouts overlap with the others' work instead of trailing behind it.
            failed_first = sorted(lab.bmcs, key=lambda b: b.fault is None)
            results.append(await measure("native concurrent, warm, failed first", lab, failed_first, read, True))
            results.append(await measure("native concurrent, warm (live only)", lab, live, read, True))
            seq = await measure("native sequential, warm (live only)", lab, live, read, False)
            results.append(seq)
            probe = dead if args.full_sequential else dead[:3]
            if probe:
                d = await measure("native sequential, dead (sample)", lab, probe, read, False)
                per_dead = d.wall / len(probe)
                total = seq.wall + per_dead * len(dead)
                d.note = f"-> sequential pass of all {len(lab.bmcs)}: {total:.1f} s" + (
                    "" if args.full_sequential else f" (dead extrapolated from {len(probe)})"
                )
                results.append(d)
        finally:
            await client.close()
        print(f"client stats: {client.stats}")

        if args.pyghmi_count:
            driver = PyghmiPower(PyghmiPowerSettings(timeout=args.timeout * 5, min_command_interval=0))
            sample = live[: args.pyghmi_count]

            async def pyghmi_read(b: LabBMCInfo) -> object:
                return await driver.get_power_state(BMCAccess(b.index, b.address, b.username, b.password))

            try:
                r = await measure("ipmi-pyghmi sequential, cold (live sample)", lab, sample, pyghmi_read, False)
                results.append(r)
                r = await measure("ipmi-pyghmi sequential, warm (live sample)", lab, sample, pyghmi_read, False)
                per = r.wall / max(1, len(sample))
                r.note = f"-> {per * 1000:.1f} ms/BMC, {per * len(live):.1f} s for {len(live)} live"
                results.append(r)
            finally:
                await driver.close()
    print()
    for r in results:
        print(r.line())


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--dead", default="10%", help="how many BMCs never answer: N or N%% (default 10%%)")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-call timeout, seconds")
    parser.add_argument("--attempt-timeout", type=float, default=0.5, help="wait before a retransmission")
    parser.add_argument("--in-flight", type=int, default=256, help="max calls in flight")
    parser.add_argument("--per-process", type=int, default=500, help="lab BMCs per worker process")
    parser.add_argument("--pyghmi-count", type=int, default=200, help="live BMCs for the pyghmi baseline")
    parser.add_argument("--full-sequential", action="store_true", help="really wait for every dead BMC")
    asyncio.run(main(parser.parse_args()))
