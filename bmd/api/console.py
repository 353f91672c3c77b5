"""``GET /v1/nodes/{node}/console-log``: what the node printed while bmd deployed it (its serial console,
the deploy agent's console tail), from :class:`~bmd.console_log.ConsoleLogs`.

``GET /v1/nodes/{node}/console`` upgrades to a websocket attached to the node's live serial console
(:mod:`bmd.console_hub`, docs/console.md): binary frames carry the console's bytes both ways; text frames
are JSON control messages. Server → client: ``{"event": "attached"|"role", "role": "writer"|"reader"}``,
``{"event": "error", "message": ...}``, ``{"event": "closed", "reason": ...}``. Client → server:
``{"op": "take_over"}`` (become the writer), ``{"op": "break"}``. ``?take_over=1`` takes over on attach.

Console output can carry anything a machine prints (passwords typed at a prompt, keys a boot script
echoes), so, unlike the other reads, this one needs the operators' bearer token. ``?tail=<bytes>`` gives
the last bytes only. The answer is the raw bytes as ``text/plain`` (empty when nothing was recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from bmd.api.app import CTX, ctx_of, error_response, is_authenticated, untrusted_response
from bmd.api.auth import AUTHENTICATOR
from bmd.api.openapi import answers, query, query_bool, query_int
from bmd.auth import Role
from bmd.console_hub import Attachment, ConsoleHub, TerminalServer, describe
from bmd.context import AppContext
from bmd.db import nodes as q
from bmd.errors import BmdError, InvalidInput

log = structlog.get_logger(__name__)
HUB = "console_hub"

MAX_TAIL = 1 << 40


def tail_param(request: web.Request) -> int | None:
    raw = request.query.get("tail")
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_TAIL:
        raise InvalidInput(f"tail: expected a number of bytes (0 to {MAX_TAIL}), got {raw[:40]!r}", field="tail")
    return int(raw)


@answers(
    200, media="text/plain", description="the recorded bytes (empty when nothing was recorded); bearer token required"
)
@query(query_int("tail", "only the last this many bytes"))
async def console_log(request: web.Request) -> web.StreamResponse:
    """What the node printed while bmd deployed, cleaned or inspected it. Needs an operator's token, unlike
    the other reads (a console can show secrets)."""
    if not is_authenticated(request):
        return untrusted_response(request, "to read a console log")
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


def hub_of(ctx: AppContext) -> ConsoleHub:
    hub = ctx.extras.get(HUB)
    if hub is None:
        hub = ctx.extras[HUB] = ConsoleHub(ctx.power, ctx.console_logs)
    assert isinstance(hub, ConsoleHub)
    return hub


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "")
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise InvalidInput(f"{name}: expected true or false, got {raw[:40]!r}", field=name)


@answers(101, description="the websocket: binary frames carry the console's bytes, text frames JSON control messages")
@query(query_bool("take_over", "become the writer on attach"))
async def console(request: web.Request) -> web.StreamResponse:
    """A websocket attached to the node's live serial console (docs/console.md). Needs an operator's token.
    Binary frames carry the console's bytes both ways; text frames are JSON control messages
    (``{"op": "take_over"}``, ``{"op": "break"}``; the server sends ``attached``, ``role``, ``error``,
    ``closed`` events)."""
    if not is_authenticated(request):
        return untrusted_response(request, "to attach to a console")
    ctx = ctx_of(request)
    take_over = _flag(request, "take_over")
    async with ctx.sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 16)
    if not ws.can_prepare(request).ok:
        return error_response(400, "invalid_input", "this URL is a websocket: send an Upgrade request", None)
    label = f"ws:{request.remote}"
    roles: asyncio.Queue[str] = asyncio.Queue()
    # Opening the console first: a node without one, or a BMC that refuses, is a plain HTTP error.
    client = await hub_of(ctx).attach(node, label, take_over=take_over, on_role=roles.put_nowait)
    try:
        await ws.prepare(request)
        await ws.send_str(json.dumps({"event": "attached", "role": client.role(), "node": node.uuid}))
        while not roles.empty():
            roles.get_nowait()  # the role at attach time was just sent
        await _serve(ws, client, roles)
    finally:
        await client.detach()
        await ws.close()
    return ws


async def _serve(ws: web.WebSocketResponse, client: Attachment, roles: asyncio.Queue[str]) -> None:
    async def output() -> None:
        async for chunk in client.chunks():
            await ws.send_bytes(chunk)
        reason = client.console.ended or "detached"
        await ws.send_str(json.dumps({"event": "closed", "reason": reason}))
        await ws.close()

    async def role_changes() -> None:
        while True:
            role = await roles.get()
            await ws.send_str(json.dumps({"event": "role", "role": role}))

    async def error(message: str) -> None:
        await ws.send_str(json.dumps({"event": "error", "message": message}))

    tasks = [asyncio.create_task(output()), asyncio.create_task(role_changes())]
    try:
        async for msg in ws:
            try:
                if msg.type == WSMsgType.BINARY:
                    await client.write(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await _control(client, msg.data)
            except PermissionError as err:
                await error(str(err))
            except (BmdError, ValueError) as err:
                await error(describe(err))
            if client.console.ended:
                break
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _control(client: Attachment, text: str) -> None:
    try:
        message: Any = json.loads(text)
    except ValueError as err:
        raise ValueError(f"control messages are JSON objects: {err}") from err
    op = message.get("op") if isinstance(message, dict) else None
    if op == "take_over":
        client.take_over()
    elif op == "break":
        await client.send_break()
    else:
        raise ValueError(f"op: expected take_over or break, got {str(op)[:40]!r}")


TERMINAL = "console_terminal"


async def _start_terminal(app: web.Application) -> None:
    ctx = app[CTX]
    c = ctx.settings.console
    if c.terminal_port and TERMINAL not in ctx.extras:
        authenticator = app[AUTHENTICATOR]

        async def authorize(token: str) -> bool:  # the same tokens and role as the websocket console's
            caller = await authenticator.caller(f"Bearer {token}")
            return caller is not None and caller.may(Role.operator)

        terminal = TerminalServer(hub_of(ctx), ctx.sessionmaker, authorize, c.terminal_host, c.terminal_port)
        await terminal.start()
        ctx.extras[TERMINAL] = terminal


async def _close_hub(app: web.Application) -> None:
    extras = app[CTX].extras
    terminal = extras.pop(TERMINAL, None)
    if isinstance(terminal, TerminalServer):
        await terminal.close()
    hub = extras.get(HUB)
    if isinstance(hub, ConsoleHub):
        await hub.close()


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/nodes/{node}/console-log", console_log)
    app.router.add_get("/v1/nodes/{node}/console", console)
    app.on_startup.append(_start_terminal)
    app.on_shutdown.append(_close_hub)
