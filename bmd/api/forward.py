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

The owner's answer (status, body, content type) is the caller's answer. Static ownership forwards nothing.
"""

from __future__ import annotations

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

from bmd.api.app import CALLER, CTX, Handler
from bmd.api.auth import route_of
from bmd.auth import Role
from bmd.context import AppContext
from bmd.db import nodes as q
from bmd.db.models import ApiToken, BareMetalNode, Instance, Service, utcnow
from bmd.db.services import is_live
from bmd.db.tokens import create_token
from bmd.errors import Conflict, Forbidden, NotFound, OwnerUnavailable
from bmd.tls import client_context

__all__ = ["FORWARDED_BY", "FORWARDER", "Forwarder", "Owner", "forward_to_owner", "setup"]

log = structlog.get_logger(__name__)

FORWARDED_BY = "X-Bmd-Forwarded-By"
FORWARD_TIMEOUT = 60.0  # seconds: a power action's own bound (the BMC's retries) fits well inside it


@dataclass(frozen=True)
class Owner:
    host: str
    api_url: str | None
    live: bool


Resolver = Callable[[AsyncSession, web.Request], Awaitable[int | None]]


async def _by_node(session: AsyncSession, request: web.Request) -> int | None:
    try:
        return (await q.get_node(session, request.match_info["node"])).id
    except NotFound:
        return None  # the handler answers the 404 itself, naming what was asked


async def _by_instance(session: AsyncSession, request: web.Request) -> int | None:
    stmt = select(Instance.bm_node_id).where(Instance.uuid == request.match_info["uuid"])
    return await session.scalar(stmt)


# (method, route template) -> how to find the node it acts on: the routes that touch a node's hardware
FORWARDED: dict[tuple[str, str], Resolver] = {
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

    async def send(
        self, owner: Owner, method: str, path_qs: str, body: bytes | None, headers: dict[str, str]
    ) -> web.Response:
        """The request carried out by ``owner``; its answer, as it gave it."""
        if not owner.live or not owner.api_url:
            why = "is down (no heartbeat within service.service_down_time)" if not owner.live else "has no API URL"
            raise OwnerUnavailable(
                f"the node's owner {owner.host} {why}; its nodes move to a live service within one ownership "
                "pass: retry"
            )
        sent = {
            **headers,
            "Authorization": f"Bearer {self.token}",
            FORWARDED_BY: self.host,
        }
        url = owner.api_url.rstrip("/") + path_qs
        try:
            async with self.http.request(
                method, url, data=body, headers=sent, timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT)
            ) as answer:
                payload = await answer.read()
                log.info("request_forwarded", owner=owner.host, method=method, path=path_qs, status=answer.status)
                return web.Response(
                    status=answer.status, body=payload, content_type=answer.content_type or "application/json"
                )
        except (aiohttp.ClientError, TimeoutError) as err:
            raise OwnerUnavailable(f"the node's owner {owner.host} at {owner.api_url} did not answer: {err}") from err

    async def spawn(self, node_id: int, instance_uuid: str, request_id: str | None = None) -> None:
        """Ask the node's owner to deploy the instance claimed on it (``POST /v1/nodes/{id}/spawn``)."""
        async with self.ctx.sessionmaker() as session:
            owner = await self.owner(session, node_id)
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        body = json.dumps({"instance_uuid": instance_uuid}).encode()
        answer = await self.send(owner, "POST", f"/v1/nodes/{node_id}/spawn", body, headers)
        if answer.status != 202:
            raise OwnerUnavailable(
                f"the node's owner {owner.host} refused the deploy ({answer.status}): {answer.body!r:.200}"
            )


FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder", Forwarder)


@web.middleware
async def forward_to_owner(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Carry a hardware action out on the node's owner when that is another service (see the module)."""
    forwarder = request.app.get(FORWARDER)
    resolve = FORWARDED.get((request.method, route_of(request)))
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
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "x-request-id", "accept")}
    body = await request.read() if request.can_read_body else None
    return await forwarder.send(owner, request.method, request.path_qs, body, headers)


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
    async with aiohttp.ClientSession(connector=connector) as http:
        app[FORWARDER] = Forwarder(ctx, token, http)
        yield


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_forwarder)
