"""``bmd capability ...``: what the scheduler sees of each node (report_driver_status's last list), and the
per-node capabilities an operator sets (the same calls as ``bmd node set-capability``)."""

from __future__ import annotations

import click

from bmd.cli.base import CliApp, Output, list_output, node_argument, parse_value, pass_app, show_output, walk
from bmd.cli.client import ApiError, q

COLUMNS = ("node", "host", "deploy_ready", "deploy_blocker", "host_memory_free", "disk_available", "maintenance")


@click.group("capability")
def group() -> None:
    """Capabilities: each node's resources and extra specs as the scheduler last saw them."""


@group.command("list")
@list_output(COLUMNS)
@pass_app
def list_(app: CliApp, out: Output) -> None:
    """List the last published capabilities, every page of them."""
    out.rows(walk(app.client, "/v1/capabilities", "capabilities"))


@group.command("show")
@click.argument("node", metavar="NODE_ID")
@show_output
@pass_app
def show(app: CliApp, out: Output, node: str) -> None:
    """One node's published capabilities (NODE_ID: the node's id, as in capability list)."""
    for row in walk(app.client, "/v1/capabilities", "capabilities"):
        if str(row.get("node")) == node:
            out.one(row)
            return
    raise ApiError(404, {"message": f"no capabilities published for node {node} (yet?)"})


@group.command("set")
@node_argument()
@click.argument("key")
@click.argument("value")
@show_output
@pass_app
def set_(app: CliApp, out: Output, node: str, key: str, value: str) -> None:
    """Set a per-node capability (VALUE is JSON when it parses as JSON); the scheduler sees it next pass."""
    out.one(app.client.put(f"/v1/nodes/{q(node)}/capabilities/{q(key)}", {"value": parse_value(value)}))


@group.command("delete")
@node_argument()
@click.argument("key")
@show_output
@pass_app
def delete(app: CliApp, out: Output, node: str, key: str) -> None:
    """Remove a per-node capability."""
    out.one(app.client.delete(f"/v1/nodes/{q(node)}/capabilities/{q(key)}"))
