"""``/v1/flavors``: the seed's instance types and their extra specs (``capabilities:...`` and others)."""

from __future__ import annotations

import uuid

from aiohttp import web
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from bmd.api.app import ctx_of, json_response, parse_body
from bmd.api.body import takes
from bmd.api.openapi import LIMIT, NAME_MARKER, answers, query
from bmd.api.paging import name_marker, page_limit, split_page, stream_page
from bmd.api.schemas import ExtraSpecsBody, ExtraSpecValueBody, FlavorCreate, check_extra_spec_key
from bmd.api.views import ExtraSpec, ExtraSpecs, FlavorPage, FlavorView
from bmd.db import flavors as q
from bmd.db.models import InstanceType, InstanceTypeExtraSpec
from bmd.db.nodes import conflict_from
from bmd.errors import Conflict, InvalidInput, NotFound
from bmd.flavors import Flavor


@answers(201, FlavorView)
@takes(FlavorCreate)
async def create_flavor(request: web.Request) -> web.Response:
    body = await parse_body(request, FlavorCreate)
    async with ctx_of(request).sessionmaker.begin() as session:
        flavorid = body.flavorid or str(uuid.uuid4())
        taken = await session.scalar(
            select(InstanceType.name).where((InstanceType.name == body.name) | (InstanceType.flavorid == flavorid))
        )
        if taken is not None:
            raise Conflict(
                f"flavor {body.name} already exists" if taken == body.name else f"flavorid {flavorid} is taken"
            )
        row = InstanceType(
            name=body.name,
            flavorid=flavorid,
            memory_mb=body.ram,
            vcpus=body.vcpus,
            root_gb=body.disk,
            ephemeral_gb=body.ephemeral,
            swap=body.swap,
        )
        session.add(row)
        try:
            await session.flush()
            await q.set_extra_specs(session, row, body.extra_specs)
        except IntegrityError as err:
            raise conflict_from(err) from err
        flavor = await q.get_flavor(session, body.name)
    return json_response(flavor.as_dict(), status=201)


@answers(200, FlavorPage)
@query(LIMIT, NAME_MARKER)
async def list_flavors(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    limit = page_limit(request, ctx.settings.api.max_page_size)
    async with ctx.sessionmaker() as session:
        flavors = await q.list_flavors(session, limit=limit + 1, marker=name_marker(request))
    page, next_marker = split_page(flavors, limit, lambda f: f.name)
    return await stream_page(request, "flavors", page, Flavor.as_dict, next_marker)


@answers(200, FlavorView)
async def show_flavor(request: web.Request) -> web.Response:
    async with ctx_of(request).sessionmaker() as session:
        flavor = await q.get_flavor(session, request.match_info["name"])
    return json_response(flavor.as_dict())


@answers(204)
async def delete_flavor(request: web.Request) -> web.Response:
    async with ctx_of(request).sessionmaker.begin() as session:
        row = await q.get_flavor_row(session, request.match_info["name"], for_update=True)
        await session.execute(delete(InstanceTypeExtraSpec).where(InstanceTypeExtraSpec.instance_type_id == row.id))
        await session.delete(row)
    return web.Response(status=204)


@answers(200, ExtraSpecs)
async def get_extra_specs(request: web.Request) -> web.Response:
    async with ctx_of(request).sessionmaker() as session:
        flavor = await q.get_flavor(session, request.match_info["name"])
    return json_response({"extra_specs": dict(flavor.extra_specs)})


@answers(200, ExtraSpecs)
@takes(ExtraSpecsBody)
async def add_extra_specs(request: web.Request) -> web.Response:
    body = await parse_body(request, ExtraSpecsBody)
    async with ctx_of(request).sessionmaker.begin() as session:
        row = await q.get_flavor_row(session, request.match_info["name"], for_update=True)
        await q.set_extra_specs(session, row, body.extra_specs)
        flavor = await q.get_flavor(session, row.name)
    return json_response({"extra_specs": dict(flavor.extra_specs)})


def _key(request: web.Request) -> str:
    key = request.match_info["key"]
    try:
        return check_extra_spec_key(key)
    except ValueError as err:
        raise InvalidInput(f"key: {err}", field="key") from err


@answers(200, ExtraSpec)
@takes(ExtraSpecValueBody)
async def set_extra_spec(request: web.Request) -> web.Response:
    key = _key(request)
    body = await parse_body(request, ExtraSpecValueBody)
    async with ctx_of(request).sessionmaker.begin() as session:
        row = await q.get_flavor_row(session, request.match_info["name"], for_update=True)
        await q.set_extra_specs(session, row, {key: body.value})
    return json_response({key: body.value})


@answers(204)
async def delete_extra_spec(request: web.Request) -> web.Response:
    key = _key(request)
    async with ctx_of(request).sessionmaker.begin() as session:
        row = await q.get_flavor_row(session, request.match_info["name"], for_update=True)
        result = await session.execute(
            delete(InstanceTypeExtraSpec).where(
                InstanceTypeExtraSpec.instance_type_id == row.id, InstanceTypeExtraSpec.key == key
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"flavor {row.name} has no extra spec {key!r}")
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/flavors", create_flavor)
    r.add_get("/v1/flavors", list_flavors)
    r.add_get("/v1/flavors/{name}", show_flavor)
    r.add_delete("/v1/flavors/{name}", delete_flavor)
    r.add_get("/v1/flavors/{name}/extra_specs", get_extra_specs)
    r.add_post("/v1/flavors/{name}/extra_specs", add_extra_specs)
    r.add_put("/v1/flavors/{name}/extra_specs/{key}", set_extra_spec)
    r.add_delete("/v1/flavors/{name}/extra_specs/{key}", delete_extra_spec)
