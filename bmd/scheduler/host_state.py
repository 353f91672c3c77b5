"""What the scheduler knows about a node, and what a request asks for.

A ``BaremetalNodeState`` is one node seen as a host that holds exactly one instance. Its sizes and
capabilities come from the capability dict the driver publishes on the bus (``update_from_capabilities``);
whether it is free comes from its ``bm_nodes`` row (``set_node``, fed by the host manager), and once that is
known the dict's used/free figures are not: a free node offers its whole size, a node that is not free
nothing. ``consume_from_instance`` marks the whole node as used, whatever the flavor: free RAM and disk 0,
every vcpu used (Nova's bare-metal host state).

Units follow Nova: RAM in MB, total disk in GB, free disk in MB (``free_disk_gb * 1024``), swap in MB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from bmd.errors import InvalidInput
from bmd.flavors import Flavor

__all__ = ["BaremetalNodeState", "RequestSpec", "SupportedInstance"]

SupportedInstance = tuple[str, ...]
"""One ``(cpu_arch, hypervisor_type, vm_mode)`` triple a node can run."""


def _int(source: Mapping[str, Any], key: str, default: int) -> int:
    raw = source.get(key, default)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise InvalidInput(f"{key} must be a number, not {raw!r}", field=key)
    try:
        return int(raw)
    except ValueError as err:
        raise InvalidInput(f"{key} must be a number, not {raw!r}", field=key) from err


def _supported_instances(raw: object) -> tuple[SupportedInstance, ...]:
    if not isinstance(raw, list | tuple):
        raise InvalidInput("supported_instances must be a list of triples", field="supported_instances")
    result = []
    for entry in raw:
        if not isinstance(entry, list | tuple):
            raise InvalidInput("supported_instances must be a list of triples", field="supported_instances")
        result.append(tuple("" if item is None else str(item) for item in entry))
    return tuple(result)


@dataclass(eq=False)
class BaremetalNodeState:
    """Mutable scheduling view of one node. Change it only through the ``HostSelector`` that holds it,
    which keeps its index in step; a state outside a selector can be changed freely."""

    host: str
    nodename: str
    node_id: int | None = None
    total_usable_ram_mb: int = 0
    free_ram_mb: int = 0
    total_usable_disk_gb: int = 0
    free_disk_mb: int = 0
    vcpus_total: int = 0
    vcpus_used: int = 0
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    supported_instances: tuple[SupportedInstance, ...] = ()
    hypervisor_type: str = ""
    hypervisor_version: int = 0
    host_ip: str | None = None
    maintenance: bool = False
    power_fault: bool = False
    service_up: bool = True
    deploy_ready: bool = True  # the driver's verdict: it has an interface, its BMC fields are valid
    deploy_blocker: str = ""  # why not, when not
    updated: datetime | None = None
    # From bm_nodes (bmd.db.nodes.FREE), once known: whether the node is free, and its maintenance flag.
    # None: not known yet, the capability dict's figures decide (a selector fed by capabilities alone).
    node_free: bool | None = None
    node_maintenance: bool | None = None

    def __post_init__(self) -> None:
        if self.node_id is None and self.nodename.isdigit():
            self.node_id = int(self.nodename)

    def update_from_capabilities(self, caps: Mapping[str, Any], *, at: datetime | None = None) -> None:
        """Take in one node's capability dict as published on the bus (keys of ``get_host_stats``).
        All or nothing: a malformed value raises ``InvalidInput`` and leaves the state as it was."""
        values: dict[str, Any] = {
            "total_usable_ram_mb": _int(caps, "host_memory_total", self.total_usable_ram_mb),
            "free_ram_mb": _int(caps, "host_memory_free", self.free_ram_mb),
            "total_usable_disk_gb": _int(caps, "disk_total", self.total_usable_disk_gb),
            "free_disk_mb": _int(caps, "disk_available", self.free_disk_mb // 1024) * 1024,
            "vcpus_total": _int(caps, "vcpus", self.vcpus_total),
            "vcpus_used": _int(caps, "vcpus_used", self.vcpus_used),
            "hypervisor_version": _int(caps, "hypervisor_version", self.hypervisor_version),
        }
        if "supported_instances" in caps:
            values["supported_instances"] = _supported_instances(caps["supported_instances"])
        self._assign(
            values,
            capabilities=dict(caps),
            host=str(caps.get("host", self.host)),
            host_ip=caps.get("host_ip", self.host_ip),
            hypervisor_type=str(caps.get("hypervisor_type", self.hypervisor_type)),
            maintenance=bool(caps.get("maintenance", False)),
            deploy_ready=bool(caps.get("deploy_ready", True)),
            deploy_blocker=str(caps.get("deploy_blocker") or ""),
            updated=at or datetime.now(UTC),
        )
        self._apply_node()

    def set_node(self, *, free: bool, maintenance: bool) -> None:
        """What the node's bm_nodes row says: free or not, in maintenance or not."""
        self.node_free = free
        self.node_maintenance = maintenance
        self._apply_node()

    def _apply_node(self) -> None:
        if self.node_maintenance is not None:
            self.maintenance = self.node_maintenance
        if self.node_free is True:
            self.free_ram_mb = self.total_usable_ram_mb
            self.free_disk_mb = self.total_usable_disk_gb * 1024
            self.vcpus_used = 0
        elif self.node_free is False:
            self._use()

    def _assign(self, values: Mapping[str, Any], **more: Any) -> None:
        for name, value in {**values, **more}.items():
            setattr(self, name, value)

    def consume_from_instance(self, spec: RequestSpec | None = None) -> None:
        """One instance takes the whole node, whatever its flavor."""
        self.node_free = False if self.node_free is not None else None
        self._use()

    def _use(self) -> None:
        self.free_ram_mb = 0
        self.free_disk_mb = 0
        self.vcpus_used = self.vcpus_total

    def __repr__(self) -> str:
        return f"BaremetalNodeState({self.host!r}, {self.nodename!r})"


HINTS = ("same_capability", "different_capability")


@dataclass(frozen=True)
class RequestSpec:
    """One scheduling request: ``num_instances`` instances of ``flavor`` booted from an image with
    ``image_properties``, with scheduler ``hints``.

    ``instance_index`` and ``chosen`` are filled in by the selection loop, not by callers: the index of the
    instance being placed and the (consumed) states of the nodes picked for the earlier instances.
    """

    flavor: Flavor
    image_properties: Mapping[str, Any] = field(default_factory=dict)
    num_instances: int = 1
    hints: Mapping[str, Any] = field(default_factory=dict)
    instance_index: int = 0
    chosen: tuple[BaremetalNodeState, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.num_instances, bool) or not isinstance(self.num_instances, int):
            raise InvalidInput("num_instances must be an integer", field="num_instances")
        if self.num_instances < 1:
            raise InvalidInput("num_instances must be at least 1", field="num_instances")
        for hint in HINTS:
            if hint in self.hints:
                value = self.hints[hint]
                if not isinstance(value, str) or not value.strip():
                    raise InvalidInput(f"hint {hint} must name a capability", field=f"hints.{hint}")
        object.__setattr__(self, "image_properties", MappingProxyType(dict(self.image_properties)))
        object.__setattr__(self, "hints", MappingProxyType(dict(self.hints)))

    @property
    def extra_specs(self) -> Mapping[str, str]:
        return self.flavor.extra_specs

    def for_instance(self, index: int, chosen: tuple[BaremetalNodeState, ...]) -> RequestSpec:
        """The spec the filters see while placing instance ``index`` after ``chosen``."""
        return dataclasses.replace(self, instance_index=index, chosen=chosen)
