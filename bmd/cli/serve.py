"""``bmd serve``: run the daemon (exit 2 on bad config, 1 when the database or the port is not usable);
``bmd config``: validate the configuration and print the effective settings."""

from __future__ import annotations

import asyncio

import click

from bmd.cli.base import CliApp, pass_app
from bmd.errors import BmdError, ConfigError


@click.command("serve")
@click.option("--lab", type=int, default=0, metavar="N", help="also serve N simulated BMCs and enroll them")
@click.option(
    "--machines",
    type=click.Choice(("sim", "qemu", "none")),
    default="sim",
    show_default=True,
    help="with --lab: the machines behind the BMCs (sim: simulated deploy agent; qemu: a VM each)",
)
@click.option("--boot-mode", type=click.Choice(("bios", "uefi", "mixed")), default="bios", show_default=True)
@click.option("--memory", type=int, default=256, metavar="MB", help="with --machines qemu: guest memory")
@pass_app
def serve(app: CliApp, lab: int, machines: str, boot_mode: str, memory: int) -> int:
    """Run the daemon."""
    from bmd.logs import configure_logging
    from bmd.service import main

    settings = app.settings  # ConfigError → exit 2 before anything starts
    configure_logging(settings.logging.format, settings.logging.level)
    try:
        asyncio.run(main(settings, lab_count=lab, machines=machines, boot_mode=boot_mode, memory_mb=memory))
    except ConfigError:  # e.g. an unknown filter or driver name, found while building the service: exit 2
        raise
    except OSError as err:
        raise ServeError(f"cannot listen on {settings.api.host}:{settings.api.port}: {err}") from err
    return 0


class ServeError(BmdError):
    """The daemon could not start (exit 1)."""


@click.command("config")
@pass_app
def check_config(app: CliApp) -> int:
    """Validate the configuration and print the effective settings (secrets redacted)."""
    from bmd.logs import redact

    app.print(redact(app.settings.model_dump()))
    return 0
