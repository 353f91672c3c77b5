"""``bmd node ...``: enroll, list, show, change and delete nodes; import an inventory; inspect."""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from bmd.cli.base import (
    CliApp,
    F,
    Output,
    list_output,
    node_argument,
    pairs,
    pass_app,
    read_json_file,
    show_output,
    walk,
)
from bmd.cli.client import q
from bmd.errors import BmdError, InvalidInput

COLUMNS = ("id", "name", "power_state", "provision_state", "maintenance", "instance_uuid")
LONG = (
    *COLUMNS,
    "uuid",
    "task_state",
    "pm_driver",
    "pm_address",
    "cpus",
    "memory_mb",
    "local_gb",
    "boot_mode",
    "service_host",
    "conductor_group",
    "maintenance_reason",
    "extra_specs",
    "last_error",
)
STEP_COLUMNS = ("step", "started_at", "seconds", "ok", "detail")


class InspectionError(BmdError):
    """An inspection that ended badly (or did not end in time): exit 1 with its line."""


@click.group("node")
def group() -> None:
    """Nodes: the machines bmd manages (their BMC, resources, capabilities, interfaces)."""


def node_fields(create: bool) -> Callable[[F], F]:
    """The options of ``node create`` and ``node set``: one per field of the API's node body."""
    opts = [
        click.option("--name"),
        click.option("--service-host", help='the owning service (static ownership; derived with "ring")'),
        click.option("--group", "conductor_group", help="the node group: only services serving it own the node"),
        click.option("--cpus", type=int, required=create),
        click.option("--memory-mb", type=int, required=create),
        click.option("--local-gb", type=int, required=create),
        click.option("--pm-driver", help="power driver: ipmi, redfish, fake, ..."),
        click.option("--pm-address", help="the BMC's address"),
        click.option("--pm-user"),
        click.option("--pm-password", help="'-' reads it from stdin ($BMD_PM_PASSWORD)"),
        click.option("--pm-password-file", type=click.Path(dir_okay=False)),
        click.option("--prov-mac", "prov_mac_address"),
        click.option("--prov-vlan-id", type=int),
        click.option("--terminal-port", type=int),
        click.option("--capability", multiple=True, metavar="KEY=VALUE", help="per-node capability (repeat)"),
        click.option("--boot-mode", type=click.Choice(("bios", "uefi")), help="how the node's firmware boots"),
        click.option(
            "--root-device",
            multiple=True,
            metavar="HINT=VALUE",
            help="root-disk hint: size (GiB), model, vendor, serial, wwn, name (repeat for several)",
        ),
    ]
    if create:
        opts.append(click.option("--mac", multiple=True, help="an interface MAC (repeat for several)"))

    def decorate(f: F) -> F:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


FIELDS = (
    "name",
    "service_host",
    "conductor_group",
    "cpus",
    "memory_mb",
    "local_gb",
    "pm_driver",
    "pm_address",
    "pm_user",
    "prov_mac_address",
    "prov_vlan_id",
    "terminal_port",
    "boot_mode",
)


