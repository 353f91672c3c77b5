"""``/v1/pxe_ips``: the pool of provisioning addresses the deploy hands out (the seed's bm_pxe_ips)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bmd.api.app import ctx_of, json_response, parse_body
from bmd.api.body import takes
from bmd.api.openapi import ID_MARKER, LIMIT, answers, query
from bmd.api.paging import id_marker, page_limit, split_page, stream_page
from bmd.api.schemas import PxeIpCreate, check_ip
from bmd.api.views import PxeIpPage, PxeIpView
from bmd.db import nodes as q
from bmd.db.models import PxeIp
from bmd.errors import Conflict, NotFound
from bmd.ids import parse_id


@answers(200, PxeIpPage)
@query(LIMIT, ID_MARKER)
async def list_pxe_ips(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    limit = page_limit(request, ctx.settings.api.max_page_size)
    marker = id_marker(request)
    stmt = select(PxeIp)
    if marker is not None:
        stmt = stmt.where(PxeIp.id > marker)
    async with ctx.sessionmaker() as session:
        ips = (await session.execute(stmt.order_by(PxeIp.id).limit(limit + 1))).scalars().all()
    page, next_marker = split_page(ips, limit, lambda ip: ip.id)
    return await stream_page(request, "pxe_ips", page, q.pxe_ip_to_dict, next_marker)


@answers(201, PxeIpView)
@takes(PxeIpCreate)
async def create_pxe_ip(request: web.Request) -> web.Response:
    body = await parse_body(request, PxeIpCreate)
    async with ctx_of(request).sessionmaker.begin() as session:
        for field in ("address", "server_address"):
            value = getattr(body, field)
            taken = await session.scalar(
                select(PxeIp.id).where((PxeIp.address == value) | (PxeIp.server_address == value))
            )
            if taken is not None:
                raise Conflict(f"{field} {value} is already in the pool (pxe_ip {taken})")
        ip = PxeIp(address=body.address, server_address=body.server_address)
        session.add(ip)
        try:
            await session.flush()
        except IntegrityError as err:
            raise q.conflict_from(err) from err
    return json_response(q.pxe_ip_to_dict(ip), status=201)


@answers(204)
async def delete_pxe_ip(request: web.Request) -> web.Response:
    """``DELETE /v1/pxe_ips/{id}``: by id, or by its address (what an operator knows it by)."""
    ident = request.match_info["id"]
    pxe_id = parse_id(ident)
    if pxe_id is not None:
        where = PxeIp.id == pxe_id
    else:
        try:
            where = PxeIp.address == check_ip(ident)
        except ValueError as err:
            raise NotFound(f"pxe_ip {ident} not found: neither an id nor an IP address") from err
    async with ctx_of(request).sessionmaker.begin() as session:
        ip = await session.scalar(select(PxeIp).where(where).with_for_update())
        if ip is None:
            raise NotFound(f"pxe_ip {ident} not found")
        if ip.bm_node_id is not None:
            raise Conflict(f"pxe_ip {ident} is allocated to node {ip.bm_node_id}")
        await session.delete(ip)
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/pxe_ips", list_pxe_ips)
    app.router.add_post("/v1/pxe_ips", create_pxe_ip)
    app.router.add_delete("/v1/pxe_ips/{id}", delete_pxe_ip)
