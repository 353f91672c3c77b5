"""The inspection report the agent's collector (``bmd/agent/inspect.sh``) posts: validated and bounded.

Every string is bounded, every list too (a report is at most a few hundred KiB whatever the machine
sends); unknown keys are refused, so a rule's path (:mod:`bmd.inspection.rules`) can be checked against
this model when the configuration is read."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Text = Annotated[str, Field(max_length=255)]
Count = Annotated[int, Field(ge=0, le=1 << 62)]
MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cpu(_Part):
    count: Annotated[int, Field(ge=1, le=65536)]
    arch: Annotated[str, Field(min_length=1, max_length=32)]
    model: Text | None = None


class Memory(_Part):
    total_mib: Count | None = None  # MemTotal: what the kernel can use
    physical_mib: Count | None = None  # the online memory blocks: what is installed


class System(_Part):
    vendor: Text | None = None
    product: Text | None = None
    serial: Text | None = None


class Disk(_Part):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    size: Count  # bytes
    model: Text | None = None
    vendor: Text | None = None
    serial: Text | None = None
    wwn: Text | None = None
    rotational: bool | None = None


class Lldp(_Part):
    chassis_id: Text | None = None
    chassis_id_subtype: Annotated[int, Field(ge=0, le=255)] | None = None
    port_id: Text | None = None
    port_id_subtype: Annotated[int, Field(ge=0, le=255)] | None = None
    system_name: Text | None = None
    port_description: Text | None = None


class Nic(_Part):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._@:-]{1,32}$")]
    mac: Annotated[str, Field(pattern=MAC_PATTERN)] | None = None
    carrier: bool | None = None
    speed_mbps: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    lldp: Lldp | None = None


class InspectionReport(_Part):
    version: Literal[1] = 1
    cpu: Cpu
    memory: Memory
    boot_mode: Literal["bios", "uefi"] = "bios"
    system: System = Field(default_factory=System)
    disks: Annotated[list[Disk], Field(max_length=256)] = Field(default_factory=list)
    nics: Annotated[list[Nic], Field(max_length=256)] = Field(default_factory=list)

    @property
    def memory_mib(self) -> int | None:
        """What is installed when the kernel says, else what it can use."""
        return self.memory.physical_mib or self.memory.total_mib
