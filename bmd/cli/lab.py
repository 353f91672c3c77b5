"""``bmd lab``: serve a simulated fleet of IPMI BMCs on loopback, each with a machine behind it (sim: a
simulated deploy agent; qemu: a VM), write its inventory, optionally enroll it. ``bmd lab image``: write a
marker disk image (it prints a line on the serial console and powers off)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bmd.errors import InvalidInput


def lab_spec(args: argparse.Namespace, bmd_url: str | None = None) -> Any:
    from bmd.lab import LabSpec

    boot_url, bmd_address = args.boot_url or "", args.bmd_address or ""
    if bmd_url and args.machines == "sim" and not boot_url:
        boot_url = bmd_url.rstrip("/") + "/images"  # where bmd serves http_root
    if bmd_url and args.machines == "qemu" and not bmd_address:
        parts = urlsplit(bmd_url)
        bmd_address = f"{parts.hostname}:{parts.port or 80}"
    return LabSpec(
        count=args.count,
        faults=args.faults or "",
        seed=args.seed,
        layout=args.layout,
        first_address=args.first_address,
        port=args.port,
        inventory_path=Path(args.inventory) if args.inventory else None,
        machines=args.machines,
        boot_url=boot_url,
        bmd_address=bmd_address,
        machine_dir=Path(args.machine_dir) if args.machine_dir else None,
        boot_mode=args.boot_mode,
        memory_mb=args.memory,
    )


def write_image(app: Any) -> int:
    from bmd.lab.images import DEFAULT_MARKER, bios_marker_image, uefi_marker_image

    a = app.args
    if not a.out:
        raise InvalidInput("bmd lab image needs --out FILE", field="--out")
    mode = "uefi" if a.boot_mode == "uefi" else "bios"
    make = uefi_marker_image if mode == "uefi" else bios_marker_image
    path = make(Path(a.out), a.marker or DEFAULT_MARKER)
    print(json.dumps({"image": str(path), "boot_mode": mode, "bytes": path.stat().st_size}))
    return 0


def run(app: Any) -> int:
    if app.args.action == "image":
        return write_image(app)
    from bmd.lab import Lab
    from bmd.lab.enroll import enroll_inventory
    from bmd.logs import configure_logging

    needs_url = app.args.enroll or (app.args.machines != "none" and not (app.args.boot_url or app.args.bmd_address))
    spec = lab_spec(app.args, app.client.url if needs_url else None)  # InvalidInput (exit 2) names the option
    configure_logging("auto", "info", stream=sys.stderr)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Lab(spec) as lab:
            shown = {"bmcs": len(lab.bmcs), "first": lab.bmcs[0].address, "inventory": app.args.inventory}
            shown["machines"] = spec.machines
            if spec.machines == "qemu":
                from bmd.lab.qemu import PUBLIC_URL

                shown["note"] = f"the VMs reach bmd at {PUBLIC_URL}: set api.public_url to it"
            print(json.dumps(shown))
            if app.args.enroll:
                token = app.client.token
                if not token:
                    raise InvalidInput(
                        "--enroll needs an API token: set api.token_file or BMD_TOKEN (or --token)", field="--token"
                    )
                result = await enroll_inventory(app.client.url, token, lab.inventory(), replace=app.args.replace)
                print(json.dumps({"enrolled": result}))
            sys.stdout.flush()
            await stop.wait()

    asyncio.run(main())
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("lab", help="serve simulated IPMI BMCs on loopback (demos, tests, benchmarks)")
    p.add_argument("action", nargs="?", choices=("serve", "image"), default="serve",
                   help="serve (default) the lab, or write a marker image (--out, --marker, --boot-mode)")  # fmt: skip
    p.add_argument("--count", type=int, default=8, help="number of BMCs")
    p.add_argument("--faults", help='e.g. "dead=10%%,slow=2:1.5,badpass=1,flap=3:5,stuck=1"')
    p.add_argument("--seed", type=int, default=0, help="which BMCs get which fault")
    p.add_argument("--layout", choices=("addresses", "ports"), default="addresses")
    p.add_argument("--first-address", default="127.1.0.1", help="loopback address of the first BMC")
    p.add_argument("--port", type=int, default=0, help="UDP port (0: a free one)")
    p.add_argument("--inventory", help="write the inventory (bmd node import format) to this file")
    p.add_argument("--enroll", action="store_true", help="enroll the BMCs into bmd at --url")
    p.add_argument("--replace", action="store_true",
                   help="--enroll: nodes already enrolled under these names get this lab's BMC addresses")  # fmt: skip
    p.add_argument("--machines", choices=("sim", "qemu", "none"), default="sim",
                   help="behind each BMC: sim (a simulated deploy agent), qemu (a VM), none")  # fmt: skip
    p.add_argument("--boot-url", dest="boot_url", help="sim: bmd's boot files URL (default <--url>/images)")
    p.add_argument("--bmd-address", dest="bmd_address", help="qemu: HOST:PORT of bmd (default from --url)")
    p.add_argument("--machine-dir", dest="machine_dir", help="qemu: where the VMs' disks and serial logs go")
    p.add_argument("--boot-mode", dest="boot_mode", choices=("bios", "uefi", "mixed"), default="bios")
    p.add_argument("--memory", type=int, default=256, metavar="MB", help="qemu: guest memory")
    p.add_argument("--out", help="image: the file to write")
    p.add_argument("--marker", help="image: the line it prints on the serial console")
    p.set_defaults(func=run)
