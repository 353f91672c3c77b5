"""``bmd lab``: serve a simulated fleet of IPMI BMCs on loopback, each with a machine behind it (sim: a
simulated deploy agent; qemu: a VM), write its inventory, optionally enroll it. ``bmd lab image``: write a
marker disk image (it prints a line on the serial console and powers off)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import click

from bmd.cli.base import CliApp, pass_app
from bmd.errors import InvalidInput


def lab_spec(args: Any, bmd_url: str | None = None) -> Any:
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


def write_image(args: Any) -> int:
    from bmd.lab.images import DEFAULT_MARKER, bios_marker_image, uefi_marker_image

    if not args.out:
        raise InvalidInput("bmd lab image needs --out FILE", field="--out")
    mode = "uefi" if args.boot_mode == "uefi" else "bios"
    make = uefi_marker_image if mode == "uefi" else bios_marker_image
    path = make(Path(args.out), args.marker or DEFAULT_MARKER)
    click.echo(json.dumps({"image": str(path), "boot_mode": mode, "bytes": path.stat().st_size}))
    return 0


@click.command("lab")
@click.argument("action", type=click.Choice(("serve", "image")), default="serve", required=False)
@click.option("--count", type=int, default=8, show_default=True, help="number of BMCs")
@click.option("--faults", help='e.g. "dead=10%,slow=2:1.5,badpass=1,flap=3:5,stuck=1"')
@click.option("--seed", type=int, default=0, help="which BMCs get which fault")
@click.option("--layout", type=click.Choice(("addresses", "ports")), default="addresses", show_default=True)
@click.option("--first-address", default="127.1.0.1", show_default=True, help="loopback address of the first BMC")
@click.option("--port", type=int, default=0, help="UDP port (0: a free one)")
@click.option("--inventory", help="write the inventory (bmd node import format) to this file")
@click.option("--enroll", is_flag=True, help="enroll the BMCs into bmd at --url")
@click.option(
    "--replace", is_flag=True, help="--enroll: nodes already enrolled under these names get this lab's BMC addresses"
)
@click.option(
    "--machines",
    type=click.Choice(("sim", "qemu", "none")),
    default="sim",
    show_default=True,
    help="behind each BMC: sim (a simulated deploy agent), qemu (a VM), none",
)
@click.option("--boot-url", help="sim: bmd's boot files URL (default <--url>/images)")
@click.option("--bmd-address", help="qemu: HOST:PORT of bmd (default from --url)")
@click.option("--machine-dir", help="qemu: where the VMs' disks and serial logs go")
@click.option("--boot-mode", type=click.Choice(("bios", "uefi", "mixed")), default="bios", show_default=True)
@click.option("--memory", type=int, default=256, metavar="MB", help="qemu: guest memory")
@click.option("--out", help="image: the file to write")
@click.option("--marker", help="image: the line it prints on the serial console")
@pass_app
def command(app: CliApp, **kw: Any) -> int:
    """Serve simulated IPMI BMCs on loopback (demos, tests, benchmarks), or write a marker image (image)."""
    args = SimpleNamespace(**kw)
    if args.action == "image":
        return write_image(args)
    from bmd.lab import Lab
    from bmd.lab.enroll import enroll_inventory
    from bmd.logs import configure_logging

    needs_url = args.enroll or (args.machines != "none" and not (args.boot_url or args.bmd_address))
    spec = lab_spec(args, app.client.url if needs_url else None)  # InvalidInput (exit 2) names the option
    configure_logging("auto", "info", stream=sys.stderr)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Lab(spec) as lab:
            shown = {"bmcs": len(lab.bmcs), "first": lab.bmcs[0].address, "inventory": args.inventory}
            shown["machines"] = spec.machines
            if spec.machines == "qemu":
                from bmd.lab.qemu import PUBLIC_URL

                shown["note"] = f"the VMs reach bmd at {PUBLIC_URL}: set api.public_url to it"
            print(json.dumps(shown))
            if args.enroll:
                token = app.client.token
                if not token:
                    raise InvalidInput(
                        "--enroll needs an API token: set api.token_file or BMD_TOKEN (or --token)", field="--token"
                    )
                result = await enroll_inventory(app.client.url, token, lab.inventory(), replace=args.replace)
                print(json.dumps({"enrolled": result}))
            sys.stdout.flush()
            await stop.wait()

    asyncio.run(main())
    return 0
