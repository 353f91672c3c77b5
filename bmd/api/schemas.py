"""Request bodies, validated with pydantic: unknown fields and wrong types are refused, naming the field."""

from __future__ import annotations

import ipaddress
import math
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from bmd.config import GROUP_PATTERN
from bmd.drivers.deploy.configdrive import check_hostname, check_meta, check_network_data, check_ssh_key

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,254}$")
_SPEC_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")


def normalize_mac(value: str) -> str:
    mac = value.strip().lower()
    if not _MAC.match(mac):
        raise ValueError(f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return mac.replace("-", ":")


def check_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as err:
        raise ValueError(f"{value!r} is not a UUID") from err


def check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("must be 1-255 characters of letters, digits, '.', '_', '-' or '~'")
    if value.isdigit():
        raise ValueError("must not be all digits (it would read as a node id)")
    try:
        uuid.UUID(value)
    except ValueError:
        return value
    raise ValueError("must not look like a UUID")


def check_ip(value: str) -> str:
    """The canonical text of an IP address; an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is the IPv4
    address it maps, so one address is stored one way and a duplicate is seen as one."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError as err:
        raise ValueError(f"{value!r} is not an IP address") from err
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def check_spec_key(value: str) -> str:
    if not _SPEC_KEY.match(value):
        raise ValueError(f"{value!r} is not a capability key (letters, digits, '_', '.', '-'; no ':')")
    return value


RESERVED_SPEC_KEYS = frozenset(
    {
        "vcpus",
        "vcpus_used",
        "cpu_info",
        "disk_total",
        "disk_used",
        "disk_available",
        "host_memory_total",
        "host_memory_free",
        "hypervisor_type",
        "hypervisor_version",
        "hypervisor_hostname",
        "supported_instances",
        "host",
        "node",
        "host_ip",
        "maintenance",
        "baremetal_driver",
        "deploy_ready",
        "deploy_blocker",
    }
)


def _check_finite(key: str, item: Any) -> None:
    """NaN and Infinity are not JSON: a capability holding one would make ``/v1/nodes`` unparseable."""
    if isinstance(item, float) and not math.isfinite(item):
        raise ValueError(f"capability {key!r} must be a finite number, not {item}")
    if isinstance(item, list):
        for element in item:
            _check_finite(key, element)
    if isinstance(item, dict):
        for element in item.values():
            _check_finite(key, element)


def check_specs(value: dict[str, Any], top: bool = True) -> dict[str, Any]:
    for key, item in value.items():
        check_spec_key(key)
        if top and key in RESERVED_SPEC_KEYS:
            raise ValueError(f"capability {key!r} is reserved (bmd computes it)")
        if isinstance(item, dict):
            check_specs(item, top=False)
        elif not isinstance(item, str | int | float | bool | list):
            raise ValueError(f"capability {key!r} must be a string, number, boolean, list or object")
        else:
            _check_finite(key, item)
    return value


def check_finite_value(value: Any) -> Any:
    _check_finite("value", value)
    return value


Mac = Annotated[StrictStr, AfterValidator(normalize_mac)]
UUIDStr = Annotated[StrictStr, AfterValidator(check_uuid)]
NodeName = Annotated[StrictStr, AfterValidator(check_name)]
IPAddr = Annotated[StrictStr, AfterValidator(check_ip)]
Text255 = Annotated[StrictStr, Field(min_length=1, max_length=255)]
Specs = Annotated[dict[str, Any], AfterValidator(check_specs)]
Count = Annotated[StrictInt, Field(ge=1, le=1_000_000)]
Size = Annotated[StrictInt, Field(ge=0, le=1_000_000_000)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InterfaceCreate(Body):
    address: Mac
    datapath_id: Annotated[StrictStr, Field(max_length=255)] | None = None
    port_no: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = None  # the column is a 32-bit signed int


class InterfaceUpdate(Body):
    """``PATCH /v1/nodes/{node}/interfaces/{iface}``: where the interface is plugged (the MAC is its identity:
    a new MAC is a new interface). A field sent as null clears it."""

    datapath_id: Annotated[StrictStr, Field(max_length=255)] | None = None
    port_no: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = None


class RootDeviceHints(Body):
    """Ironic's root-device hints: the deploy agent writes the first disk that matches every hint given
    (no hint: the first disk). ``size`` is in GiB (the disk's size rounded down)."""

    size: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None
    model: Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[ -~]+$")] | None = None
    vendor: Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[ -~]+$")] | None = None
    serial: Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[ -~]+$")] | None = None
    wwn: Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[ -~]+$")] | None = None
    name: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^(/dev/)?[a-z0-9]+$")] | None = None


class NodeFields(Body):
    """Fields an operator may set at creation and change later."""

    name: NodeName | None = None
    # With service.ownership = "ring" the owner is derived (bmd.tasks.node_ownership): refused here.
    service_host: Text255 | None = None
    # Only the services serving this group own the node (service.groups); "" is the default group.
    conductor_group: Annotated[StrictStr, Field(max_length=255, pattern=GROUP_PATTERN)] | None = None
    cpus: Count | None = None
    memory_mb: Count | None = None
    local_gb: Size | None = None
    pm_driver: Annotated[StrictStr, Field(min_length=1, max_length=32)] | None = None
    pm_address: Text255 | None = None
    pm_user: Annotated[StrictStr, Field(max_length=255)] | None = None
    pm_password: Annotated[StrictStr, Field(max_length=1024)] | None = None
    prov_mac_address: Mac | None = None
    prov_vlan_id: Annotated[StrictInt, Field(ge=1, le=4094)] | None = None
    terminal_port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    extra_specs: Specs | None = None
    boot_mode: Literal["bios", "uefi"] | None = None
    root_device: RootDeviceHints | None = None


class NodeCreate(NodeFields):
    uuid: UUIDStr | None = None
    # 0: not known yet (a node enrolled with only its BMC); inspection fills them in.
    cpus: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 0
    memory_mb: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 0
    local_gb: Size = 0
    maintenance: StrictBool = False
    maintenance_reason: Annotated[StrictStr, Field(max_length=1024)] | None = None
    interfaces: list[InterfaceCreate] = Field(default_factory=list, max_length=64)


class NodeUpdate(NodeFields):
    maintenance: StrictBool | None = None
    maintenance_reason: Annotated[StrictStr, Field(max_length=1024)] | None = None


class NodeImport(Body):
    nodes: list[NodeCreate] = Field(max_length=100_000)


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class CapabilityValue(Body):
    value: Annotated[
        StrictStr | StrictInt | FiniteFloat | StrictBool | list[Any] | Specs, AfterValidator(check_finite_value)
    ]


class PxeIpCreate(Body):
    address: IPAddr
    server_address: IPAddr

    @field_validator("server_address")
    @classmethod
    def _not_the_address(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("address"):
            raise ValueError(f"{value} is the address itself: a node cannot be its own PXE server")
        return value


_FLAVOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_EXTRA_SPEC_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")


def check_flavor_name(value: str) -> str:
    if not _FLAVOR_NAME.match(value):
        raise ValueError("must be 1-255 characters of letters, digits, '.', '_' or '-'")
    return value


def check_extra_spec_key(value: str) -> str:
    if not _EXTRA_SPEC_KEY.match(value):
        raise ValueError(f"{value!r} is not an extra spec key (letters, digits, '_', '.', '-', ':')")
    return value


def check_extra_specs(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        check_extra_spec_key(key)
    return value


FlavorName = Annotated[StrictStr, AfterValidator(check_flavor_name)]
ExtraSpecValue = Annotated[StrictStr, Field(max_length=255)]
ExtraSpecs = Annotated[dict[str, ExtraSpecValue], AfterValidator(check_extra_specs)]


class FlavorCreate(Body):
    name: FlavorName
    ram: Count
    vcpus: Count
    disk: Size
    ephemeral: Size = 0
    swap: Size = 0
    flavorid: Annotated[StrictStr, Field(min_length=1, max_length=255)] | None = None
    extra_specs: ExtraSpecs = Field(default_factory=dict)


class ExtraSpecsBody(Body):
    extra_specs: ExtraSpecs


class ExtraSpecValueBody(Body):
    value: ExtraSpecValue


class PowerTarget(Body):
    target: Literal["power on", "power off", "reboot"]


class BootDeviceBody(Body):
    boot_device: Literal["pxe", "disk", "bios"]
    persistent: StrictBool = False


class MaintenanceBody(Body):
    reason: Annotated[StrictStr, Field(max_length=1024)] | None = None


class NetworkRef(Body):
    id: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    vlan: Annotated[StrictInt, Field(ge=1, le=4094)] | None = None


_CHECKSUM = r"^(md5|sha256|sha512):[0-9a-fA-F]+$"
Checksum = Annotated[StrictStr, Field(pattern=_CHECKSUM, max_length=200)]
ImageRefStr = Annotated[StrictStr, Field(min_length=1, max_length=2048)]


class ScheduleRequest(Body):
    flavor: FlavorName
    image_properties: dict[str, StrictStr] = Field(default_factory=dict)
    num_instances: Annotated[StrictInt, Field(ge=1, le=1000)] = 1
    hints: dict[str, StrictStr] = Field(default_factory=dict)


class SpawnRequest(Body):
    """``POST /v1/nodes/{node}/spawn`` (services only): deploy the instance claimed on the node."""

    instance_uuid: UUIDStr


class InstanceCreate(ScheduleRequest):
    image_ref: ImageRefStr
    image_checksum: Checksum | None = None
    kernel_ref: ImageRefStr | None = None
    kernel_checksum: Checksum | None = None
    ramdisk_ref: ImageRefStr | None = None
    ramdisk_checksum: Checksum | None = None
    networks: list[NetworkRef] = Field(default_factory=list, max_length=16)
    name: NodeName | None = None
    # true: a whole-disk image (no instance kernel/ramdisk even if configured); unset: whole-disk when
    # neither kernel nor ramdisk is given or configured
    whole_disk: StrictBool | None = None
    # The config drive (docs/images.md): any of these set → bmd builds one for the instance.
    hostname: Annotated[StrictStr, Field(max_length=254), AfterValidator(check_hostname)] | None = None
    ssh_keys: list[Annotated[StrictStr, AfterValidator(check_ssh_key)]] = Field(default_factory=list, max_length=32)
    user_data: Annotated[StrictStr, Field(max_length=90_000)] | None = None  # ≤ 64 KiB once decoded
    user_data_base64: StrictBool = False
    network_data: Annotated[dict[str, Any], AfterValidator(check_network_data)] | None = None
    meta: Annotated[dict[StrictStr, StrictStr], AfterValidator(check_meta)] | None = None


class DeployInfo(BaseModel):
    """The deploy agent's callback (pass_deploy_info); the caller is authenticated by its agent token
    (``X-Agent-Token``), never by the body."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    deployment_id: StrictStr | StrictInt | None = None
    address: StrictStr | None = None
    error: Annotated[StrictStr, Field(max_length=4096)] | None = None
    # The tail of the agent's console (its own log), appended to the node's console log.
    console: Annotated[StrictStr, Field(max_length=65536)] | None = None


class AgentLookup(Body):
    """A booted deploy ramdisk asks for its token: it knows only its node and the MAC it booted from."""

    node_uuid: UUIDStr
    mac: Mac | None = None


class AgentHeartbeat(Body):
    message: Annotated[StrictStr, Field(max_length=1024)] = ""
