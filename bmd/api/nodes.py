"""``/v1/nodes``: enroll, list, show, change and delete nodes and their interfaces."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy import delete, false, select
from sqlalchemy.exc import IntegrityError

from bmd import node_history as history
from bmd.api.app import actor_of, ctx_of, json_response, parse_body, validate_model
from bmd.api.body import takes
from bmd.api.openapi import ID_MARKER, LIMIT, answers, query, query_bool, query_str
from bmd.api.paging import bool_param, id_marker, page_limit, split_page, stream_page
from bmd.api.schemas import InterfaceCreate, InterfaceUpdate, NodeCreate, NodeFields, NodeImport, NodeUpdate
from bmd.api.views import EventPage, InterfacePage, InterfaceView, NodeImportResult, NodePage, NodeView
from bmd.config import Settings
from bmd.context import AppContext
from bmd.db import nodes as q
from bmd.db.models import BareMetalNode, Interface, utcnow
from bmd.errors import BmdError, Conflict, InvalidInput, InvalidState, NotFound
from bmd.ids import is_id_text, parse_id
from bmd.node_events import note_deleted, note_nodes
from bmd.plugins import KINDS, POWER_GROUP, is_known, known_names
from bmd.states import ProvisionState

log = structlog.get_logger(__name__)


def check_power_driver(name: str) -> None:
    if not is_known(POWER_GROUP, name):
        known = ", ".join(known_names(POWER_GROUP))
        raise InvalidInput(f"pm_driver: unknown name {name!r}; known {KINDS[POWER_GROUP]}s: {known}", "pm_driver")


def check_pm_address(ctx: AppContext, pm_driver: str, pm_address: str | None) -> None:
    """The power driver's own check of the address (cheap, no I/O); a driver without one accepts."""
    if pm_address is None:
        return
    validate = getattr(ctx.power.get(pm_driver), "validate_address", None)
    if validate is not None:
        validate(pm_address)


def check_service_host(settings: Settings, body: NodeFields) -> None:
    """Under ring ownership a node's service is derived, never set: 400 naming the field and the way to pin."""
    if settings.service.ownership == "ring" and "service_host" in body.model_fields_set:
        raise InvalidInput(
            'service_host: derived from the hash ring (service.ownership = "ring"), not set; '
            "pin the node to services with conductor_group",
            field="service_host",
        )


def build_node(ctx: AppContext, body: NodeCreate) -> BareMetalNode:
    settings = ctx.settings
    check_service_host(settings, body)
    pm_driver = body.pm_driver or settings.driver.default_power_driver
    check_power_driver(pm_driver)
    check_pm_address(ctx, pm_driver, body.pm_address)
    return BareMetalNode(
        uuid=body.uuid or str(uuidlib.uuid4()),
        name=body.name,
        service_host=body.service_host or settings.service.host,
        conductor_group=body.conductor_group or "",
        cpus=body.cpus,
        memory_mb=body.memory_mb,
        local_gb=body.local_gb,
        pm_driver=pm_driver,
        pm_address=body.pm_address,
        pm_user=body.pm_user,
        pm_password=ctx.secret_box.encrypt(body.pm_password) if body.pm_password else None,
        prov_mac_address=body.prov_mac_address,
        prov_vlan_id=body.prov_vlan_id,
        terminal_port=body.terminal_port,
        extra_specs=dict(body.extra_specs or {}),
        boot_mode=body.boot_mode or "bios",
        root_device=body.root_device.model_dump(exclude_none=True) if body.root_device else None,
        maintenance=body.maintenance,
        maintenance_reason=body.maintenance_reason if body.maintenance else None,
        maintenance_set_by="operator" if body.maintenance else None,
        provision_updated_at=utcnow(),
        power_failures=0,
    )


@answers(201, NodeView)
@takes(NodeCreate)
async def create_node(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, NodeCreate)
    node = build_node(ctx, body)
    macs = [i.address for i in body.interfaces]
    async with ctx.sessionmaker.begin() as session:
        await q.check_unique(session, uuid=node.uuid, name=node.name, macs=macs, prov_mac=node.prov_mac_address)
        session.add(node)
        try:
            await session.flush()
            ifaces = [Interface(bm_node_id=node.id, **i.model_dump()) for i in body.interfaces]
            session.add_all(ifaces)
            await session.flush()
        except IntegrityError as err:
            raise q.conflict_from(err) from err
        await note_nodes(session, [node.id])
    shown = q.node_to_dict(node, ifaces)
    if await _inspect_on_enroll(ctx, [node]):
        shown |= {"provision_state": ProvisionState.INSPECTING, "task_state": "inspecting"}
    return json_response(shown, status=201)


