"""``GET /v1/capabilities`` (the last list report_driver_status published) and per-node capabilities:
``PUT/DELETE /v1/nodes/{node}/capabilities/{key}``; they merge over the service-wide extra specs."""

from __future__ import annotations

from aiohttp import web

from bmd.api.app import ctx_of, json_response, parse_body
from bmd.api.schemas import RESERVED_SPEC_KEYS, CapabilityValue, check_spec_key
from bmd.db import nodes as q
from bmd.errors import InvalidInput, NotFound
from bmd.tasks.report_driver_status import TOPIC


def check_capability_key(key: str) -> str:
    try:
        check_spec_key(key)
    except ValueError as err:
        raise InvalidInput(f"key: {err}", field="key") from err
    if key in RESERVED_SPEC_KEYS:
        raise InvalidInput(f"key: {key!r} is reserved (bmd computes it); choose another name", field="key")
    return key


async def get_capabilities(request: web.Request) -> web.Response:
    latest = ctx_of(request).bus.latest(TOPIC)
    return json_response({"capabilities": latest or [], "published": latest is not None})


async def set_capability(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    key = check_capability_key(request.match_info["key"])
    body = await parse_body(request, CapabilityValue)
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        node.extra_specs = {**node.extra_specs, key: body.value}
    return json_response({"node": node.id, "extra_specs": node.extra_specs})


async def unset_capability(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    key = request.match_info["key"]
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        if key not in node.extra_specs:
            raise NotFound(f"node {node.id} has no capability {key!r}")
        node.extra_specs = {k: v for k, v in node.extra_specs.items() if k != key}
    return json_response({"node": node.id, "extra_specs": node.extra_specs})


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/capabilities", get_capabilities)
    app.router.add_put("/v1/nodes/{node}/capabilities/{key}", set_capability)
    app.router.add_delete("/v1/nodes/{node}/capabilities/{key}", unset_capability)
