"""Request → active on QEMU lab machines (TCG), per boot mode: what `make run MACHINES=qemu` does.

    .venv/bin/python bench/qemu_deploy.py --ramdisk DIR [--runs 3] [--modes bios,uefi] [--count 1]

``DIR`` holds a ``bmd ramdisk build`` (deploy_kernel, deploy_ramdisk); without ``--ramdisk`` one is built
into a temporary directory first (Debian's archive is needed). Each run starts a fresh bmd (SQLite in a
temporary directory) with a lab of ``--count`` QEMU VMs of the mode, creates ``--count`` instances of the
demo image at once and prints, per instance, the seconds from the request to ``active`` and to the
deployed image's marker on the VM's serial console.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd.config import Settings
from bmd.context import AppContext
from bmd.lab import Lab
from bmd.lab.quickstart import DEMO_MARKER
from bmd.service import Endpoint, serve_lab


def settings_for(tmp: Path) -> Settings:
    return Settings.model_validate(
        {
            "service": {"host": "bench", "state_dir": str(tmp / "state")},
            "database": {"url": f"sqlite+aiosqlite:///{tmp / 'bmd.sqlite'}"},
            "api": {"host": "127.0.0.1", "port": 0, "token_file": str(tmp / "api-token")},
            "secrets": {"key_file": str(tmp / "secret.key")},
            "logging": {"format": "json", "level": "warning"},
            "driver": {"default_power_driver": "ipmi", "console_interface": "tcp"},
            "ipmi": {"timeout": 2.0, "min_command_interval": 0.0},
            "tasks": {"host_state_interval": 0.2, "update_resources_interval": 0.2},
            "deploy": {
                "tftp_root": str(tmp / "tftpboot"),
                "http_root": str(tmp / "httpboot"),
                "image_cache_dir": str(tmp / "images"),
            },
        }
    )


async def poll(probe: Any, deadline: float) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = await probe()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise TimeoutError("bench: a deploy did not finish in time")


async def one_run(ramdisk: Path, mode: str, count: int) -> list[tuple[float, float]]:
    from bmd.db.engine import make_engine
    from bmd.db.migrate import upgrade

    with tempfile.TemporaryDirectory(prefix="bmd-bench-qemu-") as tmpdir:
        tmp = Path(tmpdir)
        settings = settings_for(tmp)
        engine = make_engine(settings.database)
        await upgrade(engine)
        await engine.dispose()
        shutil.copytree(ramdisk, Path(settings.service.state_dir) / "ramdisk")
        stop = asyncio.Event()
        ready: asyncio.Future[tuple[Lab, AppContext, Endpoint]] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve_lab(
                settings, stop, count=count, machines="qemu", boot_mode=mode, on_ready=lambda *a: ready.set_result(a)
            )
        )
        try:
            lab, ctx, endpoint = await asyncio.wait_for(asyncio.shield(ready), 120)
            demo = Path(settings.service.state_dir) / "lab" / "images" / "demo.img"
            headers = {"Authorization": f"Bearer {ctx.api_token}"}
            async with aiohttp.ClientSession(endpoint.url, headers=headers) as http:

                async def schedulable() -> bool:
                    async with http.post("/v1/schedule", json={"flavor": "lab", "num_instances": count}) as resp:
                        return resp.status == 200 and bool((await resp.json())["ok"])

                await poll(schedulable, 60)
                started = time.monotonic()
                body = {"flavor": "lab", "image_ref": str(demo), "num_instances": count}
                async with http.post("/v1/instances", json=body) as resp:
                    created = await resp.json()
                    assert resp.status == 202, created

                async def active(uuid: str) -> tuple[float, float]:
                    async def state() -> dict[str, Any] | None:
                        async with http.get(f"/v1/instances/{uuid}") as r:
                            inst: dict[str, Any] = await r.json()
                        if inst["vm_state"] == "error":
                            raise RuntimeError(f"deploy failed: {inst['last_error']}")
                        return inst if inst["vm_state"] == "active" else None

                    inst = await poll(state, 600)
                    to_active = time.monotonic() - started
                    serial = lab.machine(f"lab-{int(inst['node']):04d}").serial_log
                    assert serial is not None

                    async def marker() -> bool:
                        text = await asyncio.to_thread(serial.read_text, errors="replace")
                        return DEMO_MARKER in text

                    await poll(marker, 120)
                    return to_active, time.monotonic() - started

                return list(await asyncio.gather(*(active(i["uuid"]) for i in created["instances"])))
        finally:
            stop.set()
            await asyncio.wait_for(task, 120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ramdisk", type=Path, help="a `bmd ramdisk build` directory (default: build one)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="bios,uefi")
    parser.add_argument("--count", type=int, default=1, help="VMs and instances per run")
    args = parser.parse_args()
    from bmd.logs import configure_logging

    configure_logging("json", "warning")
    with tempfile.TemporaryDirectory(prefix="bmd-bench-ramdisk-") as built:
        ramdisk = args.ramdisk
        if ramdisk is None:
            from bmd.ramdisk.build import build

            ramdisk = Path(built)
            print("building the deploy ramdisk ...", flush=True)
            build(ramdisk)
        for mode in args.modes.split(","):
            figures = [f for _ in range(args.runs) for f in asyncio.run(one_run(ramdisk, mode, args.count))]
            actives = sorted(a for a, _ in figures)
            markers = sorted(m for _, m in figures)
            print(
                f"{mode}: {args.count} VM(s) at once, {args.runs} runs: request→active "
                f"median {statistics.median(actives):.1f} s (min {actives[0]:.1f}, max {actives[-1]:.1f}); "
                f"request→deployed image's marker median {statistics.median(markers):.1f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
