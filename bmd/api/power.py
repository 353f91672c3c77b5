"""Power, boot device and maintenance of one node: ``/v1/nodes/{node}/states``, ``.../states/power``,
``.../management/boot_device``, ``.../maintenance``. Every BMC call is bounded; BMC errors map to 502/504.

Reads are served from the database (the power state kept by sync_power_states, the last known boot device
with its age); only an authenticated ``GET .../management/boot_device?live=true`` reads a BMC, one call in
flight per node however many ask."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd import node_history as history
from bmd.api.app import CTX, actor_of, ctx_of, is_authenticated, json_response, parse_body, untrusted_response
from bmd.api.body import takes
from bmd.api.openapi import answers, query, query_bool
from bmd.api.schemas import BootDeviceBody, MaintenanceBody, PowerTarget
from bmd.api.views import BootDeviceSet, BootDeviceView, PowerView, ProvisionStateView, StatesView
from bmd.db import nodes as q
from bmd.db.boot_devices import record_boot_device
from bmd.db.models import BareMetalNode, utcnow
from bmd.drivers.power.base import BootDevice, BootDeviceInfo, PowerState
from bmd.drivers.power.registry import PowerRegistry
from bmd.errors import BMCTimeout, InvalidInput, InvalidState
from bmd.node_events import note_nodes
from bmd.provision.conductor import Conductor
from bmd.states import ProvisionState

T = TypeVar("T")

BUSY_STATES = frozenset({ProvisionState.DEPLOYING, ProvisionState.DELETING})
BOOT_DEVICE_TIMEOUT = 60.0  # bounds one boot device call whatever the driver's own timeouts


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


@answers(200, StatesView)
async def get_states(request: web.Request) -> web.Response:
    async with ctx_of(request).sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
    return json_response(_states(node))


async def _node(request: web.Request) -> BareMetalNode:
    async with ctx_of(request).sessionmaker() as session:
        return await q.get_node(session, request.match_info["node"])


async def _on_idle_node(request: web.Request, name: str, action: Callable[[BareMetalNode], Awaitable[T]]) -> T:
    """Run ``action`` on the node's BMC under the node's lock (``Conductor.run``): 409 naming what runs
    when a job holds it, or naming the state when its provisioning owns the BMC."""
    node = await _node(request)
    if ProvisionState(node.provision_state) in BUSY_STATES:
        raise InvalidState(f"node {node.id} is {node.provision_state}: its provisioning owns the BMC now")
    return await ctx_of(request).conductor.run(node.id, name, functools.partial(action, node))


@answers(200, PowerView)
@takes(PowerTarget)
async def set_power(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, PowerTarget)

    async def act(node: BareMetalNode) -> tuple[BareMetalNode, PowerState]:
        driver, access = ctx.power.for_node(node)
        limit = ctx.settings.ipmi.timeout * 4 + ctx.settings.ipmi.min_command_interval + 30
        if body.target == "reboot":
            await _bounded(driver.reboot(access), limit)
        else:
            await _bounded(driver.set_power_state(access, PowerState(body.target)), limit)
        return node, await _bounded(driver.get_power_state(access), ctx.settings.ipmi.timeout * 2)

    node, state = await _on_idle_node(request, "set_power", act)
    await ctx.conductor.p.record_power(node.id, state, body.target, actor=actor_of(request))
    return json_response({"node": node.id, "power_state": state.value})


class LiveBootDeviceReads:
    """Live reads of boot devices for authenticated callers: at most one BMC call in flight per node, shared
    by every caller that asks while it runs (coalesced), each through the node's driver and so within its
    concurrency cap; every answer is recorded as the node's last known value. Owns its calls: ``close``
    cancels and awaits them."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        power: PowerRegistry,
        timeout: float,
        conductor: Conductor,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.power = power
        self.timeout = timeout
        self.conductor = conductor
        self._calls: dict[int, asyncio.Task[tuple[BootDeviceInfo, dt.datetime]]] = {}
        self._waiting: Counter[int] = Counter()

    def waiting(self, node_id: int) -> int:
        """Callers waiting on the node's call in flight (0 when there is none)."""
        return self._waiting[node_id]

    async def read(self, node: BareMetalNode) -> tuple[BootDeviceInfo, dt.datetime]:
        """The BMC's answer and when the call started; joins the node's call in flight if there is one."""
        task = self._calls.get(node.id)
        if task is None:
            task = asyncio.create_task(self._read(node), name=f"boot-device-read:{node.id}")
            self._calls[node.id] = task
            task.add_done_callback(functools.partial(self._done, node.id))
        self._waiting[node.id] += 1
        try:
            return await asyncio.shield(task)  # a caller that goes away does not cancel the others' call
        finally:
            self._waiting[node.id] -= 1
            if self._waiting[node.id] <= 0:
                del self._waiting[node.id]

    def _done(self, node_id: int, task: asyncio.Task[tuple[BootDeviceInfo, dt.datetime]]) -> None:
        if self._calls.get(node_id) is task:
            del self._calls[node_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have gone

    async def _read(self, node: BareMetalNode) -> tuple[BootDeviceInfo, dt.datetime]:
        started = utcnow()
        driver, access = self.power.for_node(node)
        info: BootDeviceInfo = await self.conductor.run(
            node.id, "read_boot_device", lambda: _bounded(driver.get_boot_device(access), self.timeout)
        )
        async with self.sessionmaker.begin() as session:
            await record_boot_device(session, node.id, _device(info), info.persistent, started)
        return info, started

    async def close(self) -> None:
        tasks = list(self._calls.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


BOOT_READS: web.AppKey[LiveBootDeviceReads] = web.AppKey("boot_reads", LiveBootDeviceReads)


async def _boot_reads(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    reads = app[BOOT_READS] = LiveBootDeviceReads(ctx.sessionmaker, ctx.power, BOOT_DEVICE_TIMEOUT, ctx.conductor)
    yield
    await reads.close()


def _device(info: BootDeviceInfo) -> str | None:
    return info.device.value if info.device else None


def _boot_view(device: str | None, persistent: bool | None, at: dt.datetime | None, source: str) -> dict[str, Any]:
    age = None if at is None else round(max(0.0, (utcnow() - at).total_seconds()), 3)
    return {"boot_device": device, "persistent": persistent, "checked_at": at, "age_seconds": age, "source": source}


def _live(request: web.Request) -> bool:
    value = request.query.get("live", "false").lower()
    if value not in ("true", "1", "false", "0"):
        raise InvalidInput(f"live must be true or false, got {value!r}", field="live")
    return value in ("true", "1")


@answers(200, BootDeviceSet)
@takes(BootDeviceBody)
async def set_boot_device(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    body = await parse_body(request, BootDeviceBody)

    async def act(node: BareMetalNode) -> BareMetalNode:
        driver, access = ctx.power.for_node(node)
        device = BootDevice(body.boot_device)
        await _bounded(driver.set_boot_device(access, device, body.persistent), BOOT_DEVICE_TIMEOUT)
        return node

    node = await _on_idle_node(request, "set_boot_device", act)
    async with ctx.sessionmaker.begin() as session:
        await record_boot_device(session, node.id, body.boot_device, body.persistent, utcnow())
    return json_response({"node": node.id, "boot_device": body.boot_device, "persistent": body.persistent})


@answers(200, BootDeviceView)
@query(query_bool("live", "ask the BMC (bearer token required)"))
async def get_boot_device(request: web.Request) -> web.Response:
    """The last known boot device with its age (``"source": "cache"``), for anyone; ``?live=true`` asks the
    BMC (``"source": "bmc"``) and needs the bearer token: an anonymous read never makes bmd talk to a BMC."""
    live = _live(request)
    if live and not is_authenticated(request):
        return untrusted_response(request, "to read the BMC live (?live=true)")
    async with ctx_of(request).sessionmaker() as session:
        node = await q.get_node(session, request.match_info["node"])
    if not live:
        return json_response(
            _boot_view(node.boot_device, node.boot_device_persistent, node.boot_device_checked_at, "cache")
        )
    info, started = await request.app[BOOT_READS].read(node)
    return json_response(_boot_view(_device(info), info.persistent, started, "bmc"))


@answers(200, StatesView)
@takes(MaintenanceBody, required=False)
async def set_maintenance(request: web.Request) -> web.Response:
    body = await parse_body(request, MaintenanceBody) if request.can_read_body else MaintenanceBody()
    async with ctx_of(request).sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        node.maintenance, node.maintenance_set_by = True, "operator"
        node.maintenance_reason = body.reason or "set by an operator"
        await note_nodes(session, [node.id])
        await history.record(session, [history.maintenance(node.id, True, node.maintenance_reason, actor_of(request))])
    return json_response(_states(node))


@answers(200, StatesView)
async def unset_maintenance(request: web.Request) -> web.Response:
    async with ctx_of(request).sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        was_on = node.maintenance
        node.maintenance, node.maintenance_set_by, node.maintenance_reason = False, None, None
        node.power_failures = 0
        await note_nodes(session, [node.id])
        if was_on:
            await history.record(session, [history.maintenance(node.id, False, None, actor_of(request))])
    return json_response(_states(node))


@answers(202, ProvisionStateView)
@takes(None)
async def retry_clean(request: web.Request) -> web.Response:
    """A node in ``clean failed``: out of maintenance, clean again (docs/cleaning.md). 202 at once."""
    await ctx_of(request).conductor.retry_clean(request.match_info["node"])
    return json_response({"provision_state": ProvisionState.CLEANING}, status=202)


@answers(202, ProvisionStateView)
@takes(None)
async def start_inspection(request: web.Request) -> web.Response:
    """Boot a node that holds no instance (``available``, ``inspect failed``) into the ramdisk to inspect it
    (docs/inspection.md). 202 at once; the node is ``inspecting``, then ``available``."""
    await ctx_of(request).conductor.inspect(request.match_info["node"])
    return json_response({"provision_state": ProvisionState.INSPECTING}, status=202)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_boot_reads)
    r = app.router
    r.add_get("/v1/nodes/{node}/states", get_states)
    r.add_post("/v1/nodes/{node}/clean", retry_clean)
    r.add_post("/v1/nodes/{node}/inspect", start_inspection)
    r.add_put("/v1/nodes/{node}/states/power", set_power)
    r.add_put("/v1/nodes/{node}/management/boot_device", set_boot_device)
    r.add_get("/v1/nodes/{node}/management/boot_device", get_boot_device)
    r.add_put("/v1/nodes/{node}/maintenance", set_maintenance)
    r.add_delete("/v1/nodes/{node}/maintenance", unset_maintenance)
