"""``BareMetalDriver``: one bmd service presents every physical node it manages as its own host.

The seed's contract holds: ``get_available_nodes()`` lists the nodenames (``str(node.id)``) of this
service's nodes; ``get_available_resource(nodename)`` gives one node's resources; ``get_host_stats()``
returns a *list*, one capability dict per node. Each call reads the nodes in one batched statement
(columns only, no ORM objects), whatever the number of nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd.config import Settings, parse_extra_specs
from bmd.db.models import BareMetalNode
from bmd.errors import NotFound

HYPERVISOR_TYPE = "baremetal"
HYPERVISOR_VERSION = 1
CPU_INFO = "baremetal cpu"

# Only what the resource and capability views need: a narrow row keeps a 10,000-node pass cheap.
_COLUMNS = (
    BareMetalNode.id,
    BareMetalNode.service_host,
    BareMetalNode.cpus,
    BareMetalNode.memory_mb,
    BareMetalNode.local_gb,
    BareMetalNode.instance_uuid,
    BareMetalNode.provision_state,
    BareMetalNode.maintenance,
    BareMetalNode.extra_specs,
)


def node_is_free(row: Row[Any] | BareMetalNode) -> bool:
    """A node offers its resources only when it holds no instance, is available and not in maintenance."""
    return row.instance_uuid is None and row.provision_state == "available" and not row.maintenance


def resources_of(row: Row[Any] | BareMetalNode) -> dict[str, Any]:
    """``get_available_resource`` for one node: one instance per node, so all or nothing is used."""
    used = not node_is_free(row)
    return {
        "vcpus": row.cpus,
        "memory_mb": row.memory_mb,
        "local_gb": row.local_gb,
        "vcpus_used": row.cpus if used else 0,
        "memory_mb_used": row.memory_mb if used else 0,
        "local_gb_used": row.local_gb if used else 0,
        "hypervisor_type": HYPERVISOR_TYPE,
        "hypervisor_version": HYPERVISOR_VERSION,
        "hypervisor_hostname": str(row.id),
        "cpu_info": CPU_INFO,
        "running_vms": 1 if row.instance_uuid is not None else 0,
        "service_host": row.service_host,
    }


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
    """The compute driver for one service host. Power, deploy and vif interfaces hang off it."""

    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.host = settings.service.host
        self.sessionmaker = sessionmaker
        self.extra_specs = parse_extra_specs(
            settings.driver.instance_type_extra_specs, settings.driver.baremetal_driver
        )
        self._supported: dict[str, list[tuple[str, str, str]]] = {}

    def supported_instances(self, cpu_arch: str) -> list[tuple[str, str, str]]:
        # One shared list per architecture: 10,000 nodes of one arch cost one list, not 10,000.
        found = self._supported.get(cpu_arch)
        if found is None:
            found = self._supported[cpu_arch] = [(cpu_arch, HYPERVISOR_TYPE, HYPERVISOR_TYPE)]
        return found

    async def _rows(self) -> Sequence[Row[Any]]:
        stmt = select(*_COLUMNS).where(BareMetalNode.service_host == self.host).order_by(BareMetalNode.id)
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

    async def get_available_resources(self) -> dict[str, dict[str, Any]]:
        """``get_available_resource`` for every node of this service, in one statement."""
        return {str(row.id): resources_of(row) for row in await self._rows()}

    def host_stats_of(self, row: Row[Any]) -> dict[str, Any]:
        specs = merge_specs(self.extra_specs, row.extra_specs) if row.extra_specs else self.extra_specs
        res = resources_of(row)
        nodename = res["hypervisor_hostname"]
        stats = {
            "vcpus": res["vcpus"],
            "vcpus_used": res["vcpus_used"],
            "cpu_info": CPU_INFO,
            "disk_total": res["local_gb"],
            "disk_used": res["local_gb_used"],
            "disk_available": res["local_gb"] - res["local_gb_used"],
            "host_memory_total": res["memory_mb"],
            "host_memory_free": res["memory_mb"] - res["memory_mb_used"],
            "hypervisor_type": HYPERVISOR_TYPE,
            "hypervisor_version": HYPERVISOR_VERSION,
            "hypervisor_hostname": nodename,
            "supported_instances": self.supported_instances(str(specs.get("cpu_arch", ""))),
        }
        stats.update(specs)
        stats["host"] = self.host
        stats["node"] = nodename
        stats["maintenance"] = bool(row.maintenance)
        return stats

    async def get_host_stats(self, refresh: bool = False) -> list[dict[str, Any]]:
        """One capability dict per node of this service (the seed returns a list, not a dict)."""
        return [self.host_stats_of(row) for row in await self._rows()]
