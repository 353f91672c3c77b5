"""``bmd node ...`` and ``bmd pxe-ip ...``: inventory verbs over the HTTP API."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bmd.cli.client import q
from bmd.errors import InvalidInput


def parse_value(raw: str) -> Any:
    """A capability value: JSON when it parses as JSON (numbers, lists, objects), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _password(args: argparse.Namespace) -> str | None:
    if args.pm_password_file:
        return Path(args.pm_password_file).read_text().strip()
    if args.pm_password == "-":
        return getpass.getpass("BMC password: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    return args.pm_password or os.environ.get("BMD_PM_PASSWORD") or None


def _capabilities(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--capability {pair!r}: expected KEY=VALUE", field="--capability")
        out[key] = parse_value(value)
    return out


def _root_device(pairs: list[str]) -> dict[str, Any]:
    """``--root-device size=100 --root-device model=X``: Ironic's hints (``size`` in GiB is a number)."""
    out: dict[str, Any] = {}
    for pair in pairs:
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


def node_body(args: argparse.Namespace, *, create: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for field in (
        "name",
        "service_host",
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
    ):
        value = getattr(args, field, None)
        if value is not None:
            body[field] = value
    password = _password(args)
    if password:
        body["pm_password"] = password
    if args.capability:
        body["extra_specs"] = _capabilities(args.capability)
    if args.root_device:
        body["root_device"] = _root_device(args.root_device)
    if create:
        body["interfaces"] = [{"address": mac} for mac in args.mac or []]
    return body


def create(app: Any) -> None:
    app.print(app.client.post("/v1/nodes", node_body(app.args, create=True)))


def update(app: Any) -> None:
    body = node_body(app.args, create=False)
    if not body:
        raise InvalidInput("node update: give at least one field to change", field="arguments")
    app.print(app.client.patch(f"/v1/nodes/{q(app.args.node)}", body))


def list_(app: Any) -> None:
    nodes = app.client.get_all("/v1/nodes", "nodes")
    if app.args.json:
        app.print(nodes)
        return
    cols = ("id", "name", "power_state", "provision_state", "maintenance", "instance_uuid", "pm_address")
    rows = [[str(n.get(c) if n.get(c) is not None else "-") for c in cols] for n in nodes]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def show(app: Any) -> None:
    node = app.client.get(f"/v1/nodes/{q(app.args.node)}")
    if getattr(app.args, "steps", False):
        print(steps_table(node.get("deploy_steps") or []), end="")
        return
    app.print(node)


def steps_table(steps: list[Any]) -> str:
    """The last deploy's steps for a human: one line each, with its start, duration and outcome."""
    if not steps:
        return "no deploy steps recorded\n"
    cols = ("step", "started_at", "seconds", "ok", "detail")
    rows = []
    for s in steps:
        if not isinstance(s, dict):
            continue
        seconds = s.get("seconds")
        ok = s.get("ok")
        rows.append(
            [
                str(s.get("step", "?")),
                str(s.get("started_at", "")),
                "-" if seconds is None else f"{float(seconds):.3f}",
                "running" if ok is None else "ok" if ok else "FAILED",
                " ".join(str(s.get("detail") or "").split())[:120],
            ]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def history_table(events: list[Any]) -> str:
    """A node's history for a human, newest first: when, what, the state it left and reached, who, why."""
    if not events:
        return "no events recorded\n"
    cols = ("at", "kind", "event", "change", "actor", "message")
    rows = []
    for e in events:
        change = f"{e.get('from_state') or '-'} -> {e.get('to_state') or '-'}" if e.get("to_state") else ""
        rows.append(
            [
                str(e.get("at", ""))[:23],
                str(e.get("kind", "")),
                str(e.get("event") or ""),
                change,
                str(e.get("actor") or ""),
                " ".join(str(e.get("message") or "").split())[:120],
            ]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def history(app: Any) -> None:
    """The node's newest ``--limit`` events (pages followed), or all of them with ``--all``."""
    a = app.args
    path, marker = f"/v1/nodes/{q(a.node)}/events", None
    events: list[Any] = []
    while a.all or len(events) < a.limit:
        size = 1000 if a.all else min(1000, a.limit - len(events))
        page = app.client.get(f"{path}?limit={size}" + ("" if marker is None else f"&marker={q(str(marker))}"))
        events.extend(page["events"])
        marker = page.get("next")
        if marker is None:
            break
    if a.json:
        app.print(events)
    else:
        sys.stdout.write(history_table(events))


def console_log(app: Any) -> None:
    a = app.args
    path = f"/v1/nodes/{q(a.node)}/console-log" + ("" if a.tail is None else f"?tail={a.tail}")
    data = app.client.get_bytes(path)
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


def _console(app: Any) -> int:
    from bmd.cli import console

    return console.run(app)


def delete(app: Any) -> None:
    app.client.delete(f"/v1/nodes/{q(app.args.node)}")
    print(f"node {app.args.node} deleted")


def import_(app: Any) -> None:
    path = Path(app.args.file)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InvalidInput(f"inventory {path}: {err}", field="file") from err
    if isinstance(data, list):
        data = {"nodes": data}
    result = app.client.post("/v1/nodes/import", data)
    print(f"imported {result['created']} nodes from {path}")


def inspect(app: Any) -> int:
    """Inspect a node: boot it into the ramdisk in inspect mode and follow it until it settles (exit 1
    when the inspection failed), or with ``--report`` apply a report the collector printed elsewhere."""
    a = app.args
    if a.report:
        path = Path(a.report)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InvalidInput(f"inspection report {path}: {err}", field="report") from err
        app.print(app.client.post(f"/v1/nodes/{q(a.node)}/inspection", data))
        return 0
    app.client.post(f"/v1/nodes/{q(a.node)}/inspect", None)
    if a.no_wait:
        print(f"node {a.node}: inspecting", flush=True)
        return 0
    last, deadline = "", time.monotonic() + a.timeout
    while True:
        node = app.client.get(f"/v1/nodes/{q(a.node)}")
        line = f"node {node['name'] or node['id']}: {node['provision_state']} {node.get('task_state') or ''}".rstrip()
        if line != last:
            print(line, flush=True)
            last = line
        if node["provision_state"] != "inspecting":
            break
        if time.monotonic() > deadline:
            print(f"still inspecting after {a.timeout:g} s", file=sys.stderr)
            return 1
        time.sleep(1.0)
    if node["provision_state"] == "inspect failed":
        print(f"inspection failed: {node.get('last_error')}", file=sys.stderr)
        return 1
    fields = ("cpus", "memory_mb", "local_gb", "boot_mode", "maintenance", "maintenance_reason", "extra_specs")
    app.print({k: node.get(k) for k in fields} | {"interfaces": node.get("interfaces")})
    return 0


def inspection(app: Any) -> None:
    app.print(app.client.get(f"/v1/nodes/{q(app.args.node)}/inspection"))


def set_capability(app: Any) -> None:
    a = app.args
    app.print(app.client.put(f"/v1/nodes/{q(a.node)}/capabilities/{q(a.key)}", {"value": parse_value(a.value)}))


def unset_capability(app: Any) -> None:
    a = app.args
    app.print(app.client.delete(f"/v1/nodes/{q(a.node)}/capabilities/{q(a.key)}"))


def pxe_add(app: Any) -> None:
    app.print(app.client.post("/v1/pxe_ips", {"address": app.args.address, "server_address": app.args.server}))


def pxe_list(app: Any) -> None:
    app.print(app.client.get_all("/v1/pxe_ips", "pxe_ips"))


def pxe_delete(app: Any) -> None:
    app.client.delete(f"/v1/pxe_ips/{q(app.args.id)}")
    print(f"pxe_ip {app.args.id} deleted")


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {raw!r}")
    return int(raw)


def _byte_count(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"--tail: expected a number of bytes, got {raw!r}")
    return int(raw)


def _node_fields(p: argparse.ArgumentParser, create: bool) -> None:
    p.add_argument("--name")
    p.add_argument("--service-host", dest="service_host")
    p.add_argument("--cpus", type=int, required=create)
    p.add_argument("--memory-mb", dest="memory_mb", type=int, required=create)
    p.add_argument("--local-gb", dest="local_gb", type=int, required=create)
    p.add_argument("--pm-driver", dest="pm_driver")
    p.add_argument("--pm-address", dest="pm_address")
    p.add_argument("--pm-user", dest="pm_user")
    p.add_argument("--pm-password", dest="pm_password", help="'-' reads it from stdin ($BMD_PM_PASSWORD)")
    p.add_argument("--pm-password-file", dest="pm_password_file")
    p.add_argument("--prov-mac", dest="prov_mac_address")
    p.add_argument("--prov-vlan-id", dest="prov_vlan_id", type=int)
    p.add_argument("--terminal-port", dest="terminal_port", type=int)
    p.add_argument("--capability", action="append", metavar="KEY=VALUE", help="per-node capability")
    p.add_argument("--boot-mode", dest="boot_mode", choices=("bios", "uefi"), help="how the node's firmware boots")
    p.add_argument(
        "--root-device",
        dest="root_device",
        action="append",
        metavar="HINT=VALUE",
        help="root-disk hint: size (GiB), model, vendor, serial, wwn, name (repeat for several)",
    )
    if create:
        p.add_argument("--mac", action="append", help="an interface MAC (repeat for several)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    node = sub.add_parser("node", help="manage nodes")
    ns = node.add_subparsers(dest="node_command", required=True)
    p = ns.add_parser("create", help="enroll a node")
    _node_fields(p, create=True)
    p.set_defaults(func=create)
    p = ns.add_parser("update", help="change a node's fields")
    p.add_argument("node")
    _node_fields(p, create=False)
    p.set_defaults(func=update)
    p = ns.add_parser("list", help="list nodes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=list_)
    for verb, func, text in (("show", show, "show one node"), ("delete", delete, "delete a node")):
        p = ns.add_parser(verb, help=text)
        p.add_argument("node", help="id, uuid or name")
        p.set_defaults(func=func)
        if verb == "show":
            p.add_argument("--steps", action="store_true", help="the last deploy's steps as a table, not JSON")
    p = ns.add_parser("history", help="what happened to the node, newest first (state changes, maintenance, ...)")
    p.add_argument("node", help="id, uuid or name")
    p.add_argument("--limit", type=_positive, default=50, metavar="N", help="the newest N events (default 50)")
    p.add_argument("--all", action="store_true", help="every event kept (the newest 200)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=history)
    p = ns.add_parser("console-log", help="what the node printed during its deploys (raw bytes; token needed)")
    p.add_argument("node", help="id, uuid or name")
    p.add_argument("--tail", type=_byte_count, metavar="N", help="only the last N bytes")
    p.set_defaults(func=console_log)
    p = ns.add_parser("console", help="attach the terminal to the node's serial console (~. detaches; token needed)")
    p.add_argument("node", help="id, uuid or name")
    p.add_argument("--take-over", action="store_true", help="become the writer even if another client types")
    p.set_defaults(func=_console)
    p = ns.add_parser("import", help="enroll every node of an inventory JSON file (all or nothing)")
    p.add_argument("file")
    p.set_defaults(func=import_)
    p = ns.add_parser(
        "inspect", help="inspect a node: boot it into the ramdisk, which reports its hardware (docs/inspection.md)"
    )
    p.add_argument("node", help="id, uuid or name")
    p.add_argument("--report", help="apply this JSON report (what bmd/agent/inspect.sh printed) instead of booting")
    p.add_argument("--no-wait", dest="no_wait", action="store_true", help="return once the inspection started")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to follow the inspection (1800)")
    p.set_defaults(func=inspect)
    p = ns.add_parser("inspection", help="the node's last inspection report")
    p.add_argument("node", help="id, uuid or name")
    p.set_defaults(func=inspection)
    p = ns.add_parser("set-capability", help="set a per-node capability")
    p.add_argument("node")
    p.add_argument("key")
    p.add_argument("value")
    p.set_defaults(func=set_capability)
    p = ns.add_parser("unset-capability", help="remove a per-node capability")
    p.add_argument("node")
    p.add_argument("key")
    p.set_defaults(func=unset_capability)
    register_power(ns)

    pxe = sub.add_parser("pxe-ip", help="manage the PXE address pool")
    ps = pxe.add_subparsers(dest="pxe_command", required=True)
    p = ps.add_parser("add")
    p.add_argument("address")
    p.add_argument("--server", required=True, help="the PXE server address paired with it")
    p.set_defaults(func=pxe_add)
    p = ps.add_parser("list")
    p.set_defaults(func=pxe_list)
    p = ps.add_parser("delete")
    p.add_argument("id")
    p.set_defaults(func=pxe_delete)


def power(app: Any) -> None:
    a = app.args
    if a.action == "status":
        app.print(app.client.get(f"/v1/nodes/{q(a.node)}/states"))
        return
    target = {"on": "power on", "off": "power off", "reboot": "reboot"}[a.action]
    app.print(app.client.put(f"/v1/nodes/{q(a.node)}/states/power", {"target": target}))


def boot_device(app: Any) -> None:
    a = app.args
    body = {"boot_device": a.device, "persistent": a.persistent}
    app.print(app.client.put(f"/v1/nodes/{q(a.node)}/management/boot_device", body))


def maintenance(app: Any) -> None:
    a = app.args
    path = f"/v1/nodes/{q(a.node)}/maintenance"
    app.print(app.client.put(path, {"reason": a.reason}) if a.action == "set" else app.client.delete(path))


def clean(app: Any) -> None:
    app.print(app.client.post(f"/v1/nodes/{q(app.args.node)}/clean", None))


def register_power(ns: Any) -> None:
    p = ns.add_parser("power", help="power on|off|reboot|status of a node")
    p.add_argument("action", choices=("on", "off", "reboot", "status"))
    p.add_argument("node")
    p.set_defaults(func=power)
    p = ns.add_parser("boot-device", help="set the boot device")
    p.add_argument("node")
    p.add_argument("device", choices=("pxe", "disk", "bios"))
    p.add_argument("--persistent", action="store_true", help="every boot, not only the next one")
    p.set_defaults(func=boot_device)
    p = ns.add_parser("maintenance", help="operator maintenance")
    p.add_argument("action", choices=("set", "unset"))
    p.add_argument("node")
    p.add_argument("--reason")
    p.set_defaults(func=maintenance)
    p = ns.add_parser("clean", help="clean a node in 'clean failed' again (it leaves maintenance)")
    p.add_argument("node")
    p.set_defaults(func=clean)
