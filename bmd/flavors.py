"""The one ``Flavor`` type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bmd.errors import InvalidInput

__all__ = ["Flavor"]


@dataclass(frozen=True)
class Flavor:
    """An instance type (the seed's ``instance_types`` row and its extra specs), detached from any session:
    the one type the database queries return, the API shows and the scheduler matches. ``swap`` is in MB,
    disks in GB, as in Nova. ``id``/``flavorid`` are 0/"" for a flavor that is not stored (tests, benchmarks)."""

    name: str
    memory_mb: int
    vcpus: int
    root_gb: int
    ephemeral_gb: int = 0
    swap: int = 0
    extra_specs: Mapping[str, str] = field(default_factory=dict)
    id: int = 0
    flavorid: str = ""

    def __post_init__(self) -> None:
        for name in ("memory_mb", "vcpus", "root_gb", "ephemeral_gb", "swap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput(f"{name} must be a non-negative integer, not {value!r}", field=name)
        for key, req in self.extra_specs.items():
            if not isinstance(key, str) or not isinstance(req, str):
                raise InvalidInput(f"extra spec {key!r} must map a string to a string", field="extra_specs")
        object.__setattr__(self, "extra_specs", MappingProxyType(dict(self.extra_specs)))

    @property
    def disk_mb(self) -> int:
        """Disk the flavor asks for, in MB: root and ephemeral disks plus swap (Nova's DiskFilter)."""
        return 1024 * (self.root_gb + self.ephemeral_gb) + self.swap

    def as_dict(self) -> dict[str, Any]:
        """The API's view (the seed's names: ram, disk, ephemeral)."""
        return {
            "id": self.id,
            "name": self.name,
            "flavorid": self.flavorid,
            "ram": self.memory_mb,
            "vcpus": self.vcpus,
            "disk": self.root_gb,
            "ephemeral": self.ephemeral_gb,
            "swap": self.swap,
            "extra_specs": dict(self.extra_specs),
        }
