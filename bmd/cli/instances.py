"""``bmd instance create|list|show|delete``; create and delete follow the deploy until it settles.

The deploy's progress (one line whenever an instance's state changes) goes to stderr; stdout carries only
the result, in the ``-f`` format, so ``bmd instance create ... -f json`` is parseable however it ends.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from bmd.cli.base import CliApp, Output, list_output, pairs, pass_app, show_output, walk
from bmd.cli.client import q
from bmd.errors import BmdError, InvalidInput

COLUMNS = ("uuid", "node_name", "vm_state", "task_state", "provision_state", "flavor_name")
LONG = (*COLUMNS, "reservation_id", "node", "power_state", "host", "image_ref", "last_error", "created_at")


class DeployFailed(BmdError):
    """An instance ended in error, or did not settle in time: exit 1."""


@click.group("instance")
def group() -> None:
    """Instances: an image deployed on a node the scheduler chose."""


def _networks(values: tuple[str, ...]) -> list[dict[str, Any]]:
    nets = []
    for item in values:
        name, _, vlan = item.partition(":")
        if not name or (vlan and not vlan.isdigit()):
            raise InvalidInput(f"--network {item!r}: expected NAME or NAME:VLAN", field="--network")
        nets.append({"id": name, **({"vlan": int(vlan)} if vlan else {})})
    return nets


def _line(inst: dict[str, Any]) -> str:
    node = inst.get("node_name") or inst.get("node") or "-"
    extra = f"  error: {inst['last_error']}" if inst.get("last_error") else ""
    task = inst.get("task_state") or "-"
    return f"{inst['uuid']}  node {node}  {inst['vm_state']} {task} {inst.get('provision_state') or '-'}{extra}"


def follow(app: CliApp, uuids: list[str], timeout: float, poll: float, until: set[str]) -> list[dict[str, Any]]:
    """Write each instance's state to stderr whenever it changes, until every one settles; their last view."""
    last: dict[str, str] = {}
    shown: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    pending = set(uuids)
    while pending:
        for uuid in sorted(pending):
            inst = shown[uuid] = app.client.get(f"/v1/instances/{q(uuid)}")
            line = _line(inst)
            if last.get(uuid) != line:
                click.echo(line, err=True)
                last[uuid] = line
            if inst["vm_state"] in until and not inst.get("task_state"):
                pending.discard(uuid)
        if pending:
            if time.monotonic() >= deadline:
                raise DeployFailed(f"still in progress after {timeout:g} s: {', '.join(sorted(pending))}")
            time.sleep(poll)
    return [shown[u] for u in uuids]


