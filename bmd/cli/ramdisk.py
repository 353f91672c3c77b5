"""``bmd ramdisk build``: the deploy kernel and ramdisk from Debian packages (see bmd.ramdisk.build)."""

from __future__ import annotations

from pathlib import Path

import click

from bmd.cli.base import CliApp, pass_app

DEFAULT_KERNEL_PACKAGE = "linux-image-cloud-amd64"  # bmd.ramdisk.build's (not imported: start-up time)


@click.group("ramdisk")
def group() -> None:
    """The deploy kernel and ramdisk."""


@group.command("build")
@click.option("--out", help="output directory (default: <service.state_dir>/ramdisk)")
@click.option(
    "--kernel-package",
    default=None,
    help=f"the kernel package or metapackage (default {DEFAULT_KERNEL_PACKAGE}; e.g. linux-image-amd64)",
)
@click.option("--cache", help="where the downloaded .debs are kept for reuse (default: OUT/.debs)")
@click.option(
    "--no-lldp",
    is_flag=True,
    help="leave out tcpdump and its libraries (inspection then reports no LLDP neighbours; ~5 MB smaller)",
)
@pass_app
def build(app: CliApp, out: str | None, kernel_package: str | None, cache: str | None, no_lldp: bool) -> int:
    """Build deploy_kernel and deploy_ramdisk from Debian packages.

    Downloads a Debian kernel and busybox-static with apt-get (kept in OUT/.debs), and writes
    OUT/deploy_kernel, OUT/deploy_ramdisk and OUT/manifest.json. Empty deploy.deploy_kernel and
    deploy.deploy_ramdisk settings mean these files in <service.state_dir>/ramdisk."""
    from bmd.ramdisk import ramdisk_dir
    from bmd.ramdisk.build import DEFAULT_KERNEL_PACKAGE as default_kernel
    from bmd.ramdisk.build import build as build_ramdisk

    target = Path(out) if out else ramdisk_dir(app.settings.service.state_dir)
    debs = Path(cache) if cache else None
    result = build_ramdisk(target, kernel_package=kernel_package or default_kernel, debs_dir=debs, lldp=not no_lldp)
    m = result.manifest
    app.print(
        {
            "out": str(result.out_dir),
            "kernel": f"{m['packages']['kernel']['name']} {m['packages']['kernel']['version']}",
            "busybox": f"{m['packages']['busybox']['name']} {m['packages']['busybox']['version']}",
            "modules": len(m["modules"]),
            "files": m["files"],
            "downloaded": result.downloaded,
            "seconds": round(result.seconds, 1),
        }
    )
    return 0
