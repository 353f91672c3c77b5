"""One ``audit`` log event per mutating API call: who (the token's id and name, never the token), what
(method and route template), which resource (the route's node, flavor, instance, PXE IP, ... as the caller
named it) and the outcome (the status sent). Refused calls (401, 403) are audited too: they are what an
operator alerts on. The deploy agent's calls (public handlers, authenticated by their own agent token) are
not: they are the agent's protocol, logged by the conductor's own events.

The middleware is the outermost one, so the status is the one the client got, whatever failed inside."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web

from bmd.api.app import CALLER, REQUEST_ID, SAFE_METHODS, Handler
from bmd.api.auth import route_of

log = structlog.get_logger("bmd.audit")

# the collection a route parameter follows names the field: /v1/flavors/{name} -> flavor=<name>
_COLLECTIONS = {
    "nodes": "node",
    "flavors": "flavor",
    "instances": "instance",
    "pxe_ips": "pxe_ip",
    "interfaces": "interface",
    "capabilities": "capability",
    "extra_specs": "extra_spec",
    "tokens": "token_name",  # not "token": the log's redaction drops keys named like token
}


def resource_fields(route: str, values: dict[str, str]) -> dict[str, str]:
    """``{"node": "node-1", "interface": "3"}`` for ``/v1/nodes/{node}/interfaces/{iface}``."""
    fields: dict[str, str] = {}
    previous = ""
    for segment in route.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            param = segment[1:-1].split(":", 1)[0]
            if param in values:
                fields[_COLLECTIONS.get(previous, param)] = values[param][:255]
        previous = segment
    return fields


def outcome(status: int | None) -> str:
    if status is None:
        return "cancelled"
    if status < 400:
        return "ok"
    return "denied" if status in (401, 403) else "failed"


@web.middleware
async def audit(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in SAFE_METHODS or getattr(request.match_info.handler, "_bmd_public", False):
        return await handler(request)
    started = time.monotonic()
    status: int | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        status = 500
        raise
    finally:
        route = route_of(request)
        caller = request.get(CALLER)
        fields: dict[str, Any] = resource_fields(route, dict(request.match_info))
        if not route:  # no route matched: the path, bounded, is all there is to say what was called
            fields["path"] = request.path[:255]
        log.info(
            "audit",
            caller=caller.name if caller is not None else None,
            caller_id=caller.id if caller is not None else None,
            role=caller.role.value if caller is not None else None,
            method=request.method,
            route=route or None,
            status=status,
            outcome=outcome(status),
            seconds=round(time.monotonic() - started, 6),
            request_id=request.get(REQUEST_ID),
            remote=request.remote,
            **fields,
        )
