"""``/v1/nodes/{node}/inspection``: store and apply an inspection report (the collector's JSON,
``bmd/agent/inspect.sh``), and read the last one back. See docs/inspection.md."""

from __future__ import annotations

from aiohttp import web

from bmd import node_history as history
from bmd.api.app import ctx_of, json_response, parse_body
from bmd.api.body import takes
from bmd.db import nodes as q
from bmd.errors import NotFound
from bmd.inspection.apply import apply_report
from bmd.inspection.report import InspectionReport
from bmd.inspection.rules import compile_rules


@takes(InspectionReport)
async def post_inspection(request: web.Request) -> web.Response:
    """Apply a report to a node that holds no instance (200 with what was set, or why it was not)."""
    ctx = ctx_of(request)
    report = await parse_body(request, InspectionReport)
    rules = compile_rules(ctx.settings.inspection.rules)  # checked at start-up: cannot fail here
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        applied = await apply_report(session, node, report.model_dump(mode="json"), rules)
        if applied.failure is not None:
            node.last_error = f"inspection: {applied.failure}"
            entry = history.Entry(node.id, history.Kind.ERROR, "inspection", message=node.last_error)
            await history.record(session, [entry])
        node_id = node.id
    return json_response({"node_id": node_id, **applied.to_dict()})


async def get_inspection(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    async with ctx.sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
    if node.inspection is None:
        raise NotFound(f"node {node.id} has not been inspected")
    return json_response({"node_id": node.id, "inspected_at": node.inspected_at, "report": node.inspection})


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/nodes/{node}/inspection", post_inspection)
    app.router.add_get("/v1/nodes/{node}/inspection", get_inspection)
