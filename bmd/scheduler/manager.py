"""The host manager: host states fed by the bus, ``select_destinations`` through the filter chain, and
atomic claims in SQL (the instance rows come from provisioning, ``bmd.provision.instances``).

Host states come from the ``capabilities`` topic (every service's published list), from ``compute_nodes``
rows and from node health (power faults, service heartbeats), refreshed by the ``scheduler_refresh`` loop.
A selection consumes its picks in memory at once, under a lock, so concurrent requests in this process
never chase the same node; the claim itself is one ``UPDATE bm_nodes ... WHERE id = :id AND instance_uuid
IS NULL`` per node, inside one transaction per request (all or nothing), so two schedulers — in this
process or another sharing the database — can never put two instances on one node. A lost race retries
the whole selection with the lost node marked used.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select

from bmd.bus import Bus
from bmd.config import Settings
from bmd.db.engine import Sessionmaker
from bmd.db.flavors import list_flavors
from bmd.db.models import BareMetalNode, ComputeNode, Service, utcnow
from bmd.errors import NoValidHost
from bmd.filters.registry import build_filters, build_weighers
from bmd.scheduler.claims import ClaimWriter
from bmd.scheduler.host_state import RequestSpec
from bmd.scheduler.selection import Selection
from bmd.scheduler.selector import HostSelector
from bmd.tasks.report_driver_status import TOPIC
from bmd.tasks.steps import NodeSteps, StepFailureCounter, record_step_errors

log = structlog.get_logger(__name__)

CLAIM_ATTEMPTS = 3


def build_selector(settings: Settings) -> HostSelector:
    s = settings.scheduler
    filter_options = {
        "RamFilter": {"allocation_ratio": s.ram_allocation_ratio},
        "CoreFilter": {"allocation_ratio": s.cpu_allocation_ratio},
        "DiskFilter": {"allocation_ratio": s.disk_allocation_ratio},
    }
    weigher_options = {"RAMWeigher": {"multiplier": s.ram_weight_multiplier}}
    return HostSelector(
        build_filters(s.filters, {k: v for k, v in filter_options.items() if k in s.filters}),
        build_weighers(s.weighers, {k: v for k, v in weigher_options.items() if k in s.weighers}),
    )


@dataclass
class Placement:
    """One claimed node and the instance row that holds it."""

    instance_uuid: str
    node_id: int
    nodename: str
    host: str


InstanceRows = Callable[[list[Placement]], list[dict[str, Any]]]
"""Builds the instance rows for the placements of one claim (``bmd.provision.instances``)."""


class HostManager:
    def __init__(
        self, settings: Settings, sessionmaker: Sessionmaker, bus: Bus, failures: StepFailureCounter | None = None
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.bus = bus
        self.selector = build_selector(settings)
        self._lock = asyncio.Lock()
        self.writer = ClaimWriter(sessionmaker)
        self._caps: dict[str, dict[str, Any]] = {}  # the last published capabilities of each node
        self.claims = 0
        self.lost_races = 0
        # One node's row or dict that cannot be taken in is its failure alone (see bmd.tasks.steps).
        self.refresh_steps = NodeSteps("scheduler_refresh", failures)
        self.failures = self.refresh_steps.counter
        self._rejected: dict[str, str] = {}  # nodename -> why its last capability dict was not taken in

    # -- feeding host states ---------------------------------------------------------------------------

    def take_capabilities(self, capabilities: list[dict[str, Any]]) -> None:
        by_host: dict[str, list[dict[str, Any]]] = {}
        for caps in capabilities:
            by_host.setdefault(str(caps.get("host", "")), []).append(caps)
            self._caps[str(caps.get("node"))] = caps
        rejected: dict[str, str] = {}

        def reject(nodename: str, err: Exception) -> None:
            rejected[nodename] = str(err)
            self.failures.add("scheduler_capabilities")
            if self._rejected.get(nodename) != str(err):  # logged when it starts, not on every report
                log.error("node_capabilities_rejected", node=nodename, error=str(err))

        for host, entries in by_host.items():
            self.selector.sync_service(host, entries, reject)
        for caps in capabilities:
            nodename = str(caps.get("hypervisor_hostname") or caps.get("node") or "")
            if nodename not in rejected and self._rejected.pop(nodename, None) is not None:
                log.info("node_capabilities_recovered", node=nodename)
        self._rejected.update(rejected)

    def release(self, node_id: int) -> None:
        """A node of this service was given back (delete done, spawn undone): offer it again now rather
        than at the next capability report. Its last published capabilities, with nothing used."""
        caps = self._caps.get(str(node_id))
        if caps is None or str(node_id) not in self.selector:
            return
        free = {**caps, "vcpus_used": 0, "disk_used": 0, "disk_available": caps["disk_total"]}
        free["host_memory_free"] = caps["host_memory_total"]
        self._caps[str(node_id)] = free
        try:
            self.selector.update_capabilities(free)
        except Exception as err:  # noqa: BLE001 - a dict it refused before: the next report decides
            log.warning("node_release_not_offered", node=node_id, error=str(err))

    async def consume_bus(self) -> None:
        """Follow the ``capabilities`` topic (the latest list is replayed at once) until cancelled or the
        bus closes."""
        async with self.bus.subscribe(TOPIC) as sub:
            async for capabilities in sub:
                self.take_capabilities(capabilities)

    async def refresh(self) -> None:
        """compute_nodes rows, power faults and service liveness (one batched read each)."""
        down_after = dt.timedelta(seconds=self.settings.service.service_down_time)
        now = utcnow()
        async with self.sessionmaker() as session:
            rows = (await session.execute(select(ComputeNode))).scalars().all()
            health = (
                await session.execute(select(BareMetalNode.id, BareMetalNode.power_state, BareMetalNode.power_failures))
            ).all()
            services = (await session.execute(select(Service.host, Service.last_heartbeat))).all()
        known = {s.nodename for s in self.selector.hosts()}
        steps = self.refresh_steps
        steps.start()
        for row in rows:
            if str(row.bm_node_id) in known:
                try:
                    self.selector.update_compute_node(
                        {c: getattr(row, c) for c in ComputeNode.__table__.columns.keys()}, host=row.service_host
                    )
                except Exception as err:  # noqa: BLE001 - one node's fault never ends the pass for the others
                    steps.fail(row.bm_node_id, err)
        for node_id, power_state, failures in health:
            if str(node_id) in known:
                fault = power_state == "error" or bool(failures)
                if self.selector.get(str(node_id)).power_fault != fault:
                    self.selector.set_health(str(node_id), power_fault=fault)
        for host, heartbeat in services:
            self.selector.set_service_up(host, now - heartbeat <= down_after)
        changes = steps.finish()
        if changes:
            try:
                async with self.sessionmaker.begin() as session:
                    await record_step_errors(session, changes)
            except BaseException:
                steps.unwritten(changes)
                raise

    async def prepare_flavors(self) -> None:
        """Build the index groupings every known flavor needs now, not on its first request (at 100,000
        nodes a new grouping takes about a second of CPU)."""
        async with self.sessionmaker() as session:
            flavors = await list_flavors(session)
        for flavor in flavors:
            self.selector.prepare(RequestSpec(flavor))

    # -- selection and claims ------------------------------------------------------------------------

    def select_destinations(self, spec: RequestSpec) -> Selection:
        """The seed's name: the ordered candidates for each instance of ``spec`` (nothing is consumed)."""
        return self.selector.select(spec)

    async def claim(self, spec: RequestSpec, instances: InstanceRows) -> list[Placement]:
        """Select and claim ``spec.num_instances`` nodes, all or nothing, writing the instance rows that
        ``instances`` (provisioning's) builds for the placements in the same transaction."""
        for _attempt in range(CLAIM_ATTEMPTS):
            async with self._lock:
                selection = self.selector.select(spec)
                chosen = selection.require()  # NoValidHost with the chain's reason
                for c in chosen:
                    self.selector.consume(c.nodename, spec)
            placements = [Placement(str(uuid.uuid4()), int(c.nodename), c.nodename, c.host) for c in chosen]
            rows = instances(placements)
            lost = await self.writer.claim([p.node_id for p in placements], [p.instance_uuid for p in placements], rows)
            if lost is None:
                self.claims += len(placements)
                return placements
            self.lost_races += 1
            log.info("claim_lost_race", node=lost)
        raise NoValidHost("concurrent schedulers kept taking the chosen nodes; try again")


class SchedulerRefresh:
    """Periodic loop: compute_nodes rows, power faults and service heartbeats into the host states."""

    name = "scheduler_refresh"

    def __init__(self, manager: HostManager, interval: float) -> None:
        self.manager = manager
        self.interval = interval

    async def run_once(self) -> None:
        await self.manager.refresh()