async def _inspect_on_enroll(ctx: AppContext, nodes: list[BareMetalNode]) -> list[int]:
    """With ``inspection.on_enroll``: start inspecting each new node that has a BMC address (the ones
    started are returned; one that cannot start is logged and stays ``available``)."""
    if not ctx.settings.inspection.on_enroll:
        return []
    started = []
    for node in nodes:
        if not node.pm_address:
            continue
        try:
            await ctx.conductor.inspect(str(node.id))
        except BmdError as err:
            log.warning("inspection_not_started", node=node.id, error=str(err))
            continue
        started.append(node.id)
    return started


@answers(201, NodeImportResult)
@takes(NodeImport)
async def import_nodes(request: web.Request) -> web.Response:
    """Enroll a whole inventory in one transaction: every entry is valid and new, or nothing is written."""
    ctx = ctx_of(request)
    body = await parse_body(request, NodeImport)
    nodes = []
    for index, entry in enumerate(body.nodes):
        try:
            nodes.append(build_node(ctx, entry))
        except InvalidInput as err:
            raise InvalidInput(f"nodes.{index}.{err}", field=f"nodes.{index}.{err.field}") from err
    macs = [i.address for e in body.nodes for i in e.interfaces]
    async with ctx.sessionmaker.begin() as session:
        await q.check_unique_many(session, nodes, macs)
        session.add_all(nodes)
        try:
            await session.flush()
            session.add_all(
                Interface(bm_node_id=n.id, **i.model_dump())
                for n, e in zip(nodes, body.nodes, strict=True)
                for i in e.interfaces
            )
            await session.flush()
        except IntegrityError as err:
            raise q.conflict_from(err) from err
        await note_nodes(session, [n.id for n in nodes])
    inspecting = await _inspect_on_enroll(ctx, nodes)
    return json_response(
        {
            "created": len(nodes),
            "nodes": [{"id": n.id, "uuid": n.uuid, "name": n.name} for n in nodes],
            **({"inspecting": len(inspecting)} if ctx.settings.inspection.on_enroll else {}),
        },
        status=201,
    )


