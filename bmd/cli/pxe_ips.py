"""``bmd pxe-ip ...``: the pool of provisioning addresses, each paired with the PXE server address."""

from __future__ import annotations

import ipaddress

import click

from bmd.cli.base import CliApp, Output, list_output, pass_app, show_output, walk
from bmd.cli.client import ApiError, q
from bmd.errors import BmdError, InvalidInput

COLUMNS = ("id", "address", "server_address", "bm_node_id")
MAX_RANGE = 4096


@click.group("pxe-ip")
def group() -> None:
    """The PXE address pool: a deploy takes one address (and its server address) for the node."""


def address_range(spec: str) -> list[str]:
    """``10.0.0.10-10.0.0.50`` (or ``10.0.0.10-50``): every address from the first to the last, both in."""
    first, sep, last = spec.partition("-")
    try:
        start = ipaddress.ip_address(first.strip())
        if sep and "." not in last and ":" not in last:  # 10.0.0.10-50: the last part of the first address
            last = first.rsplit(".", 1)[0] + "." + last
        end = ipaddress.ip_address(last.strip()) if sep else start
    except ValueError as err:
        raise InvalidInput(
            f"--range {spec!r}: {err} (expected FIRST-LAST, e.g. 10.0.0.10-10.0.0.50)", "--range"
        ) from err
    if type(start) is not type(end) or int(end) < int(start):
        raise InvalidInput(f"--range {spec!r}: the last address comes before the first", field="--range")
    if int(end) - int(start) >= MAX_RANGE:
        raise InvalidInput(f"--range {spec!r}: more than {MAX_RANGE} addresses", field="--range")
    return [str(start + i) for i in range(int(end) - int(start) + 1)]


@group.command("add")
@click.argument("address", required=False)
@click.option("--server", required=True, help="the PXE server address paired with it (with --range: the first)")
@click.option("--range", "range_", metavar="FIRST-LAST", help="add every address of this range (servers count up too)")
@list_output(COLUMNS)
@pass_app
def add(app: CliApp, out: Output, address: str | None, server: str, range_: str | None) -> None:
    """Add ADDRESS (or every address of --range) to the pool."""
    if (address is None) == (range_ is None):
        raise InvalidInput("give ADDRESS or --range FIRST-LAST (one of them)", field="address")
    addresses = address_range(range_) if range_ else [address or ""]
    servers = address_range(f"{server}-{ipaddress.ip_address(server) + len(addresses) - 1}") if range_ else [server]
    added = []
    for addr, srv in zip(addresses, servers, strict=True):
        try:
            added.append(app.client.post("/v1/pxe_ips", {"address": addr, "server_address": srv}))
        except ApiError as err:
            if added:
                out.rows(added)
                raise BmdError(f"{err}: {len(added)} of {len(addresses)} added, stopped at {addr}") from err
            raise
    out.rows(added)


@group.command("list")
@click.option("--free", is_flag=True, help="only addresses no node holds")
@list_output(COLUMNS)
@pass_app
def list_(app: CliApp, out: Output, free: bool) -> None:
    """List the pool, every page of it."""
    out.rows(ip for ip in walk(app.client, "/v1/pxe_ips", "pxe_ips") if not free or ip["bm_node_id"] is None)


@group.command("show")
@click.argument("ident", metavar="ID|ADDRESS")
@show_output
@pass_app
def show(app: CliApp, out: Output, ident: str) -> None:
    """Show one pool entry, by id or address."""
    for ip in walk(app.client, "/v1/pxe_ips", "pxe_ips"):
        if ident in (str(ip["id"]), ip["address"]):
            out.one(ip)
            return
    raise ApiError(404, {"message": f"pxe_ip {ident} not found"})


@group.command("delete")
@click.argument("idents", nargs=-1, required=True, metavar="ID|ADDRESS...")
@pass_app
def delete(app: CliApp, idents: tuple[str, ...]) -> None:
    """Remove addresses from the pool (by id or address; one a node holds is refused)."""
    for ident in idents:
        app.client.delete(f"/v1/pxe_ips/{q(ident)}")
        click.echo(f"pxe_ip {ident} deleted")


group.add_command(add, "create")  # the verb every other resource uses
