"""Work goes to the node's owner: a request for a node owned by another service is carried out there.

With ``service.ownership = "ring"`` every service's API takes every request, but only the node's owner
(``bm_nodes.service_host``, derived from the ring) acts on its hardware. The hardware actions — power, the
boot device, clean, inspect, deleting a node or an instance, and starting a claimed instance's deploy
(``POST /v1/nodes/{node}/spawn``, what the claiming service sends the owner) — are forwarded over HTTP to
the owner's API (``services.api_url``), as Ironic's API sends a conductor its work over json-rpc:

- with this service's own token of role ``service`` (``service@<host>.<random>``, made at start-up, its
  predecessors revoked; only its SHA-256 is stored, as every token's), so the owner's audit log shows
  which service forwarded; the original caller was authenticated and authorised here first;
- marked ``X-Bmd-Forwarded-By: <host>``: a service that receives a forwarded request for a node it does
  not own (the ring moved in between) answers 409 instead of forwarding again, so a request is never
  carried out twice and never loops;
- to a live owner only: an owner silent past ``service.service_down_time`` gets nothing (503 naming it);
  its nodes move to the live services within one ownership pass, and the caller retries.

The owner's answer is the caller's answer, streamed (status, body and the headers that describe it: an
image download's ``Content-Range`` and ``Content-Length`` too). Static ownership forwards nothing.

The deploy agent reaches whichever service its URLs name (behind a shared ``api.public_url``, any of them):
its routes (the lookup, the image and config drive, heartbeat, inspection report, callback) go to the node's
owner like the operators' hardware actions. The owner checks the agent's own token as usual; the lookup's
``agent.lookup_source = "pxe_ip"`` check needs the agent's address, not the forwarding service's: it is sent
as ``X-Bmd-Forwarded-For`` and believed only next to a ``service`` token (:func:`peer_of`). The console
(the websocket and the recorded log) lives on the owner too: the websocket is relayed frame by frame, after
this service has checked the caller's operator token as the console itself does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.api.app import CALLER, CTX, Handler, error_response, is_authenticated, untrusted_response
from bmd.api.auth import AUTHENTICATOR, route_of
from bmd.api.body import read_json
from bmd.auth import Role
from bmd.context import AppContext
from bmd.db import nodes as q
from bmd.db.models import ApiToken, BareMetalNode, Instance, Service, utcnow
from bmd.db.services import is_live
from bmd.db.tokens import create_token
from bmd.errors import BmdError, Conflict, Forbidden, NotFound, OwnerUnavailable
from bmd.tls import client_context

__all__ = ["FORWARDED_BY", "FORWARDED_FOR", "FORWARDER", "Forwarder", "Owner", "forward_to_owner", "peer_of", "setup"]

log = structlog.get_logger(__name__)

FORWARDED_BY = "X-Bmd-Forwarded-By"
FORWARDED_FOR = "X-Bmd-Forwarded-For"  # the original caller's address, believed only from a service token
# seconds without a byte from the owner: a power action's own bound (the BMC's retries) fits well inside it,
# and an image download streams for as long as bytes keep coming
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=60.0)
# what is sent on of the caller's request, and of the owner's answer, besides the body
REQUEST_HEADERS = frozenset({"content-type", "x-request-id", "accept", "x-agent-token", "range", "if-range"})
ANSWER_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-range",
        "content-encoding",
        "accept-ranges",
        "cache-control",
        "etag",
        "last-modified",
        "x-content-type-options",
    }
)
CONSOLE = ("GET", "/v1/nodes/{node}/console")


@dataclass(frozen=True)
class Owner:
    host: str
    api_url: str | None
    live: bool


Resolver = Callable[[AsyncSession, web.Request], Awaitable[int | None]]


async def _by_node(session: AsyncSession, request: web.Request) -> int | None:
    """The node's id (None when there is no such node: the handler answers the 404 itself, naming it)."""
    return await session.scalar(select(BareMetalNode.id).where(q.node_lookup(request.match_info["node"])))


async def _by_lookup(session: AsyncSession, request: web.Request) -> int | None:
    """The agent's lookup names its node in the body (read once: the handler reads it again from aiohttp's
    cache); a body that names none is the handler's to refuse."""
    try:
        raw = await read_json(request)
    except BmdError:
        return None
    node_uuid = raw.get("node_uuid") if isinstance(raw, dict) else None
    if not isinstance(node_uuid, str):
        return None
    return await session.scalar(select(BareMetalNode.id).where(q.node_lookup(node_uuid)))


async def _by_instance(session: AsyncSession, request: web.Request) -> int | None:
    stmt = select(Instance.bm_node_id).where(Instance.uuid == request.match_info["uuid"])
    return await session.scalar(stmt)


