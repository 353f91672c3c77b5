"""``python -m bmd.lab``: serve a lab fleet until interrupted (``bmd lab`` calls the same ``run_lab``)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

from bmd.errors import InvalidInput
from bmd.lab.fleet import Lab, LabSpec, run_lab


def parse_args(argv: list[str] | None = None) -> LabSpec:
    p = argparse.ArgumentParser(prog="python -m bmd.lab", description=__doc__)
    p.add_argument("--count", type=int, default=8, help="number of BMCs (default 8)")
    p.add_argument("--faults", default="", help='e.g. "dead=10%%,slow=2:1.5,badpass=1,flap=3:5" (see bmd.lab.faults)')
    p.add_argument("--seed", type=int, default=0, help="which BMCs get which fault")
    p.add_argument("--layout", choices=("addresses", "ports"), default="addresses")
    p.add_argument("--first-address", default="127.1.0.1")
    p.add_argument("--port", type=int, default=0, help="UDP port (0: a free one)")
    p.add_argument("--inventory", type=Path, default=Path("lab-inventory.json"), help="where to write it")
    p.add_argument("--suites", default="17,3", help="cipher suites served, e.g. 3 or 17,3")
    p.add_argument("--per-process", type=int, default=500)
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="password")
    a = p.parse_args(argv)
    try:
        suites = tuple(int(s) for s in a.suites.split(","))
    except ValueError:
        p.error(f"--suites {a.suites!r}: expected numbers like 17,3")
    return LabSpec(
        count=a.count,
        faults=a.faults,
        seed=a.seed,
        layout=a.layout,
        first_address=a.first_address,
        port=a.port,
        username=a.user,
        password=a.password,
        cipher_suites=suites,
        per_process=a.per_process,
        inventory_path=a.inventory,
    )


async def serve(spec: LabSpec) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def ready(lab: Lab) -> None:
        faults = Counter(b.fault.kind for b in lab.bmcs if b.fault)
        first, last = lab.bmcs[0], lab.bmcs[-1]
        print(
            f"lab: {len(lab.bmcs)} BMCs from {first.address} to {last.address}, {len(lab.pids)} processes, "
            f"faults {dict(faults) or 'none'}; inventory {spec.inventory_path}; Ctrl-C stops",
            flush=True,
        )

    await run_lab(spec, stop, ready)


def main(argv: list[str] | None = None) -> int:
    try:
        spec = parse_args(argv)
    except InvalidInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    asyncio.run(serve(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
