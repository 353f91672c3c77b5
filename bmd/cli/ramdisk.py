"""``bmd ramdisk build``: the deploy kernel and ramdisk from Debian packages (see bmd.ramdisk.build)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bmd.ramdisk import ramdisk_dir


def _build(app: Any) -> int:
    from bmd.ramdisk.build import build

    out = Path(app.args.out) if app.args.out else ramdisk_dir(app.settings.service.state_dir)
    debs = Path(app.args.cache) if app.args.cache else None
    result = build(out, kernel_package=app.args.kernel_package, debs_dir=debs, lldp=not app.args.no_lldp)
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


def register(sub: argparse._SubParsersAction[Any]) -> None:
    from bmd.ramdisk.build import DEFAULT_KERNEL_PACKAGE

    rd = sub.add_parser("ramdisk", help="the deploy kernel and ramdisk")
    rdsub = rd.add_subparsers(dest="ramdisk_command", required=True)
    p = rdsub.add_parser(
        "build",
        help="build deploy_kernel and deploy_ramdisk from Debian packages",
        description="Download a Debian kernel and busybox-static with apt-get (kept in OUT/.debs), and write "
        "OUT/deploy_kernel, OUT/deploy_ramdisk and OUT/manifest.json. Empty deploy.deploy_kernel and "
        "deploy.deploy_ramdisk settings mean these files in <service.state_dir>/ramdisk.",
    )
    p.add_argument("--out", help="output directory (default: <service.state_dir>/ramdisk)")
    p.add_argument(
        "--kernel-package",
        default=DEFAULT_KERNEL_PACKAGE,
        help=f"the kernel package or metapackage (default {DEFAULT_KERNEL_PACKAGE}; e.g. linux-image-amd64)",
    )
    p.add_argument("--cache", help="where the downloaded .debs are kept for reuse (default: OUT/.debs)")
    p.add_argument(
        "--no-lldp",
        action="store_true",
        help="leave out tcpdump and its libraries (inspection then reports no LLDP neighbours; ~5 MB smaller)",
    )
    p.set_defaults(func=_build)