@answers(200, NodePage)
@query(
    query_str("service_host", "only the nodes of this service"),
    query_str("provision_state", "only the nodes in this provision state"),
    query_bool("maintenance", "only the nodes in (true) or out of (false) maintenance"),
    query_bool("associated", "only the nodes that hold (true) or do not hold (false) an instance"),
    LIMIT,
    ID_MARKER,
)
async def list_nodes(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    limit = page_limit(request, ctx.settings.api.max_page_size)
    async with ctx.sessionmaker() as session:
        nodes = await q.list_nodes(
            session,
            service_host=request.query.get("service_host"),
            provision_state=request.query.get("provision_state"),
            maintenance=bool_param(request, "maintenance"),
            associated=bool_param(request, "associated"),
            limit=limit + 1,
            marker=id_marker(request),
        )
    page, next_marker = split_page(nodes, limit, lambda n: n["id"])
    return await stream_page(request, "nodes", page, lambda n: n, next_marker)  # rows are the view already


@answers(200, NodeView)
async def show_node(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    async with ctx.sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
        ifaces = (await q.node_interfaces(session, [node.id]))[node.id]
    return json_response(q.node_to_dict(node, ifaces))


def apply_update(ctx: AppContext, node: BareMetalNode, body: NodeUpdate) -> None:
    check_service_host(ctx.settings, body)
    changes: dict[str, Any] = {f: getattr(body, f) for f in body.model_fields_set}
    required_fields = ("cpus", "memory_mb", "local_gb", "service_host", "conductor_group", "pm_driver")
    for required in (*required_fields, "extra_specs", "boot_mode"):
        if required in changes and changes[required] is None:
            raise InvalidInput(f"{required}: cannot be null", field=required)
    if "pm_driver" in changes:
        check_power_driver(changes["pm_driver"])
    if "pm_driver" in changes or "pm_address" in changes:
        check_pm_address(ctx, changes.get("pm_driver", node.pm_driver), changes.get("pm_address", node.pm_address))
    if "pm_password" in changes:
        pw = changes.pop("pm_password")
        node.pm_password = ctx.secret_box.encrypt(pw) if pw else None
    if "maintenance" in changes:
        on = changes.pop("maintenance")
        if on is None:
            raise InvalidInput("maintenance: cannot be null", field="maintenance")
        node.maintenance = on
        node.maintenance_set_by = "operator" if on else None
        if not on:
            node.maintenance_reason = None
    if changes.get("root_device") is not None:
        changes["root_device"] = body.root_device.model_dump(exclude_none=True) if body.root_device else None
    if "maintenance_reason" in changes:
        node.maintenance_reason = changes.pop("maintenance_reason")
    moving = ("cpus", "memory_mb", "local_gb", "service_host", "conductor_group")
    if node.instance_uuid and any(k in changes and changes[k] != getattr(node, k) for k in moving):
        raise InvalidState(
            f"node {node.id} holds instance {node.instance_uuid}; its resources, service and group cannot change"
        )
    for key, value in changes.items():
        setattr(node, key, value)


@answers(200, NodeView)
@takes(NodeUpdate)
async def update_node(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, NodeUpdate)
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        was = (node.maintenance, node.maintenance_reason)
        apply_update(ctx, node, body)
        await q.check_unique(session, node_id=node.id, name=node.name, prov_mac=node.prov_mac_address)
        try:
            await session.flush()
        except IntegrityError as err:
            raise q.conflict_from(err) from err
        await note_nodes(session, [node.id])
        if (node.maintenance, node.maintenance_reason) != was and (node.maintenance or was[0]):
            entry = history.maintenance(node.id, node.maintenance, node.maintenance_reason, actor_of(request))
            await history.record(session, [entry])
        ifaces = (await q.node_interfaces(session, [node.id]))[node.id]
    return json_response(q.node_to_dict(node, ifaces))


@answers(204)
async def delete_node(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        if node.instance_uuid is not None:
            raise InvalidState(f"node {node.id} holds instance {node.instance_uuid}; delete the instance first")
        if node.provision_state not in ("available", "error", "inspect failed"):
            raise InvalidState(f"node {node.id} is {node.provision_state}; it cannot be deleted now")
        if ctx.conductor.running(node.id):  # e.g. the power-off and tidy-up after a failed inspection
            raise Conflict(f"node {node.id} is busy: {ctx.conductor.running(node.id)} runs on it")
        await note_deleted(session, [node.id])
        await session.execute(delete(Interface).where(Interface.bm_node_id == node.id))
        await session.delete(node)
    return web.Response(status=204)


@answers(200, EventPage)
@query(LIMIT, ID_MARKER)
async def list_events(request: web.Request) -> web.StreamResponse:
    """The node's history (``bmd.node_history``), newest first; ``next`` pages on to older entries."""
    ctx = ctx_of(request)
    limit = page_limit(request, ctx.settings.api.max_page_size)
    async with ctx.sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
        rows = await history.list_events(session, node.id, limit + 1, id_marker(request))
    page, next_marker = split_page(rows, limit, lambda e: e.id)
    return await stream_page(request, "events", page, history.event_to_dict, next_marker)


@answers(200, InterfacePage)
@query(LIMIT, ID_MARKER)
async def list_interfaces(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    limit = page_limit(request, ctx.settings.api.max_page_size)
    marker = id_marker(request)
    async with ctx.sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
        stmt = select(Interface).where(Interface.bm_node_id == node.id)
        if marker is not None:
            stmt = stmt.where(Interface.id > marker)
        ifaces = (await session.execute(stmt.order_by(Interface.id).limit(limit + 1))).scalars().all()
    page, next_marker = split_page(ifaces, limit, lambda i: i.id)
    return await stream_page(request, "interfaces", page, q.interface_to_dict, next_marker)


@answers(200, InterfacePage)
@query(
    query_str("node", "only this node's interfaces (its id, uuid or name)"),
    query_str("address", "only the interface with this MAC address"),
    LIMIT,
    ID_MARKER,
)
async def list_all_interfaces(request: web.Request) -> web.StreamResponse:
    """``GET /v1/interfaces``: every node's interfaces by id (``bmd port list``); ``?node=`` (id, uuid or
    name) and ``?address=`` (a MAC) narrow it."""
    ctx = ctx_of(request)
    limit = page_limit(request, ctx.settings.api.max_page_size)
    marker = id_marker(request)
    stmt = select(Interface)
    async with ctx.sessionmaker() as session:
        if "node" in request.query:
            stmt = stmt.where(Interface.bm_node_id == (await q.get_node(session, request.query["node"])).id)
        if "address" in request.query:
            stmt = stmt.where(_iface_lookup(request.query["address"], by_id=False))
        if marker is not None:
            stmt = stmt.where(Interface.id > marker)
        ifaces = (await session.execute(stmt.order_by(Interface.id).limit(limit + 1))).scalars().all()
    page, next_marker = split_page(ifaces, limit, lambda i: i.id)
    return await stream_page(request, "interfaces", page, q.interface_to_dict, next_marker)


@answers(201, InterfaceView)
@takes(InterfaceCreate)
async def add_interface(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, InterfaceCreate)
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"])
        await q.check_unique(session, macs=[body.address])
        iface = Interface(bm_node_id=node.id, **body.model_dump())
        session.add(iface)
        try:
            await session.flush()
        except IntegrityError as err:
            raise q.conflict_from(err) from err
    return json_response(q.interface_to_dict(iface), status=201)


@answers(200, InterfaceView)
@takes(InterfaceUpdate)
async def update_interface(request: web.Request) -> web.Response:
    """Change an interface's switch attachment (``datapath_id``, ``port_no``); refused while a vif is bound
    to it (the vif was plugged on the old port)."""
    ctx = ctx_of(request)
    body = await parse_body(request, InterfaceUpdate)
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"])
        iface = await session.scalar(
            select(Interface)
            .where(Interface.bm_node_id == node.id, _iface_lookup(request.match_info["iface"]))
            .with_for_update()
        )
        if iface is None:
            raise NotFound(f"interface {request.match_info['iface']} not found on node {node.id}")
        if iface.vif_uuid is not None:
            raise Conflict(f"interface {iface.address} is bound to vif {iface.vif_uuid}; unbind it first")
        for field in body.model_fields_set:
            setattr(iface, field, getattr(body, field))
    return json_response(q.interface_to_dict(iface))


@answers(204)
async def delete_interface(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"])
        iface = await session.scalar(
            select(Interface).where(Interface.bm_node_id == node.id, _iface_lookup(request.match_info["iface"]))
        )
        if iface is None:
            raise NotFound(f"interface {request.match_info['iface']} not found on node {node.id}")
        if iface.vif_uuid is not None:
            raise Conflict(f"interface {iface.address} is bound to vif {iface.vif_uuid}")
        await session.delete(iface)
    return web.Response(status=204)


def _iface_lookup(ident: str, by_id: bool = True) -> Any:
    if by_id and is_id_text(ident):
        iface_id = parse_id(ident)
        return Interface.id == iface_id if iface_id is not None else false()
    try:
        mac = validate_model(InterfaceCreate, {"address": ident}).address
    except InvalidInput as err:
        if not by_id:
            raise InvalidInput(f"query parameter address: {ident!r} is not a MAC address", field="address") from err
        raise NotFound(f"interface {ident} not found") from err
    return Interface.address == mac


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/nodes", create_node)
    r.add_post("/v1/nodes/import", import_nodes)
    r.add_get("/v1/nodes", list_nodes)
    r.add_get("/v1/nodes/{node}", show_node)
    r.add_patch("/v1/nodes/{node}", update_node)
    r.add_delete("/v1/nodes/{node}", delete_node)
    r.add_get("/v1/interfaces", list_all_interfaces)
    r.add_get("/v1/nodes/{node}/events", list_events)
    r.add_get("/v1/nodes/{node}/interfaces", list_interfaces)
    r.add_post("/v1/nodes/{node}/interfaces", add_interface)
    r.add_patch("/v1/nodes/{node}/interfaces/{iface}", update_interface)
    r.add_delete("/v1/nodes/{node}/interfaces/{iface}", delete_interface)