# (method, route template) -> how to find the node it acts on: the routes that touch a node's hardware, its
# agent's and its console's (both live on the owner)
FORWARDED: dict[tuple[str, str], Resolver] = {
    **{
        (method, f"/v1/agent/nodes/{{node}}/{what}"): _by_node
        for method in ("GET", "HEAD")
        for what in ("image", "configdrive")
    },
    ("POST", "/v1/agent/lookup"): _by_lookup,
    ("POST", "/v1/agent/nodes/{node}/heartbeat"): _by_node,
    ("POST", "/v1/agent/nodes/{node}/inspection"): _by_node,
    ("POST", "/v1/nodes/{node}/vendor_passthru/pass_deploy_info"): _by_node,
    ("GET", "/v1/nodes/{node}/console-log"): _by_node,
    CONSOLE: _by_node,
    ("PUT", "/v1/nodes/{node}/states/power"): _by_node,
    ("PUT", "/v1/nodes/{node}/management/boot_device"): _by_node,
    ("POST", "/v1/nodes/{node}/clean"): _by_node,
    ("POST", "/v1/nodes/{node}/inspect"): _by_node,
    ("POST", "/v1/nodes/{node}/spawn"): _by_node,
    ("DELETE", "/v1/nodes/{node}"): _by_node,
    ("DELETE", "/v1/instances/{uuid}"): _by_instance,
}


def _token_name(host: str) -> str:
    """``service@<host>.<8 hex>``: a token name (letters, digits, '.', '_', '@', '-'; at most 64)."""
    return f"service@{re.sub(r'[^A-Za-z0-9._-]', '-', host)[:46]}.{secrets.token_hex(4)}"


