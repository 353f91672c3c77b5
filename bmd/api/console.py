"""``GET /v1/nodes/{node}/console-log``: what the node printed while bmd deployed it (its serial console,
the deploy agent's console tail), from :class:`~bmd.console_log.ConsoleLogs`.

Console output can carry anything a machine prints (passwords typed at a prompt, keys a boot script
echoes), so, unlike the other reads, this one needs the operators' bearer token. ``?tail=<bytes>`` gives
the last bytes only. The answer is the raw bytes as ``text/plain`` (empty when nothing was recorded).
"""

from __future__ import annotations

from aiohttp import web

from bmd.api.app import ctx_of, error_response, is_authenticated
from bmd.db import nodes as q
from bmd.errors import InvalidInput

MAX_TAIL = 1 << 40


def tail_param(request: web.Request) -> int | None:
    raw = request.query.get("tail")
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_TAIL:
        raise InvalidInput(f"tail: expected a number of bytes (0 to {MAX_TAIL}), got {raw[:40]!r}", field="tail")
    return int(raw)


async def console_log(request: web.Request) -> web.StreamResponse:
    if not is_authenticated(request):
        return error_response(401, "unauthorized", "a valid bearer token is required to read a console log")
    ctx = ctx_of(request)
    tail = tail_param(request)
    async with ctx.sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
    data = await ctx.console_logs.aread(node.uuid, tail)
    return web.Response(
        body=data,
        content_type="text/plain",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/nodes/{node}/console-log", console_log)
