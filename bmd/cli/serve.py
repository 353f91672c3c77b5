"""``bmd serve``: run the daemon (exit 2 on bad config, 1 when the database or the port is not usable)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from bmd.errors import BmdError, ConfigError


def serve(app: Any) -> int:
    from bmd.logs import configure_logging
    from bmd.service import main

    settings = app.settings  # ConfigError → exit 2 before anything starts
    configure_logging(settings.logging.format, settings.logging.level)
    try:
        a = app.args
        asyncio.run(main(settings, lab_count=a.lab, machines=a.machines, boot_mode=a.boot_mode, memory_mb=a.memory))
    except ConfigError as err:  # e.g. an unknown filter or driver name, found while building the service
        print(f"bmd: error: {err}", file=sys.stderr)
        return 2
    except BmdError as err:
        print(f"bmd: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"bmd: error: cannot listen on {settings.api.host}:{settings.api.port}: {err}", file=sys.stderr)
        return 1
    return 0


def check_config(app: Any) -> int:
    from bmd.logs import redact

    app.print(redact(app.settings.model_dump()))
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument("--lab", type=int, default=0, metavar="N", help="also serve N simulated BMCs and enroll them")
    p.add_argument(
        "--machines",
        choices=("sim", "qemu", "none"),
        default="sim",
        help="with --lab: the machines behind the BMCs (sim: simulated deploy agent; qemu: a VM each)",
    )
    p.add_argument("--boot-mode", dest="boot_mode", choices=("bios", "uefi", "mixed"), default="bios")
    p.add_argument("--memory", type=int, default=256, metavar="MB", help="with --machines qemu: guest memory")
    p.set_defaults(func=serve)
    p = sub.add_parser("config", help="validate the configuration and print the effective settings")
    p.set_defaults(func=check_config)