def _password(kw: dict[str, Any]) -> str | None:
    if kw.get("pm_password_file"):
        with open(kw["pm_password_file"], encoding="utf-8") as f:
            return f.read().strip()
    if kw.get("pm_password") == "-":
        return getpass.getpass("BMC password: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    return kw.get("pm_password") or os.environ.get("BMD_PM_PASSWORD") or None


def _root_device(hints: tuple[str, ...]) -> dict[str, Any]:
    """``--root-device size=100 --root-device model=X``: Ironic's hints (``size`` in GiB is a number)."""
    out: dict[str, Any] = {}
    for pair in hints:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise InvalidInput(f"--root-device {pair!r}: expected HINT=VALUE", field="--root-device")
        if key == "size":
            if not value.isdigit():
                raise InvalidInput(f"--root-device size={value!r}: a whole number of GiB", field="--root-device")
            out[key] = int(value)
        else:
            out[key] = value
    return out


def node_body(kw: dict[str, Any], *, create: bool) -> dict[str, Any]:
    body: dict[str, Any] = {f: kw[f] for f in FIELDS if kw.get(f) is not None}
    password = _password(kw)
    if password:
        body["pm_password"] = password
    if kw.get("capability"):
        body["extra_specs"] = pairs(kw["capability"], "--capability", typed=True)
    if kw.get("root_device"):
        body["root_device"] = _root_device(kw["root_device"])
    if create:
        body["interfaces"] = [{"address": mac} for mac in kw.get("mac") or ()]
    return body


@group.command("create")
@node_fields(create=True)
@show_output
@pass_app
def create(app: CliApp, out: Output, **kw: Any) -> None:
    """Enroll a node."""
    out.one(app.client.post("/v1/nodes", node_body(kw, create=True)))


def _set(app: CliApp, out: Output, node: str, kw: dict[str, Any]) -> None:
    body = node_body(kw, create=False)
    if not body:
        raise InvalidInput("give at least one field to change (see --help)", field="arguments")
    out.one(app.client.patch(f"/v1/nodes/{q(node)}", body))


@group.command("set")
@node_argument()
@node_fields(create=False)
@show_output
@pass_app
def set_(app: CliApp, out: Output, node: str, **kw: Any) -> None:
    """Change a node's fields (NODE: id, uuid or name)."""
    _set(app, out, node, kw)


group.add_command(set_, "update")  # the older name of node set: the same command


def matches(node: dict[str, Any], capabilities: dict[str, Any], power_state: str | None) -> bool:
    """The filters the API does not apply itself: capabilities (each KEY=VALUE must match) and power."""
    if power_state is not None and node.get("power_state") != power_state:
        return False
    specs = node.get("extra_specs") or {}
    return all(k in specs and (specs[k] == v or str(specs[k]) == str(v)) for k, v in capabilities.items())


@group.command("list")
@click.option("--provision-state", help="only nodes in this provision state (e.g. available, active)")
@click.option("--power-state", help='only nodes in this power state ("power on", "power off", ...)')
@click.option("--maintenance/--no-maintenance", default=None, help="only nodes in (or out of) maintenance")
@click.option("--associated/--unassociated", default=None, help="only nodes that hold (or do not hold) an instance")
@click.option("--service-host", help="only nodes of this service host")
@click.option("--capability", multiple=True, metavar="KEY=VALUE", help="only nodes with this capability (repeat)")
@click.option("--json", "as_json", is_flag=True, hidden=True, help="every field as JSON (older spelling)")
@list_output(COLUMNS, LONG)
@pass_app
def list_(app: CliApp, out: Output, **kw: Any) -> None:
    """List nodes, every page of them (filters as the API's; --capability and --power-state here)."""
    if kw["as_json"]:
        out.fmt, out.default, out.long_columns = "json", (), ()
    params = {k: kw[k] for k in ("provision_state", "maintenance", "associated", "service_host")}
    caps = pairs(kw["capability"], "--capability", typed=True)
    nodes = walk(app.client, "/v1/nodes", "nodes", params)
    out.rows(n for n in nodes if matches(n, caps, kw["power_state"]))


@group.command("show")
@node_argument()
@click.option("--steps", is_flag=True, help="the last deploy's steps, one row each")
@show_output
@pass_app
def show(app: CliApp, out: Output, node: str, steps: bool) -> None:
    """Show one node (NODE: id, uuid or name)."""
    shown = app.client.get(f"/v1/nodes/{q(node)}")
    if steps:
        Output(out.fmt, out.columns, default=STEP_COLUMNS).rows(step_rows(shown.get("deploy_steps") or []))
        return
    out.one(shown)


def step_rows(steps: list[Any]) -> list[dict[str, Any]]:
    """The last deploy's steps for a human: the step, its start, duration and outcome."""
    rows = []
    for s in steps:
        if not isinstance(s, dict):
            continue
        seconds, ok = s.get("seconds"), s.get("ok")
        rows.append(
            {
                "step": str(s.get("step", "?")),
                "started_at": s.get("started_at"),
                "seconds": None if seconds is None else round(float(seconds), 3),
                "ok": "running" if ok is None else "ok" if ok else "FAILED",
                "detail": " ".join(str(s.get("detail") or "").split())[:120],
            }
        )
    return rows


@group.command("delete")
@click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
@pass_app
def delete(app: CliApp, nodes: tuple[str, ...]) -> None:
    """Delete nodes (each must hold no instance and be available, error or inspect failed)."""
    for node in nodes:
        app.client.delete(f"/v1/nodes/{q(node)}")
        click.echo(f"node {node} deleted")


@group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@pass_app
def import_(app: CliApp, file: str) -> None:
    """Enroll every node of an inventory JSON file (all or nothing)."""
    data = read_json_file(file, "inventory", "file")
    if isinstance(data, list):
        data = {"nodes": data}
    result = app.client.post("/v1/nodes/import", data)
    click.echo(f"imported {result['created']} nodes from {file}")


@group.command("inspect")
@node_argument()
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    help="apply this JSON report (what bmd/agent/inspect.sh printed) instead of booting",
)
@click.option("--no-wait", is_flag=True, help="return once the inspection started")
@click.option("--timeout", type=float, default=1800.0, show_default=True, help="seconds to follow the inspection")
@show_output
@pass_app
def inspect(app: CliApp, out: Output, node: str, report: str | None, no_wait: bool, timeout: float) -> int:
    """Inspect a node: boot it into the ramdisk, which reports its hardware (docs/inspection.md).

    Follows it until it settles (exit 1 when the inspection failed); with --report, applies a report
    the collector printed elsewhere."""
    if report:
        data = read_json_file(report, "inspection report", "report")
        out.one(app.client.post(f"/v1/nodes/{q(node)}/inspection", data))
        return 0
    app.client.post(f"/v1/nodes/{q(node)}/inspect", None)
    if no_wait:
        click.echo(f"node {node}: inspecting", err=True)
        return 0
    last, deadline = "", time.monotonic() + timeout
    while True:
        shown = app.client.get(f"/v1/nodes/{q(node)}")
        line = f"node {shown['name'] or shown['id']}: {shown['provision_state']} {shown.get('task_state') or ''}"
        if line.rstrip() != last:
            last = line.rstrip()
            click.echo(last, err=True)
        if shown["provision_state"] != "inspecting":
            break
        if time.monotonic() > deadline:
            raise InspectionError(f"node {node} is still inspecting after {timeout:g} s")
        time.sleep(1.0)
    if shown["provision_state"] == "inspect failed":
        raise InspectionError(f"inspection of node {node} failed: {shown.get('last_error')}")
    fields = ("cpus", "memory_mb", "local_gb", "boot_mode", "maintenance", "maintenance_reason", "extra_specs")
    out.one({k: shown.get(k) for k in fields} | {"interfaces": shown.get("interfaces")})
    return 0


@group.command("inspection")
@node_argument()
@show_output
@pass_app
def inspection(app: CliApp, out: Output, node: str) -> None:
    """The node's last inspection report."""
    out.one(app.client.get(f"/v1/nodes/{q(node)}/inspection"))


@group.command("console-log")
@node_argument()
@click.option("--tail", type=click.IntRange(min=0), metavar="N", help="only the last N bytes")
@pass_app
def console_log(app: CliApp, node: str, tail: int | None) -> None:
    """What the node printed during its deploys (raw bytes; token needed)."""
    data = app.client.get_bytes(f"/v1/nodes/{q(node)}/console-log" + ("" if tail is None else f"?tail={tail}"))
    stdout = sys.stdout.buffer
    stdout.write(data)
    stdout.flush()


@group.command("console")
@node_argument()
@click.option("--take-over", is_flag=True, help="become the writer even if another client types")
@pass_app
def console(app: CliApp, node: str, take_over: bool) -> int:
    """Attach the terminal to the node's serial console (~. detaches; token needed)."""
    import asyncio

    from bmd.cli.console import attach

    return asyncio.run(attach(app.client.url, app.client.token, node, take_over))
