"""``bmd status``: the fleet at a glance, like ``systemctl status`` for bmd.

Nodes by power and by provision state, the nodes in maintenance with their reasons, the health of the
service (database, DHCP) and of every loop with its last pass (from ``/healthz``), and the lab when
``bmd serve --lab N`` runs one. ``-f json|yaml`` gives the same as one object for scripts. Exit 0 when
the service is ok, 1 when it is degraded or failing (a monitor can run ``bmd status -f json``).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import click

from bmd.cli.base import CliApp, pass_app, walk
from bmd.cli.client import ApiError
from bmd.cli.output import FORMATS, Output, text_of


def gather(app: CliApp) -> dict[str, Any]:
    """The summary as one object: /healthz (a 503, starting, stopping or failing, still carries the report)
    and every node."""
    try:
        health = app.client.get("/healthz")
    except ApiError as err:
        if err.status != 503 or "tasks" not in err.body:
            raise
        health = err.body
    nodes = list(walk(app.client, "/v1/nodes", "nodes"))
    maintenance = [
        {"id": n["id"], "name": n["name"], "reason": n.get("maintenance_reason"), "set_by": n.get("maintenance_set_by")}
        for n in nodes
        if n.get("maintenance")
    ]
    loops = [
        {
            "loop": name,
            "status": t.get("status"),
            "interval": t.get("interval"),
            "last_success_age": t.get("last_success_age"),
            "last_duration": t.get("last_duration"),
            "passes": t.get("passes"),
            "failures": t.get("failures"),
            "last_error": t.get("last_error"),
        }
        for name, t in sorted((health.get("tasks") or {}).items())
    ]
    return {
        "url": app.client.url,
        "status": health.get("status"),
        "service": health.get("service"),
        "uptime_s": health.get("uptime_s"),
        "checks": health.get("checks") or {},
        "nodes": {
            "total": len(nodes),
            "by_power_state": dict(Counter(str(n.get("power_state")) for n in nodes).most_common()),
            "by_provision_state": dict(Counter(str(n.get("provision_state")) for n in nodes).most_common()),
            "with_instance": sum(1 for n in nodes if n.get("instance_uuid")),
        },
        "maintenance": maintenance,
        "loops": loops,
        "lab": health.get("lab"),
    }


def _age(seconds: Any) -> str:
    if seconds is None:
        return "never"
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def _uptime(seconds: Any) -> str:
    s = int(float(seconds or 0))
    return time.strftime("%H:%M:%S", time.gmtime(s)) if s < 86400 else f"{s // 86400} d {time.gmtime(s).tm_hour} h"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def render(summary: dict[str, Any]) -> None:
    """The human view: a few lines, then the maintenance and loop tables."""
    echo = click.echo
    echo(
        f"bmd at {summary['url']}: {summary['status']} "
        f"(service {summary['service']}, up {_uptime(summary['uptime_s'])})"
    )
    checks = summary["checks"]
    db, dhcp = checks.get("database") or {}, checks.get("dhcp") or {}
    db_text = f"{db.get('status')}" + (f" ({db['latency_ms']} ms)" if db.get("latency_ms") is not None else "")
    if db.get("error"):
        db_text += f": {db['error']}"
    echo(f"database: {db_text}; dhcp: {dhcp.get('provider', '-')} {dhcp.get('status', '-')}")
    nodes = summary["nodes"]
    echo(f"nodes: {nodes['total']} ({nodes['with_instance']} with an instance)")
    echo(f"  by power state:     {_counts(nodes['by_power_state'])}")
    echo(f"  by provision state: {_counts(nodes['by_provision_state'])}")
    maint = summary["maintenance"]
    echo(f"in maintenance: {len(maint)}")
    if maint:
        Output(default=("id", "name", "set_by", "reason")).rows(maint)
    echo("loops:")
    rows = [
        {**loop, "last_success": _age(loop["last_success_age"]), "every": f"{loop['interval']:g} s"}
        for loop in summary["loops"]
    ]
    Output(default=("loop", "status", "every", "last_success", "passes", "failures", "last_error")).rows(rows)
    lab = summary.get("lab")
    if lab:
        echo(
            f"lab: {lab.get('bmcs')} BMCs ({text_of(lab.get('first_bmc'))} .. {text_of(lab.get('last_bmc'))}), "
            f"machines {lab.get('machines')}, boot mode {lab.get('boot_mode')}"
        )


@click.command("status")
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table: for a human; json, yaml: one object; value, csv: the loops",
)
@pass_app
def status(app: CliApp, fmt: str) -> int:
    """The fleet summary: nodes by power and provision state, maintenance, loops, the lab (exit 1 unless ok)."""
    summary = gather(app)
    if fmt == "table":
        render(summary)
    elif fmt in ("json", "yaml"):
        Output(fmt).one(summary)
    else:
        Output(fmt, default=("loop", "status", "last_success_age", "failures")).rows(summary["loops"])
    return 0 if summary["status"] == "ok" else 1
