"""``bmd port ...``: a node's network interfaces (Ironic calls them ports): list, show, create, delete.

An interface is named by its MAC or its id; ``set`` changes where it is plugged (its MAC is its identity).
"""

from __future__ import annotations

from typing import Any

import click

from bmd.cli.base import CliApp, Output, list_output, node_argument, pass_app, show_output, walk
from bmd.cli.client import ApiError, q
from bmd.errors import InvalidInput

COLUMNS = ("id", "address", "bm_node_id", "vif_uuid")
LONG = (*COLUMNS, "datapath_id", "port_no")


@click.group("port")
def group() -> None:
    """Ports: the nodes' network interfaces, by MAC."""


def find(app: CliApp, ident: str) -> dict[str, Any]:
    """One interface by id (ASCII digits) or MAC; 404 when there is none."""
    if ident.isascii() and ident.isdigit():
        page = (
            app.client.get_all("/v1/interfaces", "interfaces", {"marker": int(ident) - 1, "limit": 1})
            if int(ident)
            else []
        )
        rows = [r for r in page[:1] if str(r["id"]) == ident]
    else:
        rows = app.client.get_all("/v1/interfaces", "interfaces", {"address": ident})
    if not rows:
        raise ApiError(404, {"message": f"port {ident} not found"})
    return dict(rows[0])


@group.command("list")
@click.option("--node", help="only this node's ports (id, uuid or name)")
@click.option("--address", help="only the port with this MAC")
@click.option("--unbound", is_flag=True, help="only ports bound to no vif")
@list_output(COLUMNS, LONG)
@pass_app
def list_(app: CliApp, out: Output, node: str | None, address: str | None, unbound: bool) -> None:
    """List ports, every page of them."""
    rows = walk(app.client, "/v1/interfaces", "interfaces", {"node": node, "address": address})
    out.rows(r for r in rows if not unbound or r["vif_uuid"] is None)


@group.command("show")
@click.argument("port", metavar="ID|MAC")
@show_output
@pass_app
def show(app: CliApp, out: Output, port: str) -> None:
    """Show one port."""
    out.one(find(app, port))


@group.command("create")
@node_argument()
@click.argument("address", metavar="MAC")
@click.option("--datapath-id", help="the OpenFlow switch's datapath id (openflow vif)")
@click.option("--port-no", type=click.IntRange(min=0), help="the switch port number (openflow vif)")
@show_output
@pass_app
def create(app: CliApp, out: Output, node: str, address: str, datapath_id: str | None, port_no: int | None) -> None:
    """Add a port with MAC to NODE."""
    body: dict[str, Any] = {"address": address}
    if datapath_id is not None:
        body["datapath_id"] = datapath_id
    if port_no is not None:
        body["port_no"] = port_no
    out.one(app.client.post(f"/v1/nodes/{q(node)}/interfaces", body))


@group.command("set")
@click.argument("port", metavar="ID|MAC")
@click.option("--datapath-id", help="the OpenFlow switch's datapath id ('' clears it)")
@click.option("--port-no", help="the switch port number ('' clears it)")
@show_output
@pass_app
def set_(app: CliApp, out: Output, port: str, datapath_id: str | None, port_no: str | None) -> None:
    """Change where a port is plugged (refused while a vif is bound to it)."""
    body: dict[str, Any] = {}
    if datapath_id is not None:
        body["datapath_id"] = datapath_id or None
    if port_no is not None:
        if port_no and not port_no.isdigit():
            raise InvalidInput(f"--port-no {port_no!r}: a whole number, or '' to clear it", field="--port-no")
        body["port_no"] = int(port_no) if port_no else None
    if not body:
        raise InvalidInput("give --datapath-id or --port-no", field="arguments")
    row = find(app, port)
    out.one(app.client.patch(f"/v1/nodes/{row['bm_node_id']}/interfaces/{row['id']}", body))


@group.command("delete")
@click.argument("ports", nargs=-1, required=True, metavar="ID|MAC...")
@pass_app
def delete(app: CliApp, ports: tuple[str, ...]) -> None:
    """Remove ports (one bound to a vif is refused)."""
    for port in ports:
        row = find(app, port)
        app.client.delete(f"/v1/nodes/{row['bm_node_id']}/interfaces/{row['id']}")
        click.echo(f"port {port} deleted")
