"""The host manager: host states, ``select_destinations`` through the filter chain, and atomic claims in SQL
(the instance rows come from provisioning, ``bmd.provision.instances``).

Where a host state comes from: whether it is free, in maintenance or has a power fault from ``bm_nodes``
only, as ``NodeView``s (``bmd.node_events``) — the change events its writers publish after each commit
(the topic ``nodes``, taken in as they come by ``follow_nodes`` and before every selection) and the
periodic resync (``SchedulerRefresh``: one batched read of every row). Each view carries the row's
``version``; a view not newer than the one held is ignored, so a resync that read a row before a claim
cannot make the claimed node free again. Its capabilities (sizes, cpu_arch, extra specs, owner) from the
same events: a newer view whose capability ``fingerprint`` differs from the held one's, or a node new to
the scheduler, marks the node stale, and ``follow_nodes`` reads the stale nodes' capability dicts in one
batched read (``BareMetalDriver.host_stats_for``) — a change committed in any service is selectable here
one read after its event. The ``capabilities`` topic (``report_driver_status``, every
``host_state_interval``) stays the full resync of them. Service heartbeats mark a service's nodes up or
down. ``compute_nodes`` is the resource tracker's output, not read here.

A selection consumes its picks in memory at once, under a lock, so concurrent requests in this process
never chase the same node; the claim itself is one ``UPDATE bm_nodes ... WHERE id = :id AND <free>``
(``bmd.db.nodes.FREE``) per node, inside one transaction per request (all or nothing), so two schedulers —
in this process or another sharing the database — can never put two instances on one node. A lost race
marks the lost node as its row now says, gives the request's other picks back, and selects again.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from bmd.bus import Bus
from bmd.config import Settings
from bmd.db.engine import Sessionmaker
from bmd.db.flavors import list_flavors
from bmd.db.services import service_liveness
from bmd.drivers.baremetal import BareMetalDriver
from bmd.errors import NoValidHost
from bmd.filters.registry import build_filters, build_weighers
from bmd.gcpause import collector_paused
from bmd.node_events import TOPIC as NODES
from bmd.node_events import NodeView, read_versions, read_views
from bmd.scheduler.claims import ClaimWriter
from bmd.scheduler.host_state import RequestSpec
from bmd.scheduler.selection import Selection
from bmd.scheduler.selector import HostSelector
from bmd.tasks.report_driver_status import TOPIC, CapabilityReport
from bmd.tasks.steps import StepFailureCounter

log = structlog.get_logger(__name__)

CLAIM_ATTEMPTS = 3
NODE_EVENTS_QUEUE = 10_000  # batches of views; when it overflows, the resync catches up
# A resync that finds more views out of date than this share of those held reads every row in one statement
# rather than in 500-id batches.
REFRESH_FULL_READ_SHARE = 0.25


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
        local_host=settings.service.host,
    )


@dataclass
class Placement:
    """One claimed node and the instance row that holds it."""

    instance_uuid: str
    node_id: int
    nodename: str
    host: str


FleetKey = tuple[str | None, str, bool]
"""A node's (power_state, provision_state, maintenance), as the fleet gauges count them."""

InstanceRows = Callable[[list[Placement]], list[dict[str, Any]]]
"""Builds the instance rows for the placements of one claim (``bmd.provision.instances``)."""


