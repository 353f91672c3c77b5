"""``BareMetalDriver``: one bmd service presents every physical node it manages as its own host.

The seed's contract holds: ``get_available_nodes()`` lists the nodenames (``str(node.id)``) of this
service's nodes; ``get_available_resource(nodename)`` gives one node's resources; ``get_host_stats()``
returns a *list*, one capability dict per node. Each call reads the nodes in one batched statement
(columns only, no ORM objects), whatever the number of nodes.

Each node's capability dict carries its driver's verdict on whether it can take a deploy at all
(``deploy_ready``, and ``deploy_blocker`` saying why not, ``<slot>: <reason>``): the node's composed driver
(:class:`~bmd.drivers.base.NodeDriver`, from :class:`~bmd.drivers.factory.DriverFactory`) runs every
interface's ``validate`` (power: the driver is known and accepts the BMC fields; deploy: the node has a MAC
to PXE boot and the deploy config is complete; vif), no I/O. The scheduler's DeployReadyFilter skips the
nodes that cannot; the spawn runs the same ``validate`` before it acts.

One node's row that cannot be turned into its dict or resources (a value the API would never have written)
is that node's failure alone: passed to ``on_error`` and left out of the result; the others go on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, Text, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd.config import Settings, parse_extra_specs
from bmd.db.models import BareMetalNode, Interface, bm_interfaces_table, bm_nodes_table
from bmd.db.nodes import is_free
from bmd.drivers.base import NodeFacts
from bmd.drivers.factory import DriverFactory
from bmd.errors import NotFound
from bmd.gcpause import collector_paused

OnError = Callable[[int, Exception], object]
"""Called with a node id and the unexpected exception its step raised (see ``bmd.tasks.steps``)."""

HYPERVISOR_TYPE = "baremetal"
HYPERVISOR_VERSION = 1
CPU_INFO = "baremetal cpu"

# Only what the resource and capability views need: a narrow row keeps a 10,000-node pass cheap. The
# per-node extra specs come back as JSON text, parsed once per distinct text (most nodes share a few).
_COLUMNS = (
    BareMetalNode.id,
    BareMetalNode.service_host,
    BareMetalNode.cpus,
    BareMetalNode.memory_mb,
    BareMetalNode.local_gb,
    BareMetalNode.instance_uuid,
    BareMetalNode.provision_state,
    BareMetalNode.maintenance,
    cast(BareMetalNode.extra_specs, Text).label("extra_specs"),
)
# What the capability view adds: the node's interface count and BMC fields, the facts its driver validates.
_INTERFACES = (
    select(func.count(Interface.id)).where(Interface.bm_node_id == BareMetalNode.id).scalar_subquery()
).label("interface_count")
_STATS_COLUMNS = (
    *_COLUMNS,
    _INTERFACES,
    BareMetalNode.pm_driver,
    BareMetalNode.pm_address,
    BareMetalNode.pm_user,
    BareMetalNode.pm_password,
    BareMetalNode.boot_mode,
)

_CHUNK = 500  # ids per IN list
_PAGE = 5000  # rows per statement of a read of every node
# A node's change key: its row ``version`` (bumped by every write of the row) and, for the capability dict,
# its NIC count (another table's: adding a NIC does not write the node's row), as one int computed by the
# database — a loop holds one per node and compares it with a scan's. Two keys of one node can only be
# alike for different rows if the node has 65,536 NICs or more.
_NIC_SPAN = 65536


def change_key(version: int, interfaces: int = 0) -> int:
    """What a loop compares with the key it holds to know a node's row (or NIC count) changed."""
    return version * _NIC_SPAN + interfaces


_N = bm_nodes_table
_NIC_COUNT = select(func.count()).where(bm_interfaces_table.c.bm_node_id == _N.c.id).scalar_subquery()
_RESOURCE_KEY = cast(_N.c.version, BigInteger) * _NIC_SPAN
_STATS_KEY = _RESOURCE_KEY + _NIC_COUNT


