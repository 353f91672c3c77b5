"""``bmd node power|boot-device|maintenance|clean``: what the BMC does for a node, and operator maintenance."""

from __future__ import annotations

import click

from bmd.cli.base import CliApp, Output, node_argument, pass_app, show_output
from bmd.cli.client import q
from bmd.cli.nodes import group

TARGETS = {"on": "power on", "off": "power off", "reboot": "reboot"}


@group.command("power")
@click.argument("action", type=click.Choice(("on", "off", "reboot", "status")))
@node_argument()
@show_output
@pass_app
def power(app: CliApp, out: Output, action: str, node: str) -> None:
    """Power a node on, off, reboot it, or show its power and provision state (status)."""
    if action == "status":
        out.one(app.client.get(f"/v1/nodes/{q(node)}/states"))
        return
    out.one(app.client.put(f"/v1/nodes/{q(node)}/states/power", {"target": TARGETS[action]}))


@group.command("boot-device")
@node_argument()
@click.argument("device", type=click.Choice(("pxe", "disk", "bios")), required=False)
@click.option("--persistent", is_flag=True, help="every boot, not only the next one")
@show_output
@pass_app
def boot_device(app: CliApp, out: Output, node: str, device: str | None, persistent: bool) -> None:
    """Set the node's boot device (without DEVICE: show it)."""
    path = f"/v1/nodes/{q(node)}/management/boot_device"
    if device is None:
        out.one(app.client.get(path))
        return
    out.one(app.client.put(path, {"boot_device": device, "persistent": persistent}))


@group.command("maintenance")
@click.argument("action", type=click.Choice(("set", "unset")))
@node_argument()
@click.option("--reason", help="why (shown in node list --long and bmd status)")
@show_output
@pass_app
def maintenance(app: CliApp, out: Output, action: str, node: str, reason: str | None) -> None:
    """Put a node in maintenance (bmd leaves it alone) or take it out."""
    path = f"/v1/nodes/{q(node)}/maintenance"
    out.one(app.client.put(path, {"reason": reason}) if action == "set" else app.client.delete(path))


@group.command("clean")
@node_argument()
@show_output
@pass_app
def clean(app: CliApp, out: Output, node: str) -> None:
    """Clean a node in 'clean failed' again (it leaves maintenance)."""
    out.one(app.client.post(f"/v1/nodes/{q(node)}/clean", None))