class HostManager:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: Sessionmaker,
        bus: Bus,
        driver: BareMetalDriver,
        failures: StepFailureCounter | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.bus = bus
        self.driver = driver  # reads the capability dicts of the nodes whose capabilities changed
        self.selector = build_selector(settings)
        self._lock = asyncio.Lock()
        self.writer = ClaimWriter(sessionmaker)
        self.claims = 0  # nodes claimed
        self.lost_races = 0
        self.requests = 0  # claim requests (one per instance-create request, whatever its num_instances)
        # claim requests refused, by why: the filter that removed the last hosts, "no_hosts" (none known) or
        # "lost_races" (other schedulers kept taking the picks); bounded by the configured filters
        self.no_valid_host: collections.Counter[str] = collections.Counter()
        self.failures = failures if failures is not None else StepFailureCounter()
        self._rejected: dict[str, str] = {}  # nodename -> why its last capability dict was not taken in
        # Set when views are queued on "nodes" and when a view marks a node stale: follow_nodes wakes on it.
        self._wake = asyncio.Event()
        self._events = bus.subscribe(NODES, replay=False, queue_size=NODE_EVENTS_QUEUE, wake=self._wake)
        # Nodes whose capability dict must be read again (a view's fingerprint changed, or a node new to the
        # scheduler): one batched read by follow_nodes. Bounded by the number of nodes.
        self._stale: set[int] = set()
        self.capability_reads = 0  # batched reads of stale nodes' capabilities
        self.capabilities_read = 0  # nodes in them
        self._views: dict[int, NodeView] = {}  # the newest bm_nodes view of each node
        # their versions, by node id: what the resync compares with the rows' (a set operation, not a loop)
        self._versions: dict[int, int] = {}
        # the views counted by (power_state, provision_state, maintenance), kept as views come and go so a
        # /metrics scrape reads a handful of numbers, not 100,000 views (deleted ones are not counted)
        self._fleet: collections.Counter[FleetKey] = collections.Counter()
        self._claiming: dict[int, int] = {}  # node id -> claims in flight on it: the views wait for the outcome
        self._report: CapabilityReport | None = None  # the capabilities publication last taken in

    # -- feeding host states ---------------------------------------------------------------------------

    def take_report(self, report: list[dict[str, Any]]) -> None:
        """One ``capabilities`` publication: its delta when it follows the report last taken (a
        ``CapabilityReport`` of the same publisher, the next one), else its whole list."""
        if isinstance(report, CapabilityReport) and report.follows(self._report):
            self.take_capability_changes(report.changed, report.removed)
            self._report = report
        elif report is not self._report:  # (the report taken at start-up is replayed to the subscriber)
            self.take_capabilities(report)

    def take_capability_changes(self, changed: list[dict[str, Any]], removed: Iterable[str]) -> None:
        """A delta of the published list: the dicts of nodes new or changed, and the nodenames gone."""
        self.take_node_events()
        for nodename in removed:
            if nodename in self.selector:
                self.selector.remove(nodename)
            self._rejected.pop(nodename, None)
        for caps in changed:
            nodename = str(caps.get("hypervisor_hostname") or caps.get("node") or "")
            if not self._take(nodename, caps):
                continue
            if nodename.isdigit() and self.selector.get(nodename).node_free is None:
                self._apply(int(nodename))  # new to the selector: what bm_nodes says, when known

    def _take(self, nodename: str, caps: dict[str, Any]) -> bool:
        """One node's capability dict into the selector; False (rejected, counted) when it cannot be taken."""
        try:
            self.selector.update_capabilities(caps)
        except Exception as err:  # noqa: BLE001 - one node's dict; the others go on
            self._reject(nodename, err)
            return False
        if self._rejected.pop(nodename, None) is not None:
            log.info("node_capabilities_recovered", node=nodename)
        return True

    def take_capabilities(self, capabilities: list[dict[str, Any]]) -> None:
        """A whole published list: every service's nodes in it updated, those of its services gone dropped."""
        self._report = capabilities if isinstance(capabilities, CapabilityReport) else None
        self.take_node_events()
        by_host: dict[str, list[dict[str, Any]]] = {}
        for caps in capabilities:
            by_host.setdefault(str(caps.get("host", "")), []).append(caps)
        rejected: dict[str, str] = {}

        def reject(nodename: str, err: Exception) -> None:
            rejected[nodename] = str(err)
            self._log_rejection(nodename, err)

        for host, entries in by_host.items():
            self.selector.sync_service(host, entries, reject)
        for caps in capabilities:
            nodename = str(caps.get("hypervisor_hostname") or caps.get("node") or "")
            if nodename not in rejected and self._rejected.pop(nodename, None) is not None:
                log.info("node_capabilities_recovered", node=nodename)
            if nodename.isdigit() and nodename in self.selector and self.selector.get(nodename).node_free is None:
                self._apply(int(nodename))  # new to the selector: what bm_nodes says, when known
        self._rejected.update(rejected)

    def _log_rejection(self, nodename: str, err: Exception) -> None:
        self.failures.add("scheduler_capabilities")
        if self._rejected.get(nodename) != str(err):  # logged when it starts, not on every report
            log.error("node_capabilities_rejected", node=nodename, error=str(err))

    def _reject(self, nodename: str, err: Exception) -> None:
        self._log_rejection(nodename, err)
        self._rejected[nodename] = str(err)

    def take_node_views(self, views: Iterable[NodeView]) -> int:
        """Keep each view newer than the one held (older or equal ones are ignored) and apply it to the
        node's state, unless a claim on the node is in flight; a node whose capabilities changed (another
        fingerprint than the held view's) or that is new to the scheduler is marked stale, for
        ``follow_nodes`` to read. Returns how many were newer."""
        newer = 0
        for view in views:
            held = self._views.get(view.node_id)
            if not view.newer_than(held):
                continue
            newer += 1
            if not view.deleted and (
                view.fingerprint != held.fingerprint if held is not None else str(view.node_id) not in self.selector
            ):
                self._stale.add(view.node_id)
                self._wake.set()
            if held is not None and not held.deleted:
                self._fleet[_fleet_key(held)] -= 1
            if not view.deleted:
                self._fleet[_fleet_key(view)] += 1
            self._views[view.node_id] = view
            self._versions[view.node_id] = view.version
            if view.node_id not in self._claiming:
                self._apply(view.node_id)
        return newer

    def take_node_events(self) -> None:
        """The views the writers published since the last call (the ``nodes`` topic), without waiting."""
        for views in self._events.drain():
            self.take_node_views(views)

    def _apply(self, node_id: int) -> None:
        view, nodename = self._views.get(node_id), str(node_id)
        if view is not None and view.deleted:
            # Forgotten, not kept as a tombstone: SQLite may give the id to the next node enrolled, whose
            # row starts again at version 1.
            del self._views[node_id]
            del self._versions[node_id]
            if nodename in self.selector:
                self.selector.remove(nodename)
            return
        if view is None or nodename not in self.selector:
            return
        self.selector.set_node(nodename, free=view.free, maintenance=view.maintenance, power_fault=view.power_fault)

    def node_views(self) -> Iterable[NodeView]:
        """The newest view of every node in ``bm_nodes`` (events taken in first)."""
        self.take_node_events()
        return self._views.values()

    def fleet(self) -> dict[FleetKey, int]:
        """Nodes in ``bm_nodes`` by (power_state, provision_state, maintenance), from the views held (events
        taken in first): what ``/metrics`` reports, without a query or a pass over the nodes."""
        self.take_node_events()
        return {key: n for key, n in self._fleet.items() if n > 0}

    async def consume_bus(self) -> None:
        """Follow the ``capabilities`` topic (the latest list is replayed at once: taken whole, then each
        report's delta) until cancelled or the bus closes. A report dropped from the queue (the subscriber
        fell behind) breaks the sequence: the next one is taken whole."""
        async with self.bus.subscribe(TOPIC) as sub:
            async for report in sub:
                self.take_report(report)

    async def follow_nodes(self) -> None:
        """Until cancelled: take in the ``nodes`` topic's views as they are published (woken by the bus, not
        by a timer), and read the capability dicts of the nodes they mark stale, in one batched read per
        wake-up — so a capability change committed anywhere reaches the selector one read after its event,
        not at the next ``capabilities`` publication. A failed read is logged and its nodes stay stale (the
        next wake-up, or the periodic publication, brings them)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.take_node_events()
            if not self._stale:
                continue
            try:
                await self.read_capabilities()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the database may be away; the follower goes on
                log.warning("node_capabilities_read_failed", error=str(err), nodes=len(self._stale))

    async def read_capabilities(self) -> None:
        """Read the stale nodes' capability dicts (``BareMetalDriver.host_stats_for``: get_host_stats's
        scope) and take them in, then each node's view as ``take_node_views`` applies it. A node whose dict
        cannot be built leaves the selector (as it is left out of the periodic publication), one that is
        out of scope or gone too; a dict the selector refuses is rejected and the node keeps its state."""
        stale, self._stale = self._stale, set()
        failed: dict[int, Exception] = {}
        try:
            async with self.sessionmaker() as session:
                found = await self.driver.host_stats_for(session, stale, on_error=failed.__setitem__)
        except BaseException:
            self._stale |= stale
            raise
        self.capability_reads += 1
        self.capabilities_read += len(stale)
        self.take_node_events()  # what came during the read: a node deleted meanwhile is not brought back
        for node_id in stale:
            view, nodename = self._views.get(node_id), str(node_id)
            if view is None or view.deleted:
                continue
            caps = found.get(node_id)
            if node_id in failed or caps is None:
                # cannot be built, or out of this scheduler's scope (another service's, without fleet_view)
                if nodename in self.selector:
                    self.selector.remove(nodename)
                if node_id in failed:
                    self._reject(nodename, failed[node_id])
                continue
            caps["host_ip"] = self.settings.service.my_ip  # as report_driver_status publishes it
            if not self._take(nodename, caps):
                continue
            if node_id not in self._claiming:
                self._apply(node_id)

    async def refresh(self) -> None:
        """The resync: every node's row version from bm_nodes, then the views of the nodes whose version
        is newer than the view held (or unknown here: events missed, or written by a service whose events
        do not reach this one), and service liveness. An unchanged fleet costs the read of the versions."""
        async with self.sessionmaker() as session:
            # (node id, version) pairs not held: newer rows, or older than a view an event brought (those
            # are read and ignored by take_node_views; rare)
            versions = await read_versions(session)
            with collector_paused():
                newer = sorted(node_id for node_id, _ in versions.items() - self._versions.items())
            if len(newer) > REFRESH_FULL_READ_SHARE * len(self._versions):
                views = await read_views(session)
            else:
                views = await read_views(session, newer) if newer else []
            services = await service_liveness(session, self.settings.service.service_down_time)
        self.take_node_events()
        self.take_node_views(views)
        for host, up in services.items():
            self.selector.set_service_up(host, up)

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
        self.take_node_events()
        return self.selector.select(spec)

    async def claim(self, spec: RequestSpec, instances: InstanceRows) -> list[Placement]:
        """Select and claim ``spec.num_instances`` nodes, all or nothing, writing the instance rows that
        ``instances`` (provisioning's) builds for the placements in the same transaction.

        The picks are consumed in memory at once (other requests of this process skip them) and held so
        until the claim's outcome is known. Claimed: their state is the claim's view. Lost to another
        writer on one node: that node takes its current row, the other picks are given back as bm_nodes
        last said, and the selection runs again."""
        self.requests += 1
        for _attempt in range(CLAIM_ATTEMPTS):
            async with self._lock:
                self.take_node_events()
                selection = self.selector.select(spec)
                if not selection.ok:
                    self.no_valid_host[_refusal(selection)] += 1
                chosen = selection.require()  # NoValidHost with the chain's reason
                for c in chosen:
                    self.selector.consume(c.nodename, spec)
            placements = [Placement(str(uuid.uuid4()), int(c.nodename), c.nodename, c.host) for c in chosen]
            node_ids = [p.node_id for p in placements]
            self._hold(node_ids)
            try:
                outcome = await self.writer.claim(
                    node_ids, [p.instance_uuid for p in placements], instances(placements)
                )
                self.take_node_views(outcome.views)
            finally:
                self._settle(node_ids)
            if outcome.lost is None:
                self.claims += len(placements)
                return placements
            self.lost_races += 1
            log.info("claim_lost_race", node=outcome.lost, given_back=[n for n in node_ids if n != outcome.lost])
        self.no_valid_host["lost_races"] += 1
        raise NoValidHost("concurrent schedulers kept taking the chosen nodes; try again")

    def _hold(self, node_ids: list[int]) -> None:
        for node_id in node_ids:
            self._claiming[node_id] = self._claiming.get(node_id, 0) + 1

    def _settle(self, node_ids: list[int]) -> None:
        """The claim is decided and its views (claimed rows, or the lost node's row) are taken: every
        node it held shows what bm_nodes last said — claimed, taken by another, or free again."""
        self.take_node_events()
        for node_id in node_ids:
            left = self._claiming.pop(node_id) - 1
            if left:
                self._claiming[node_id] = left
            else:
                self._apply(node_id)


def _fleet_key(view: NodeView) -> FleetKey:
    return (view.power_state, view.provision_state, view.maintenance)


def _refusal(selection: Selection) -> str:
    """Which filter removed the last hosts of a refused selection, or ``no_hosts``."""
    counts = selection.filter_counts[-1] if selection.filter_counts else ()
    if counts and counts[-1].after == 0 and counts[-1].before > 0:
        return counts[-1].filter
    return "no_hosts"


class SchedulerRefresh:
    """Periodic loop: the resync of every node's view from bm_nodes, and service heartbeats."""

    name = "scheduler_refresh"

    def __init__(self, manager: HostManager, interval: float) -> None:
        self.manager = manager
        self.interval = interval

    async def run_once(self) -> None:
        await self.manager.refresh()
