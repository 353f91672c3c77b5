"""``bmd flavor ...``: flavors and their extra specs (like ``nova-manage instance_type set_key``)."""

from __future__ import annotations

import argparse
from typing import Any

from bmd.cli.client import q


def create(app: Any) -> None:
    a = app.args
    body = {"name": a.name, "ram": a.ram, "vcpus": a.vcpus, "disk": a.disk, "ephemeral": a.ephemeral, "swap": a.swap}
    if a.flavorid:
        body["flavorid"] = a.flavorid
    app.print(app.client.post("/v1/flavors", body))


def list_(app: Any) -> None:
    app.print(app.client.get_all("/v1/flavors", "flavors"))


def show(app: Any) -> None:
    app.print(app.client.get(f"/v1/flavors/{q(app.args.name)}"))


def delete(app: Any) -> None:
    app.client.delete(f"/v1/flavors/{q(app.args.name)}")
    print(f"flavor {app.args.name} deleted")


def set_key(app: Any) -> None:
    a = app.args
    app.client.put(f"/v1/flavors/{q(a.name)}/extra_specs/{q(a.key)}", {"value": a.value})
    print(f"Key {a.key} set to {a.value} on instance type {a.name}")


def unset_key(app: Any) -> None:
    a = app.args
    app.client.delete(f"/v1/flavors/{q(a.name)}/extra_specs/{q(a.key)}")
    print(f"Key {a.key} unset from instance type {a.name}")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    flavor = sub.add_parser("flavor", help="manage flavors (instance types)")
    fs = flavor.add_subparsers(dest="flavor_command", required=True)
    p = fs.add_parser("create", help="create a flavor")
    p.add_argument("name")
    p.add_argument("--ram", type=int, required=True, help="memory in MB")
    p.add_argument("--vcpus", type=int, required=True)
    p.add_argument("--disk", type=int, required=True, help="root disk in GB")
    p.add_argument("--ephemeral", type=int, default=0)
    p.add_argument("--swap", type=int, default=0)
    p.add_argument("--flavorid")
    p.set_defaults(func=create)
    p = fs.add_parser("list")
    p.set_defaults(func=list_)
    for verb, func in (("show", show), ("delete", delete)):
        p = fs.add_parser(verb)
        p.add_argument("name")
        p.set_defaults(func=func)
    p = fs.add_parser("set-key", help="set an extra spec, e.g. --key capabilities:cpu_arch --value x86_64")
    p.add_argument("--name", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--value", required=True)
    p.set_defaults(func=set_key)
    p = fs.add_parser("unset-key", help="remove an extra spec")
    p.add_argument("--name", required=True)
    p.add_argument("--key", required=True)
    p.set_defaults(func=unset_key)
