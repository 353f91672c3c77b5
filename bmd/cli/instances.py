"""``bmd instance create|list|show|delete``; create and delete follow the deploy live until it settles."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bmd.cli.client import q
from bmd.errors import InvalidInput

SETTLED = {"active", "error", "deleted"}


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{what} {item!r}: expected KEY=VALUE", field=what)
        out[key] = value
    return out


def _networks(values: list[str] | None) -> list[dict[str, Any]]:
    nets = []
    for item in values or []:
        name, _, vlan = item.partition(":")
        if not name or (vlan and not vlan.isdigit()):
            raise InvalidInput(f"--network {item!r}: expected NAME or NAME:VLAN", field="--network")
        nets.append({"id": name, **({"vlan": int(vlan)} if vlan else {})})
    return nets


def _line(inst: dict[str, Any]) -> str:
    state = inst.get("provision_state") or "-"
    extra = f"  error: {inst['last_error']}" if inst.get("last_error") else ""
    task = inst.get("task_state") or "-"
    return f"{inst['uuid']}  node {inst.get('node') or '-':>6}  {inst['vm_state']:<9} {task:<14} {state}{extra}"


def follow(app: Any, uuids: list[str], timeout: float, until: set[str]) -> int:
    """Print each instance's state whenever it changes, until every one settles (or the timeout)."""
    last: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    pending = set(uuids)
    while pending and time.monotonic() < deadline:
        for uuid in sorted(pending):
            inst = app.client.get(f"/v1/instances/{q(uuid)}")
            line = _line(inst)
            if last.get(uuid) != line:
                print(line, flush=True)
                last[uuid] = line
            if inst["vm_state"] in until and not inst.get("task_state"):
                pending.discard(uuid)
        if pending:
            time.sleep(app.args.poll)
    if pending:
        print(f"still in progress after {timeout:g} s: {', '.join(sorted(pending))}", file=sys.stderr)
        return 1
    return 0


def create(app: Any) -> int:
    a = app.args
    body: dict[str, Any] = {
        "flavor": a.flavor, "image_ref": a.image_ref, "num_instances": a.count,
        "hints": _pairs(a.hint, "--hint"), "image_properties": _pairs(a.image_property, "--image-property"),
        "networks": _networks(a.network),
    }  # fmt: skip
    for field in ("image_checksum", "kernel_ref", "ramdisk_ref", "name", "hostname"):
        if getattr(a, field):
            body[field] = getattr(a, field)
    body.update(_config_drive(a))
    result = app.client.post("/v1/instances", body)
    uuids = [i["uuid"] for i in result["instances"]]
    print(f"reservation {result['reservation_id']}: {len(uuids)} instance(s) scheduled", flush=True)
    if a.no_wait:
        app.print(result)
        return 0
    # Following stops at wait_callback too: the deploy agent may take long to call back.
    code = follow(app, uuids, a.timeout, {"active", "error"})
    states = [app.client.get(f"/v1/instances/{u}")["vm_state"] for u in uuids]
    return code or (1 if "error" in states else 0)


def _read_text(path: str, option: str) -> str:
    """A file's text for a config-drive option (``-`` is stdin); the error names the option."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{option} {path}: {getattr(err, 'strerror', None) or err}", field=option) from err


def _config_drive(a: argparse.Namespace) -> dict[str, Any]:
    """The config-drive fields of the request: what cloud-init reads on the deployed OS."""
    out: dict[str, Any] = {}
    keys = [k for path in a.ssh_key_file or [] for k in _read_text(path, "--ssh-key-file").splitlines() if k.strip()]
    if keys:
        out["ssh_keys"] = keys
    if a.user_data:
        out["user_data"] = _read_text(a.user_data, "--user-data")
    if a.network_data:
        text = _read_text(a.network_data, "--network-data")
        try:
            out["network_data"] = json.loads(text)
        except ValueError as err:
            raise InvalidInput(f"--network-data {a.network_data}: not JSON: {err}", field="--network-data") from err
    if a.meta:
        out["meta"] = _pairs(a.meta, "--meta")
    return out


def list_(app: Any) -> None:
    for inst in app.client.get_all("/v1/instances", "instances"):
        print(_line(inst))


def show(app: Any) -> None:
    app.print(app.client.get(f"/v1/instances/{q(app.args.uuid)}"))


def delete(app: Any) -> int:
    uuid = app.args.uuid
    app.client.delete(f"/v1/instances/{q(uuid)}")
    if app.args.no_wait:
        return 0
    return follow(app, [uuid], app.args.timeout, {"deleted"})


def register(sub: argparse._SubParsersAction[Any]) -> None:
    inst = sub.add_parser("instance", help="create, list, show and delete instances")
    ins = inst.add_subparsers(dest="instance_command", required=True)
    p = ins.add_parser("create", help="schedule, claim and deploy; follows the deploy live")
    p.add_argument("--flavor", required=True)
    p.add_argument("--image-ref", dest="image_ref", required=True, help="disk image: path or http(s) URL")
    p.add_argument("--image-checksum", dest="image_checksum", help="sha256:<hex> (md5:, sha512: too)")
    p.add_argument("--kernel-ref", dest="kernel_ref")
    p.add_argument("--ramdisk-ref", dest="ramdisk_ref")
    p.add_argument("--network", action="append", metavar="NAME[:VLAN]")
    p.add_argument("--hint", action="append", metavar="KEY=VALUE", help="e.g. same_capability=location")
    p.add_argument("--image-property", dest="image_property", action="append", metavar="KEY=VALUE")
    p.add_argument("--count", type=int, default=1, help="instances in one all-or-nothing request")
    p.add_argument("--name")
    g = p.add_argument_group("config drive (cloud-init's config-2, written to a partition at the disk's end)")
    g.add_argument("--hostname")
    g.add_argument("--ssh-key-file", dest="ssh_key_file", action="append", metavar="FILE", help="OpenSSH public keys")
    g.add_argument("--user-data", dest="user_data", metavar="FILE", help="user data (- for stdin)")
    g.add_argument("--network-data", dest="network_data", metavar="FILE", help="network_data.json")
    g.add_argument("--meta", action="append", metavar="KEY=VALUE")
    p.add_argument("--no-wait", dest="no_wait", action="store_true")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--poll", type=float, default=1.0, help="seconds between state reads")
    p.set_defaults(func=create)
    p = ins.add_parser("list")
    p.set_defaults(func=list_)
    p = ins.add_parser("show")
    p.add_argument("uuid")
    p.set_defaults(func=show)
    p = ins.add_parser("delete", help="tear down; follows until the node is given back")
    p.add_argument("uuid")
    p.add_argument("--no-wait", dest="no_wait", action="store_true")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--poll", type=float, default=1.0)
    p.set_defaults(func=delete)
