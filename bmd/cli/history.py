"""``bmd node history NODE``: what happened to a node, newest first (``GET /v1/nodes/{node}/events``)."""

from __future__ import annotations

from typing import Any

import click

from bmd.cli.base import CliApp, Output, list_output, node_argument, pass_app
from bmd.cli.client import q
from bmd.cli.nodes import group

COLUMNS = ("at", "kind", "event", "change", "actor", "message")
LONG = (*COLUMNS, "from_state", "to_state")
PAGE = 1000


def with_change(event: dict[str, Any]) -> dict[str, Any]:
    """The event with ``change``: ``from -> to`` when it moved the node from one state to another."""
    change = f"{event.get('from_state') or '-'} -> {event.get('to_state') or '-'}" if event.get("to_state") else ""
    return {**event, "change": change}


@group.command("history")
@node_argument()
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, metavar="N", help="the newest N events"
)
@click.option("--all", "every", is_flag=True, help="every event kept (the newest 200)")
@click.option("--json", "as_json", is_flag=True, hidden=True, help="every field as JSON (older spelling)")
@list_output(COLUMNS, LONG)
@pass_app
def history(app: CliApp, out: Output, node: str, limit: int, every: bool, as_json: bool) -> None:
    """What happened to the node, newest first (state changes, maintenance, power, errors)."""
    if as_json:
        out.fmt, out.default, out.long_columns = "json", (), ()
    path, marker = f"/v1/nodes/{q(node)}/events", None
    events: list[dict[str, Any]] = []
    while every or len(events) < limit:
        size = PAGE if every else min(PAGE, limit - len(events))
        page = app.client.get(f"{path}?limit={size}" + ("" if marker is None else f"&marker={q(str(marker))}"))
        events.extend(page["events"])
        marker = page.get("next")
        if marker is None:
            break
    out.rows(events if as_json else [with_change(e) for e in events])
