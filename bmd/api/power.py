"""Power, boot device and maintenance of one node: ``/v1/nodes/{node}/states``, ``.../states/power``,
``.../management/boot_device``, ``.../maintenance``. Every BMC call is bounded; BMC errors map to 502/504."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from bmd.api.app import ctx_of, json_response, parse_body
from bmd.api.body import takes
from bmd.api.schemas import BootDeviceBody, MaintenanceBody, PowerTarget
from bmd.db import nodes as q
from bmd.db.models import BareMetalNode, utcnow
from bmd.drivers.power.base import BootDevice, PowerState
from bmd.errors import BMCTimeout, InvalidState

BUSY_STATES = ("deploying", "deleting")


def _states(node: BareMetalNode) -> dict[str, Any]:
    return {
        "power_state": node.power_state,
        "last_power_check": node.last_power_check,
        "last_power_error": node.last_power_error,
        "provision_state": node.provision_state,
        "provision_updated_at": node.provision_updated_at,
        "maintenance": node.maintenance,
        "maintenance_reason": node.maintenance_reason,
        "maintenance_set_by": node.maintenance_set_by,
        "last_error": node.last_error,
        "instance_uuid": node.instance_uuid,
    }


async def _bounded(coro: Any, seconds: float) -> Any:
    try:
        async with asyncio.timeout(seconds):
            return await coro
    except TimeoutError as err:
        raise BMCTimeout(f"the BMC did not finish within {seconds:g} s") from err


async def get_states(request: web.Request) -> web.Response:
    async with ctx_of(request).sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
    return json_response(_states(node))


async def _idle_node(request: web.Request) -> BareMetalNode:
    """The node, unless a provisioning job owns its BMC right now (409 naming its state)."""
    ctx = ctx_of(request)
    async with ctx.sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
    if node.provision_state in BUSY_STATES or node.id in ctx.conductor.jobs:
        raise InvalidState(f"node {node.id} is {node.provision_state}: its provisioning owns the BMC now")
    return node


@takes(PowerTarget)
async def set_power(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, PowerTarget)
    node = await _idle_node(request)
    driver, access = ctx.power.for_node(node)
    limit = ctx.settings.ipmi.timeout * 4 + ctx.settings.ipmi.min_command_interval + 30
    if body.target == "reboot":
        await _bounded(driver.reboot(access), limit)
    else:
        await _bounded(driver.set_power_state(access, PowerState(body.target)), limit)
    state = await _bounded(driver.get_power_state(access), ctx.settings.ipmi.timeout * 2)
    async with ctx.sessionmaker.begin() as session:
        row = await q.get_node(session, str(node.id))
        row.power_state, row.last_power_check = state.value, utcnow()
    return json_response({"node": node.id, "power_state": state.value})


@takes(BootDeviceBody)
async def set_boot_device(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, BootDeviceBody)
    node = await _idle_node(request)
    driver, access = ctx.power.for_node(node)
    await _bounded(driver.set_boot_device(access, BootDevice(body.boot_device), body.persistent), 60)
    return json_response({"node": node.id, "boot_device": body.boot_device, "persistent": body.persistent})


async def get_boot_device(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    async with ctx.sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
    driver, access = ctx.power.for_node(node)
    info = await _bounded(driver.get_boot_device(access), 60)
    return json_response({"boot_device": info.device.value if info.device else None, "persistent": info.persistent})


@takes(MaintenanceBody)
async def set_maintenance(request: web.Request) -> web.Response:
    body = await parse_body(request, MaintenanceBody) if request.can_read_body else MaintenanceBody()
    async with ctx_of(request).sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        node.maintenance, node.maintenance_set_by = True, "operator"
        node.maintenance_reason = body.reason or "set by an operator"
    return json_response(_states(node))


async def unset_maintenance(request: web.Request) -> web.Response:
    async with ctx_of(request).sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        node.maintenance, node.maintenance_set_by, node.maintenance_reason = False, None, None
        node.power_failures = 0
    return json_response(_states(node))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/nodes/{node}/states", get_states)
    r.add_put("/v1/nodes/{node}/states/power", set_power)
    r.add_put("/v1/nodes/{node}/management/boot_device", set_boot_device)
    r.add_get("/v1/nodes/{node}/management/boot_device", get_boot_device)
    r.add_put("/v1/nodes/{node}/maintenance", set_maintenance)
    r.add_delete("/v1/nodes/{node}/maintenance", unset_maintenance)
