"""``bmd flavor ...``: flavors and their extra specs (``set-key``/``unset-key`` as ``nova-manage`` had them)."""

from __future__ import annotations

from typing import Any

import click

from bmd.cli.base import CliApp, Output, list_output, pairs, pass_app, show_output, walk
from bmd.cli.client import q
from bmd.errors import InvalidInput

COLUMNS = ("name", "ram", "vcpus", "disk", "extra_specs")
LONG = ("id", "name", "flavorid", "ram", "vcpus", "disk", "ephemeral", "swap", "extra_specs")


@click.group("flavor")
def group() -> None:
    """Flavors (instance types): what an instance asks for, and the extra specs the scheduler matches."""


@group.command("create")
@click.argument("name")
@click.option("--ram", type=int, required=True, help="memory in MB")
@click.option("--vcpus", type=int, required=True)
@click.option("--disk", type=int, required=True, help="root disk in GB")
@click.option("--ephemeral", type=int, default=0)
@click.option("--swap", type=int, default=0)
@click.option("--flavorid")
@click.option("--property", "properties", multiple=True, metavar="KEY=VALUE", help="an extra spec (repeat)")
@show_output
@pass_app
def create(app: CliApp, out: Output, name: str, flavorid: str | None, properties: tuple[str, ...], **kw: Any) -> None:
    """Create a flavor."""
    body: dict[str, Any] = {"name": name, **kw, "extra_specs": pairs(properties, "--property")}
    if flavorid:
        body["flavorid"] = flavorid
    out.one(app.client.post("/v1/flavors", body))


@group.command("list")
@list_output(COLUMNS, LONG)
@pass_app
def list_(app: CliApp, out: Output) -> None:
    """List flavors, every page of them."""
    out.rows(walk(app.client, "/v1/flavors", "flavors"))


@group.command("show")
@click.argument("name")
@show_output
@pass_app
def show(app: CliApp, out: Output, name: str) -> None:
    """Show one flavor with its extra specs."""
    out.one(app.client.get(f"/v1/flavors/{q(name)}"))


@group.command("delete")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@pass_app
def delete(app: CliApp, names: tuple[str, ...]) -> None:
    """Delete flavors."""
    for name in names:
        app.client.delete(f"/v1/flavors/{q(name)}")
        click.echo(f"flavor {name} deleted")


@group.command("set")
@click.argument("name")
@click.option(
    "--property",
    "properties",
    multiple=True,
    metavar="KEY=VALUE",
    help="set an extra spec, e.g. capabilities:cpu_arch=x86_64 (repeat)",
)
@click.option("--unset", "unset", multiple=True, metavar="KEY", help="remove an extra spec (repeat)")
@show_output
@pass_app
def set_(app: CliApp, out: Output, name: str, properties: tuple[str, ...], unset: tuple[str, ...]) -> None:
    """Set or remove a flavor's extra specs (the only part of a flavor that changes)."""
    specs = pairs(properties, "--property")
    if not specs and not unset:
        raise InvalidInput("give --property KEY=VALUE or --unset KEY", field="arguments")
    if specs:
        app.client.post(f"/v1/flavors/{q(name)}/extra_specs", {"extra_specs": specs})
    for key in unset:
        app.client.delete(f"/v1/flavors/{q(name)}/extra_specs/{q(key)}")
    out.one(app.client.get(f"/v1/flavors/{q(name)}"))


@group.command("set-key")
@click.option("--name", required=True)
@click.option("--key", required=True)
@click.option("--value", required=True)
@pass_app
def set_key(app: CliApp, name: str, key: str, value: str) -> None:
    """Set one extra spec, e.g. --key capabilities:cpu_arch --value x86_64."""
    app.client.put(f"/v1/flavors/{q(name)}/extra_specs/{q(key)}", {"value": value})
    click.echo(f"Key {key} set to {value} on instance type {name}")


@group.command("unset-key")
@click.option("--name", required=True)
@click.option("--key", required=True)
@pass_app
def unset_key(app: CliApp, name: str, key: str) -> None:
    """Remove one extra spec."""
    app.client.delete(f"/v1/flavors/{q(name)}/extra_specs/{q(key)}")
    click.echo(f"Key {key} unset from instance type {name}")