RESOURCE_KEYS = (
    "vcpus",
    "memory_mb",
    "local_gb",
    "vcpus_used",
    "memory_mb_used",
    "local_gb_used",
    "hypervisor_type",
    "hypervisor_version",
    "hypervisor_hostname",
    "cpu_info",
    "running_vms",
    "service_host",
)


def node_is_free(instance_uuid: str | None, provision_state: str, maintenance: bool) -> bool:
    """A node offers its resources only when it holds no instance, is available and not in maintenance."""
    return is_free(instance_uuid, provision_state, maintenance)


def resource_values(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """One node's resources in RESOURCE_KEYS order: one instance per node, so all or nothing is used."""
    node_id, host, cpus, memory_mb, local_gb, instance_uuid, provision_state, maintenance = row[:8]
    if node_is_free(instance_uuid, provision_state, maintenance):
        used = (0, 0, 0)
    else:
        used = (cpus, memory_mb, local_gb)
    return (
        cpus,
        memory_mb,
        local_gb,
        *used,
        HYPERVISOR_TYPE,
        HYPERVISOR_VERSION,
        str(node_id),
        CPU_INFO,
        0 if instance_uuid is None else 1,
        host,
    )


def resources_of(row: tuple[Any, ...]) -> dict[str, Any]:
    """``get_available_resource`` for one node row."""
    return dict(zip(RESOURCE_KEYS, resource_values(row), strict=True))


def merge_specs(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Per-node capabilities over the service-wide ones; nested dicts merge key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_specs(out[key], value)
        else:
            out[key] = value
    return out


class BareMetalDriver:
    """The compute driver for one service host: every node's resources and capabilities, each with the
    verdict of the node's own driver (a composition of power, deploy, vif, ... built by ``drivers``)."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        drivers: DriverFactory,
    ) -> None:
        self.settings = settings
        self.drivers = drivers
        self.host = settings.service.host
        # Several services on one database (ring ownership): every scheduler sees every node, so the
        # capability view covers the whole fleet, each node under its owner's host.
        self.fleet_view = settings.service.ownership == "ring"
        self.sessionmaker = sessionmaker
        self.extra_specs = parse_extra_specs(
            settings.driver.instance_type_extra_specs, settings.driver.baremetal_driver
        )
        self._supported: dict[str, list[tuple[str, str, str]]] = {}
        self._specs: dict[str | None, dict[str, Any]] = {}

    def specs_of(self, raw: str | None) -> dict[str, Any]:
        """Service-wide extra specs merged with a node's own (given as stored JSON text); cached per text.

        Nodes with the same per-node capabilities share one merged dict, so callers must not mutate it.
        """
        found = self._specs.get(raw)
        if found is None:
            own = json.loads(raw) if raw else None
            found = merge_specs(self.extra_specs, own) if own else self.extra_specs
            if len(self._specs) > 100_000:  # unbounded variety would be a leak: start over
                self._specs.clear()
            self._specs[raw] = found
        return found

    def supported_instances(self, cpu_arch: str) -> list[tuple[str, str, str]]:
        # One shared list per architecture: 10,000 nodes of one arch cost one list, not 10,000.
        found = self._supported.get(cpu_arch)
        if found is None:
            found = self._supported[cpu_arch] = [(cpu_arch, HYPERVISOR_TYPE, HYPERVISOR_TYPE)]
        return found

    async def _rows(self, columns: Sequence[Any] = _COLUMNS) -> Sequence[Any]:
        stmt = select(*columns).where(BareMetalNode.service_host == self.host).order_by(BareMetalNode.id)
        async with self.sessionmaker() as session:
            return (await session.execute(stmt)).all()

    async def get_available_nodes(self, refresh: bool = False) -> list[str]:
        stmt = select(BareMetalNode.id).where(BareMetalNode.service_host == self.host).order_by(BareMetalNode.id)
        async with self.sessionmaker() as session:
            return [str(i) for i in (await session.execute(stmt)).scalars()]

    async def get_available_resource(self, nodename: str) -> dict[str, Any]:
        if not nodename.isdigit():
            raise NotFound(f"node {nodename} not found")
        stmt = select(*_COLUMNS).where(BareMetalNode.id == int(nodename), BareMetalNode.service_host == self.host)
        async with self.sessionmaker() as session:
            row = (await session.execute(stmt)).one_or_none()
        if row is None:
            raise NotFound(f"node {nodename} is not managed by service {self.host}")
        return resources_of(row)

    async def get_available_resources(self, on_error: OnError | None = None) -> dict[str, dict[str, Any]]:
        """``get_available_resource`` for every node of this service, in one statement."""
        return _each(await self._rows(), lambda row: (str(row[0]), resources_of(row)), on_error)

    async def resource_keys(self, session: AsyncSession) -> dict[int, int]:
        """The change key (``change_key``) of every node of this service: all an incremental
        ``update_available_resource`` pass reads when nothing changed."""
        stmt = select(_N.c.id, _RESOURCE_KEY).where(_N.c.service_host == self.host)
        result = await session.execute(stmt)
        with collector_paused():
            return dict(result.all())

    async def resources_for(
        self, session: AsyncSession, node_ids: Iterable[int] | None, on_error: OnError | None = None
    ) -> tuple[dict[int, int], dict[int, dict[str, Any]]]:
        """The change keys and ``get_available_resource`` of ``node_ids`` of this service (every one when
        None: one statement; else one per 500 ids). A node gone or another service's is absent."""
        keys: dict[int, int] = {}

        def step(row: Any) -> tuple[int, dict[str, Any]]:
            keys[row[0]] = change_key(row[-1])
            return row[0], resources_of(row)

        found = await self._select(session, (*_COLUMNS, BareMetalNode.version), node_ids, fleet=False, step=step,
                                   on_error=on_error)  # fmt: skip
        return keys, found

    def deploy_blocker(self, row: Any) -> str:
        """Why this node cannot take a deploy whatever the request ('' when it can): its composed driver's
        ``validate`` (one definition, shared with the spawn path). Cheap, no I/O."""
        return self.drivers.blocker(NodeFacts.of_row(row))

    def host_stats_of(self, row: Any) -> dict[str, Any]:
        vcpus, memory_mb, local_gb, vcpus_used, memory_used, disk_used, *_ = resource_values(row)
        specs = self.specs_of(row[8])
        nodename = str(row[0])
        stats = {
            "vcpus": vcpus,
            "vcpus_used": vcpus_used,
            "cpu_info": CPU_INFO,
            "disk_total": local_gb,
            "disk_used": disk_used,
            "disk_available": local_gb - disk_used,
            "host_memory_total": memory_mb,
            "host_memory_free": memory_mb - memory_used,
            "hypervisor_type": HYPERVISOR_TYPE,
            "hypervisor_version": HYPERVISOR_VERSION,
            "hypervisor_hostname": nodename,
            "supported_instances": self.supported_instances(str(specs.get("cpu_arch", ""))),
            **specs,
            "host": row[1],  # the owning service (this one, but with fleet_view)
            "node": nodename,
            "maintenance": bool(row[7]),
            "boot_mode": row.boot_mode or "bios",  # a capability flavors match (capabilities:boot_mode)
        }
        blocker = self.deploy_blocker(row)
        stats["deploy_ready"] = not blocker
        stats["deploy_blocker"] = blocker
        return stats

    async def get_host_stats(self, refresh: bool = False, on_error: OnError | None = None) -> list[dict[str, Any]]:
        """One capability dict per node of this service (the seed returns a list, not a dict); with
        ``fleet_view``, per node of every service."""
        if self.fleet_view:
            async with self.sessionmaker() as session:
                rows = (await session.execute(select(*_STATS_COLUMNS).order_by(BareMetalNode.id))).all()
        else:
            rows = await self._rows(_STATS_COLUMNS)
        return list(_each(rows, lambda row: (row[0], self.host_stats_of(row)), on_error).values())

    async def host_stats_for(
        self, session: AsyncSession, node_ids: Iterable[int] | None, on_error: OnError | None = None
    ) -> dict[int, dict[str, Any]]:
        """The capability dicts of ``node_ids`` by node id, in ``get_host_stats``'s scope (every node with
        ``fleet_view``, else this service's), one statement per 500 ids (every node in scope, in one, when
        None): what the scheduler reads of the nodes whose capabilities changed. An id out of scope or gone
        is absent."""
        return await self._select(session, _STATS_COLUMNS, node_ids, fleet=self.fleet_view,
                                  step=lambda row: (row[0], self.host_stats_of(row)), on_error=on_error)  # fmt: skip

    async def host_stats_keys(self, session: AsyncSession) -> dict[int, int]:
        """The change key (``change_key``: version and NIC count) of every node in ``get_host_stats``'s
        scope: all an incremental ``report_driver_status`` pass reads when nothing changed."""
        stmt = select(_N.c.id, _STATS_KEY)
        if not self.fleet_view:
            stmt = stmt.where(_N.c.service_host == self.host)
        result = await session.execute(stmt)
        with collector_paused():
            return dict(result.all())

    async def host_stats_keyed(
        self, session: AsyncSession, node_ids: Iterable[int] | None, on_error: OnError | None = None
    ) -> tuple[dict[int, int], dict[int, dict[str, Any]]]:
        """``host_stats_for`` with each node's change key (every node in scope when ``node_ids`` is None,
        in one statement): the key read with the row it describes."""
        keys: dict[int, int] = {}

        def step(row: Any) -> tuple[int, dict[str, Any]]:
            keys[row[0]] = change_key(row[-1], row.interface_count)
            return row[0], self.host_stats_of(row)

        found = await self._select(session, (*_STATS_COLUMNS, BareMetalNode.version), node_ids,
                                   fleet=self.fleet_view, step=step, on_error=on_error)  # fmt: skip
        return keys, found

    async def _select(
        self,
        session: AsyncSession,
        columns: Sequence[Any],
        node_ids: Iterable[int] | None,
        *,
        fleet: bool,
        step: Callable[[Any], tuple[Any, Any]],
        on_error: OnError | None,
    ) -> dict[Any, Any]:
        """``step`` (see ``_each``) on the rows of ``columns`` of the nodes in scope (this service's, or
        every one with ``fleet``): every node when ``node_ids`` is None, in pages of 5,000 by id, else those
        ids, 500 per statement. Each page's rows are dropped once stepped: a first pass over 100,000 nodes
        never holds all its rows at once (the memory they took stays with the process)."""
        base = select(*columns).order_by(BareMetalNode.id)
        if not fleet:
            base = base.where(BareMetalNode.service_host == self.host)
        out: dict[Any, Any] = {}
        if node_ids is None:
            last = 0
            while True:
                page = (await session.execute(base.where(BareMetalNode.id > last).limit(_PAGE))).all()
                out.update(_each(page, step, on_error))
                if len(page) < _PAGE:
                    return out
                last = page[-1][0]
        ids = sorted(set(node_ids))
        for start in range(0, len(ids), _CHUNK):
            stmt = base.where(BareMetalNode.id.in_(ids[start : start + _CHUNK]))
            out.update(_each((await session.execute(stmt)).all(), step, on_error))
        return out


def _each(rows: Sequence[Any], step: Callable[[Any], tuple[Any, Any]], on_error: OnError | None) -> dict[Any, Any]:
    """``step`` on every row, into a dict; a row whose step raises goes to ``on_error`` (raised without one)."""
    out: dict[Any, Any] = {}
    for row in rows:
        try:
            key, value = step(row)
        except Exception as err:
            if on_error is None:
                raise
            on_error(int(row[0]), err)
            continue
        out[key] = value
    return out