def _read_text(path: str, option: str) -> str:
    """A file's text for a config-drive option (``-`` is stdin); the error names the option."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{option} {path}: {getattr(err, 'strerror', None) or err}", field=option) from err


def _config_drive(kw: dict[str, Any]) -> dict[str, Any]:
    """The config-drive fields of the request: what cloud-init reads on the deployed OS."""
    out: dict[str, Any] = {}
    keys = [k for path in kw["ssh_key_file"] for k in _read_text(path, "--ssh-key-file").splitlines() if k.strip()]
    if keys:
        out["ssh_keys"] = keys
    if kw["user_data"]:
        out["user_data"] = _read_text(kw["user_data"], "--user-data")
    if kw["network_data"]:
        import json

        text = _read_text(kw["network_data"], "--network-data")
        try:
            out["network_data"] = json.loads(text)
        except ValueError as err:
            raise InvalidInput(f"--network-data {kw['network_data']}: not JSON: {err}", field="--network-data") from err
    if kw["meta"]:
        out["meta"] = pairs(kw["meta"], "--meta")
    return out


@group.command("create")
@click.option("--flavor", required=True)
@click.option("--image-ref", required=True, help="disk image: path or http(s) URL")
@click.option("--image-checksum", help="sha256:<hex> (md5:, sha512: too)")
@click.option("--kernel-ref")
@click.option("--ramdisk-ref")
@click.option("--network", multiple=True, metavar="NAME[:VLAN]")
@click.option("--hint", multiple=True, metavar="KEY=VALUE", help="e.g. same_capability=location")
@click.option("--image-property", multiple=True, metavar="KEY=VALUE")
@click.option("--count", type=click.IntRange(min=1), default=1, help="instances in one all-or-nothing request")
@click.option("--name")
@click.option("--hostname", help="config drive: the deployed OS's hostname")
@click.option("--ssh-key-file", multiple=True, metavar="FILE", help="config drive: OpenSSH public keys")
@click.option("--user-data", metavar="FILE", help="config drive: user data (- for stdin)")
@click.option("--network-data", metavar="FILE", help="config drive: network_data.json")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="config drive: meta data")
@click.option("--no-wait", is_flag=True, help="return once scheduled (print the instances as they are)")
@click.option("--timeout", type=float, default=3600.0, show_default=True)
@click.option("--poll", type=float, default=1.0, show_default=True, help="seconds between state reads")
@list_output(COLUMNS, LONG)
@pass_app
def create(app: CliApp, out: Output, **kw: Any) -> None:
    """Schedule, claim and deploy; follows the deploy until it settles (exit 1 if one ends in error)."""
    body: dict[str, Any] = {
        "flavor": kw["flavor"], "image_ref": kw["image_ref"], "num_instances": kw["count"],
        "hints": pairs(kw["hint"], "--hint"), "image_properties": pairs(kw["image_property"], "--image-property"),
        "networks": _networks(kw["network"]),
    }  # fmt: skip
    for field in ("image_checksum", "kernel_ref", "ramdisk_ref", "name", "hostname"):
        if kw[field]:
            body[field] = kw[field]
    body.update(_config_drive(kw))
    result = app.client.post("/v1/instances", body)
    instances = result["instances"]
    click.echo(f"reservation {result['reservation_id']}: {len(instances)} instance(s) scheduled", err=True)
    if not kw["no_wait"]:
        # Following stops at wait_callback too: the deploy agent may take long to call back.
        instances = follow(app, [i["uuid"] for i in instances], kw["timeout"], kw["poll"], {"active", "error"})
    out.rows(instances)
    failed = [i["uuid"] for i in instances if i["vm_state"] == "error"]
    if failed:
        raise DeployFailed(f"deploy ended in error: {', '.join(failed)} (bmd instance show UUID for last_error)")


@group.command("list")
@click.option("--deleted", is_flag=True, help="deleted instances too")
@click.option("--vm-state", help="only instances in this state (building, active, error, ...)")
@click.option("--flavor", help="only instances of this flavor")
@list_output(COLUMNS, LONG)
@pass_app
def list_(app: CliApp, out: Output, deleted: bool, vm_state: str | None, flavor: str | None) -> None:
    """List instances, every page of them."""
    rows = walk(app.client, "/v1/instances", "instances", {"deleted": "true" if deleted else None})
    out.rows(
        r for r in rows if (vm_state is None or r["vm_state"] == vm_state) and (flavor in (None, r["flavor_name"]))
    )


@group.command("show")
@click.argument("uuid")
@show_output
@pass_app
def show(app: CliApp, out: Output, uuid: str) -> None:
    """Show one instance."""
    out.one(app.client.get(f"/v1/instances/{q(uuid)}"))


@group.command("delete")
@click.argument("uuids", nargs=-1, required=True, metavar="UUID...")
@click.option("--no-wait", is_flag=True, help="return once the teardown started")
@click.option("--timeout", type=float, default=600.0, show_default=True)
@click.option("--poll", type=float, default=1.0, show_default=True)
@pass_app
def delete(app: CliApp, uuids: tuple[str, ...], no_wait: bool, timeout: float, poll: float) -> None:
    """Tear instances down; follows until their nodes are given back."""
    for uuid in uuids:
        app.client.delete(f"/v1/instances/{q(uuid)}")
    if not no_wait:
        follow(app, list(uuids), timeout, poll, {"deleted"})
    for uuid in uuids:
        click.echo(f"instance {uuid} {'deleting' if no_wait else 'deleted'}")