async def issue_service_token(session: AsyncSession, host: str) -> str:
    """A fresh service token for this host; the ones its earlier starts made are revoked."""
    prefix = _token_name(host).rsplit(".", 1)[0] + "."
    await session.execute(
        update(ApiToken)
        .where(ApiToken.name.startswith(prefix, autoescape=True), ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    _row, clear = await create_token(session, _token_name(host), Role.service.value)
    return clear


class Forwarder:
    """This service's client to the other services' APIs."""

    def __init__(self, ctx: AppContext, token: str, session: aiohttp.ClientSession) -> None:
        self.ctx = ctx
        self.host = ctx.settings.service.host
        self.token = token
        self.http = session

    async def owner(self, session: AsyncSession, node_id: int) -> Owner:
        """The node's owner and whether it is live: one read of the node's row joined to its service's."""
        stmt = (
            select(BareMetalNode.service_host, Service.last_heartbeat, Service.api_url)
            .outerjoin(Service, Service.host == BareMetalNode.service_host)
            .where(BareMetalNode.id == node_id)
        )
        row = (await session.execute(stmt)).one_or_none()
        if row is None:
            raise NotFound(f"node {node_id} not found")
        if row.last_heartbeat is None:
            return Owner(row.service_host, None, False)
        live = is_live(row.last_heartbeat, utcnow(), self.ctx.settings.service.service_down_time)
        return Owner(row.service_host, row.api_url, live)

    def _target(self, owner: Owner, path_qs: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """The owner's URL for ``path_qs`` and the headers sent with it; OwnerUnavailable for a dead owner."""
        if not owner.live or not owner.api_url:
            why = "is down (no heartbeat within service.service_down_time)" if not owner.live else "has no API URL"
            raise OwnerUnavailable(
                f"the node's owner {owner.host} {why}; its nodes move to a live service within one ownership "
                "pass: retry"
            )
        sent = {**headers, "Authorization": f"Bearer {self.token}", FORWARDED_BY: self.host}
        return owner.api_url.rstrip("/") + path_qs, sent

    @contextlib.asynccontextmanager
    async def _exchange(
        self, owner: Owner, method: str, path_qs: str, body: bytes | None, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The owner's answer to the request, its body not yet read; OwnerUnavailable when it gives none."""
        url, sent = self._target(owner, path_qs, headers)
        try:
            async with self.http.request(method, url, data=body, headers=sent, timeout=FORWARD_TIMEOUT) as answer:
                log.info("request_forwarded", owner=owner.host, method=method, path=path_qs, status=answer.status)
                yield answer
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
            raise OwnerUnavailable(f"the node's owner {owner.host} at {owner.api_url} did not answer: {err}") from err

    async def send(
        self, owner: Owner, method: str, path_qs: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """The request carried out by ``owner``: its answer's status and body."""
        async with self._exchange(owner, method, path_qs, body, headers) as answer:
            return answer.status, await answer.read()

    async def relay(self, request: web.Request, owner: Owner) -> web.StreamResponse:
        """``request`` carried out by ``owner``: a JSON answer read whole, any other (an image, a console log)
        streamed back as it comes, never held in memory."""
        headers = {k: v for k, v in request.headers.items() if k.lower() in REQUEST_HEADERS}
        if request.remote:
            headers[FORWARDED_FOR] = request.remote
        body = await request.read() if request.body_exists else None  # read already (a lookup): cached
        async with self._exchange(owner, request.method, request.path_qs, body, headers) as answer:
            kept = {k: v for k, v in answer.headers.items() if k.lower() in ANSWER_HEADERS}
            if answer.content_type == "application/json":  # bounded (a page holds at most 1,000 nodes)
                return web.Response(status=answer.status, headers=kept, body=await answer.read())
            response = web.StreamResponse(status=answer.status, headers=kept)
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def relay_websocket(self, request: web.Request, owner: Owner) -> web.StreamResponse:
        """The console websocket, attached on the owner and relayed frame by frame both ways."""
        url, sent = self._target(owner, request.path_qs, {"X-Request-Id": request.headers.get("X-Request-Id", "")})
        try:
            upstream = await self.http.ws_connect(url, headers=sent, heartbeat=30.0, max_msg_size=1 << 16)
        except aiohttp.WSServerHandshakeError as err:  # refused before the upgrade: the node has no console...
            return error_response(
                err.status if err.status >= 400 else 502,
                "owner_refused",
                f"the node's owner {owner.host} refused the console: {err.status} {err.message}",
            )
        except (aiohttp.ClientConnectionError, TimeoutError) as err:
            raise OwnerUnavailable(f"the node's owner {owner.host} at {owner.api_url} did not answer: {err}") from err
        log.info("console_forwarded", owner=owner.host, path=request.path)
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 16)
        async with upstream:
            await ws.prepare(request)
            pumps = [asyncio.create_task(_pump(upstream, ws)), asyncio.create_task(_pump(ws, upstream))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in pumps:
                    task.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                await ws.close()
        return ws

    async def spawn(self, node_id: int, instance_uuid: str, request_id: str | None = None) -> None:
        """Ask the node's owner to deploy the instance claimed on it (``POST /v1/nodes/{id}/spawn``)."""
        async with self.ctx.sessionmaker() as session:
            owner = await self.owner(session, node_id)
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        body = json.dumps({"instance_uuid": instance_uuid}).encode()
        status, answer = await self.send(owner, "POST", f"/v1/nodes/{node_id}/spawn", body, headers)
        if status != 202:
            raise OwnerUnavailable(f"the node's owner {owner.host} refused the deploy ({status}): {answer!r:.200}")


async def _pump(
    source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
) -> None:
    """Every data frame of ``source`` to ``sink`` until ``source`` closes."""
    async for message in source:
        if message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)


FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder", Forwarder)


@web.middleware
async def forward_to_owner(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Carry a request for a node (a hardware action, its agent's, its console) out on the node's owner when
    that is another service (see the module)."""
    forwarder = request.app.get(FORWARDER)
    route = route_of(request)
    resolve = FORWARDED.get((request.method, route))
    if forwarder is None or resolve is None:
        return await handler(request)
    async with request.app[CTX].sessionmaker() as session:
        node_id = await resolve(session, request)
        if node_id is None:
            return await handler(request)
        owner = await forwarder.owner(session, node_id)
    if owner.host == forwarder.host:
        return await handler(request)
    came_from = request.headers.get(FORWARDED_BY)
    if came_from is not None:
        raise Conflict(
            f"node {node_id} is owned by {owner.host}, not {forwarder.host} ({came_from} forwarded the request "
            "while its owner moved): retry"
        )
    if (request.method, route) == CONSOLE or route == "/v1/nodes/{node}/console-log":
        # the owner sees only this service's token: the console's own check is made here, first
        if not is_authenticated(request):
            return untrusted_response(request, "to read or attach to a console")
        if (request.method, route) == CONSOLE:
            return await forwarder.relay_websocket(request, owner)
    return await forwarder.relay(request, owner)


async def peer_of(request: web.Request) -> str | None:
    """The address of whoever made the request: the original caller's when a service forwarded it (its
    ``X-Bmd-Forwarded-For``, believed only next to a ``service`` token), else the connection's peer."""
    claimed = request.headers.get(FORWARDED_FOR)
    if claimed is None:
        return request.remote
    caller = await request.app[AUTHENTICATOR].caller(request.headers.get("Authorization", ""))
    if caller is None or caller.role is not Role.service:
        raise Forbidden(f"{FORWARDED_FOR} is taken only from a bmd service (a service token)")
    return claimed


def require_service(request: web.Request) -> None:
    """Only another bmd service (a ``service`` token) or an admin may call an internal route."""
    caller = request.get(CALLER)
    if caller is None or caller.role not in (Role.service, Role.admin):
        role = caller.role.value if caller is not None else "none"
        raise Forbidden(f"this call is made by bmd services to each other (role service); the caller's role is {role}")


async def _forwarder(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    if ctx.settings.service.ownership != "ring":
        yield
        return
    async with ctx.sessionmaker.begin() as session:
        token = await issue_service_token(session, ctx.settings.service.host)
    connector = aiohttp.TCPConnector(ssl=client_context(ctx.settings.api), limit=64)
    # bodies pass through as the owner sent them (compressed or not, with their own Content-Length)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
        app[FORWARDER] = Forwarder(ctx, token, http)
        yield


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_forwarder)
