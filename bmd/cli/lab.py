"""``bmd lab``: serve a simulated fleet of IPMI BMCs on loopback, write its inventory, optionally enroll it."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from bmd.errors import InvalidInput


def lab_spec(args: argparse.Namespace) -> Any:
    from bmd.lab import LabSpec

    return LabSpec(
        count=args.count,
        faults=args.faults or "",
        seed=args.seed,
        layout=args.layout,
        first_address=args.first_address,
        port=args.port,
        inventory_path=Path(args.inventory) if args.inventory else None,
    )


def run(app: Any) -> int:
    from bmd.lab import Lab
    from bmd.lab.enroll import enroll_inventory
    from bmd.logs import configure_logging

    spec = lab_spec(app.args)  # InvalidInput (exit 2) names the bad option or fault item
    configure_logging("auto", "info", stream=sys.stderr)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Lab(spec) as lab:
            print(json.dumps({"bmcs": len(lab.bmcs), "first": lab.bmcs[0].address, "inventory": app.args.inventory}))
            if app.args.enroll:
                token = app.client.token
                if not token:
                    raise InvalidInput("--enroll needs the API token (--token or api.token_file)", field="--token")
                result = await enroll_inventory(app.client.url, token, lab.inventory())
                print(json.dumps({"enrolled": result}))
            sys.stdout.flush()
            await stop.wait()

    asyncio.run(main())
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("lab", help="serve simulated IPMI BMCs on loopback (demos, tests, benchmarks)")
    p.add_argument("--count", type=int, default=8, help="number of BMCs")
    p.add_argument("--faults", help='e.g. "dead=10%%,slow=2:1.5,badpass=1,flap=3:5,stuck=1"')
    p.add_argument("--seed", type=int, default=0, help="which BMCs get which fault")
    p.add_argument("--layout", choices=("addresses", "ports"), default="addresses")
    p.add_argument("--first-address", default="127.1.0.1", help="loopback address of the first BMC")
    p.add_argument("--port", type=int, default=0, help="UDP port (0: a free one)")
    p.add_argument("--inventory", help="write the inventory (bmd node import format) to this file")
    p.add_argument("--enroll", action="store_true", help="enroll the BMCs into bmd at --url")
    p.set_defaults(func=run)
