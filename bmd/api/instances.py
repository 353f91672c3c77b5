"""``/v1/instances`` and ``/v1/schedule``: place instances through the filter chain, claim nodes atomically,
deploy them. The deploy agent's calls (lookup, image, callback) are in :mod:`bmd.api.agent`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy import select

from bmd.api.app import REQUEST_ID, ctx_of, json_response, parse_body
from bmd.api.body import takes
from bmd.api.forward import FORWARDER, require_service
from bmd.api.openapi import ID_MARKER, LIMIT, answers, query, query_bool
from bmd.api.paging import bool_param, id_marker, page_limit, split_page, stream_page
from bmd.api.schemas import InstanceCreate, ScheduleRequest, SpawnRequest
from bmd.api.views import Deleting, InstancePage, InstanceView, Reservation, SelectionView, Spawning
from bmd.db import flavors as fq
from bmd.db.models import BareMetalNode, Instance
from bmd.db.nodes import get_node
from bmd.drivers.deploy.configdrive import decode_user_data
from bmd.drivers.deploy.refs import display_ref
from bmd.errors import InvalidInput, InvalidState, NotFound, OwnerUnavailable
from bmd.flavors import Flavor
from bmd.provision.instances import InstanceRequest, claim_instances
from bmd.provision.precheck import check_deploy_request, check_pxe_ips
from bmd.provision.request import DeployRequest, stored_request
from bmd.ramdisk import ramdisk_dir
from bmd.scheduler.host_state import RequestSpec
from bmd.scheduler.manager import Placement
from bmd.scheduler.selection import Selection
from bmd.states import ProvisionState

INSTANCE_FIELDS = (
    "uuid",
    "flavor_name",
    "reservation_id",
    "host",
    "node",
    "bm_node_id",
    "vm_state",
    "task_state",
    "image_ref",
    "image_properties",
    "hints",
    "network_info",
    "last_error",
    "created_at",
    "updated_at",
    "deleted_at",
)

log = structlog.get_logger(__name__)


def instance_to_dict(inst: Instance, node: BareMetalNode | None = None) -> dict[str, Any]:
    out = {f: getattr(inst, f) for f in INSTANCE_FIELDS}
    if inst.image_ref:  # stored redacted; redacted again for rows written before secret_refs existed
        out["image_ref"] = display_ref(inst.image_ref)
    # The config drive without its secrets: user_data by size only (it may hold credentials).
    out["config_drive"] = stored_request(inst).config_drive_view()
    if node is not None and node.instance_uuid == inst.uuid:
        out["provision_state"] = node.provision_state
        out["power_state"] = node.power_state
        out["node_name"] = node.name
    return out


def _user_data(body: InstanceCreate) -> bytes | None:
    if body.user_data is None:
        if body.user_data_base64:
            raise InvalidInput("user_data_base64 is set but there is no user_data", field="user_data_base64")
        return None
    try:
        return decode_user_data(body.user_data, body.user_data_base64)
    except ValueError as err:
        raise InvalidInput(f"user_data: {err}", field="user_data") from None


def selection_to_dict(sel: Selection) -> dict[str, Any]:
    return {
        "ok": sel.ok,
        "reason": sel.reason,
        "candidates": [
            [{"node": c.nodename, "host": c.host, "weight": round(c.weight, 6)} for c in options]
            for options in sel.candidates
        ],
        "filter_counts": [
            [{"filter": fc.filter, "before": fc.before, "after": fc.after} for fc in counts]
            for counts in sel.filter_counts
        ],
    }


async def _flavor(request: web.Request, name: str) -> Flavor:
    async with ctx_of(request).sessionmaker() as session:
        try:
            return await fq.get_flavor(session, name)
        except NotFound as err:
            raise InvalidInput(f"flavor: {err}", field="flavor") from err


@answers(200, SelectionView)
@takes(ScheduleRequest)
async def schedule(request: web.Request) -> web.Response:
    body = await parse_body(request, ScheduleRequest)
    spec = RequestSpec(await _flavor(request, body.flavor), body.image_properties, body.num_instances, body.hints)
    return json_response(selection_to_dict(ctx_of(request).scheduler.select_destinations(spec)))


@answers(202, Reservation)
@takes(InstanceCreate)
async def create_instances(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, InstanceCreate)
    flavor = await _flavor(request, body.flavor)
    spec = RequestSpec(flavor, body.image_properties, body.num_instances, body.hints)
    deploy = DeployRequest(
        image_ref=body.image_ref,
        image_checksum=body.image_checksum,
        kernel_ref=body.kernel_ref,
        kernel_checksum=body.kernel_checksum,
        ramdisk_ref=body.ramdisk_ref,
        ramdisk_checksum=body.ramdisk_checksum,
        root_mb=flavor.root_gb * 1024,
        swap_mb=flavor.swap,
        name=body.name,
        whole_disk=body.whole_disk,
        hostname=body.hostname,
        ssh_keys=tuple(body.ssh_keys),
        meta=body.meta,
        network_data=body.network_data,
        user_data=_user_data(body),
    )
    # What the request alone decides, before any node is claimed: 400 naming the field, 409 no_pxe_ip.
    roots = [Path(root) for root in ctx.settings.deploy.allowed_image_roots]
    await check_deploy_request(deploy, ctx.settings.deploy, roots, ramdisk_dir(ctx.settings.service.state_dir))
    # Refs with credentials or a signature are stored encrypted; the rows and the API show them redacted.
    stored, secret_refs = deploy.sealed(ctx.secret_box)
    async with ctx.sessionmaker() as session:
        await check_pxe_ips(session, body.num_instances)
    placements = await claim_instances(
        ctx.scheduler,
        InstanceRequest(
            flavor=flavor,
            spec=spec,
            deploy=stored,
            secret_refs=secret_refs,
            networks=[n.model_dump() for n in body.networks],
        ),
    )
    await start_deploys(request, placements)
    async with ctx.sessionmaker() as session:
        rows = (
            await session.execute(select(Instance).where(Instance.uuid.in_([p.instance_uuid for p in placements])))
        ).scalars()
        instances = [instance_to_dict(i) for i in rows]
    return json_response({"reservation_id": instances[0]["reservation_id"], "instances": instances}, status=202)


@answers(200, InstancePage)
@query(query_bool("deleted", "include deleted instances"), LIMIT, ID_MARKER)
async def list_instances(request: web.Request) -> web.StreamResponse:
    """Instances by creation; ``next`` is an opaque keyset marker (the last row's internal id)."""
    ctx = ctx_of(request)
    limit = page_limit(request, ctx.settings.api.max_page_size)
    marker = id_marker(request)
    stmt = select(Instance)
    if not bool_param(request, "deleted"):
        stmt = stmt.where(Instance.vm_state != "deleted")
    if marker is not None:
        stmt = stmt.where(Instance.id > marker)
    async with ctx.sessionmaker() as session:
        rows = (await session.execute(stmt.order_by(Instance.id).limit(limit + 1))).scalars().all()
        page, next_marker = split_page(rows, limit, lambda i: i.id)
        # the nodes that hold the page's instances (as show does): their provision state and name
        held = select(BareMetalNode).where(BareMetalNode.instance_uuid.in_([i.uuid for i in page]))
        nodes = {n.instance_uuid: n for n in (await session.execute(held)).scalars()} if page else {}
    return await stream_page(request, "instances", page, lambda i: instance_to_dict(i, nodes.get(i.uuid)), next_marker)


@answers(200, InstanceView)
async def show_instance(request: web.Request) -> web.Response:
    async with ctx_of(request).sessionmaker() as session:
        inst = await session.scalar(select(Instance).where(Instance.uuid == request.match_info["uuid"]))
        if inst is None:
            raise NotFound(f"instance {request.match_info['uuid']} not found")
        # the node that holds it (bm_nodes.instance_uuid, the link's truth), not instances.bm_node_id
        node = await session.scalar(select(BareMetalNode).where(BareMetalNode.instance_uuid == inst.uuid))
    return json_response(instance_to_dict(inst, node))


@answers(202, Deleting)
@answers(204, description="it was already gone")
async def delete_instance(request: web.Request) -> web.Response:
    job = await ctx_of(request).conductor.destroy(request.match_info["uuid"])
    if job is None:
        return web.Response(status=204)
    return json_response({"uuid": request.match_info["uuid"], "task_state": "deleting"}, status=202)


async def start_deploys(request: web.Request, placements: list[Placement]) -> None:
    """Each claimed node's deploy starts on its owner: here, or sent to the owning service (ring ownership).
    A deploy its owner could not be told of stays claimed (deploying, no step run); the owner's recovery
    resumes it at its next start or when a live service takes the node over."""
    ctx = ctx_of(request)
    forwarder = request.app.get(FORWARDER)
    for p in placements:
        if forwarder is None:
            ctx.conductor.spawn(p.node_id, p.instance_uuid)
            continue
        async with ctx.sessionmaker() as session:
            owner = await forwarder.owner(session, p.node_id)
        if owner.host == forwarder.host:
            ctx.conductor.spawn(p.node_id, p.instance_uuid)
            continue
        try:
            await forwarder.spawn(p.node_id, p.instance_uuid, request.get(REQUEST_ID))
        except OwnerUnavailable as err:
            log.warning(
                "deploy_not_forwarded", node=p.node_id, instance=p.instance_uuid, owner=owner.host, error=str(err)
            )


@answers(202, Spawning)
@takes(SpawnRequest)
async def spawn_on_owner(request: web.Request) -> web.Response:
    """Internal (role service): the claiming service asks the node's owner to deploy the instance claimed on
    it. Refused unless the node holds that instance and is deploying."""
    require_service(request)
    ctx = ctx_of(request)
    body = await parse_body(request, SpawnRequest)
    async with ctx.sessionmaker() as session:
        node = await get_node(session, request.match_info["node"])
    if node.instance_uuid != body.instance_uuid or node.provision_state != ProvisionState.DEPLOYING:
        raise InvalidState(
            f"node {node.id} is {node.provision_state} holding {node.instance_uuid}: no claimed deploy of "
            f"{body.instance_uuid} to start"
        )
    ctx.conductor.spawn(node.id, body.instance_uuid)  # Conflict (409) when one already runs
    return json_response({"uuid": body.instance_uuid, "task_state": "spawning"}, status=202)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/nodes/{node}/spawn", spawn_on_owner)
    r.add_post("/v1/schedule", schedule)
    r.add_post("/v1/instances", create_instances)
    r.add_get("/v1/instances", list_instances)
    r.add_get("/v1/instances/{uuid}", show_instance)
    r.add_delete("/v1/instances/{uuid}", delete_instance)
