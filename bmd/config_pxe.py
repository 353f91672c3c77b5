"""The ``[pxe]`` section (DHCP/TFTP for the provisioning network, :mod:`bmd.drivers.dhcp`), kept apart from
:mod:`bmd.config` (which imports it into :class:`~bmd.config.Settings`) because its checks are many: every
address is checked against the range's subnet, and each error names its key (``pxe.dhcp_range_end``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

PositiveSeconds = Annotated[float, Field(gt=0)]


_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


def _ipv4(value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"not an IPv4 address: {value!r}") from None


class PxeSettings(BaseModel):
    """DHCP/TFTP for the provisioning network (:mod:`bmd.drivers.dhcp`). With ``dhcp_provider = "dnsmasq"``
    bmd runs dnsmasq as a supervised child; with ``"none"`` the operator's own DHCP server does it. The
    addresses are checked whatever the provider; the keys dnsmasq needs are required only with it.
    Validators run in field order, so a later key is checked against the earlier ones (``info.data``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)  # as every bmd.config section

    dhcp_provider: Literal["none", "dnsmasq"] = "none"
    interface: str = Field(default="", validate_default=True)
    dhcp_netmask: str = "255.255.255.0"
    dhcp_range_start: str = Field(default="", validate_default=True)
    dhcp_range_end: str = Field(default="", validate_default=True)
    listen_address: str = ""
    dhcp_router: str = ""
    dns_servers: list[str] = Field(default_factory=list)
    dhcp_lease_time: Annotated[int, Field(ge=120)] = 3600
    ipxe_boot_url: str = ""
    ipxe_dir: str = "/usr/lib/ipxe"
    dnsmasq_path: str = "/usr/sbin/dnsmasq"
    state_dir: str = ""
    dnsmasq_user: str = ""
    extra_options: list[str] = Field(default_factory=list)
    log_max_bytes: Annotated[int, Field(ge=65536)] = 16 * 1024**2
    restart_backoff: PositiveSeconds = 1.0
    restart_backoff_max: PositiveSeconds = 30.0
    start_timeout: PositiveSeconds = 10.0

    @staticmethod
    def _dnsmasq(info: ValidationInfo) -> bool:
        return info.data.get("dhcp_provider") == "dnsmasq"

    @field_validator("interface")
    @classmethod
    def _check_interface(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            if cls._dnsmasq(info):
                raise ValueError('the provisioning network interface is required with dhcp_provider = "dnsmasq"')
            return value
        if not _IFNAME.match(value):
            raise ValueError(f"not a network interface name: {value!r}")
        return value

    @field_validator("dhcp_netmask", mode="before")
    @classmethod
    def _prefix_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("dhcp_netmask")
    @classmethod
    def _check_netmask(cls, value: str) -> str:
        text = value.removeprefix("/")
        try:
            net = ipaddress.IPv4Network(f"0.0.0.0/{text}")
        except ValueError:
            raise ValueError(f"not a netmask or prefix length: {value!r}") from None
        if net.prefixlen > 30:
            raise ValueError(f"/{net.prefixlen} leaves no room for a DHCP range")
        return str(net.netmask)

    @classmethod
    def _network(cls, info: ValidationInfo) -> ipaddress.IPv4Network | None:
        """The subnet of the range (from the already checked start and netmask), None if either is bad."""
        start, mask = info.data.get("dhcp_range_start"), info.data.get("dhcp_netmask")
        if not start or not mask:
            return None
        return ipaddress.IPv4Network(f"{start}/{mask}", strict=False)

    @field_validator("dhcp_range_start")
    @classmethod
    def _check_start(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            if cls._dnsmasq(info):
                raise ValueError('required with dhcp_provider = "dnsmasq"')
            return value
        address = _ipv4(value)
        if "dhcp_netmask" in info.data:
            net = ipaddress.IPv4Network(f"{value}/{info.data['dhcp_netmask']}", strict=False)
            if address in (net.network_address, net.broadcast_address):
                raise ValueError(f"{value} is the network or broadcast address of {net}")
        return str(address)

    @field_validator("dhcp_range_end")
    @classmethod
    def _check_end(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            if cls._dnsmasq(info) or info.data.get("dhcp_range_start"):
                raise ValueError("required with dhcp_range_start")
            return value
        address = _ipv4(value)
        net = cls._network(info)
        if net is not None:
            start = ipaddress.IPv4Address(info.data["dhcp_range_start"])
            if address not in net:
                raise ValueError(f"{value} is not in the range's subnet {net} (dhcp_range_start, dhcp_netmask)")
            if address < start:
                raise ValueError(f"{value} is before dhcp_range_start {start}")
            if address == net.broadcast_address:
                raise ValueError(f"{value} is the broadcast address of {net}")
        return str(address)

    @field_validator("listen_address", "dhcp_router")
    @classmethod
    def _check_in_subnet(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return value
        address = _ipv4(value)
        net = cls._network(info)
        if net is not None and (address not in net or address in (net.network_address, net.broadcast_address)):
            raise ValueError(f"{value} is not a host address in the range's subnet {net}")
        if info.field_name == "listen_address" and net is not None and info.data.get("dhcp_range_end"):
            start = ipaddress.IPv4Address(info.data["dhcp_range_start"])
            if start <= address <= ipaddress.IPv4Address(info.data["dhcp_range_end"]):
                raise ValueError(f"{value} is inside the DHCP range: dnsmasq could hand it to a node")
        return str(address)

    @field_validator("dns_servers")
    @classmethod
    def _check_dns(cls, servers: list[str]) -> list[str]:
        return [str(_ipv4(s)) for s in servers]

    @field_validator("ipxe_boot_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and (not re.match(r"^https?://[^\s\"',;$]+$", value)):
            raise ValueError(f"not an http(s):// URL without spaces, commas or quotes: {value!r}")
        return value

    @field_validator("dnsmasq_path", "ipxe_dir")
    @classmethod
    def _check_path(cls, value: str, info: ValidationInfo) -> str:
        if cls._dnsmasq(info) and not value.strip():
            raise ValueError('required with dhcp_provider = "dnsmasq"')
        return value

    @field_validator("dnsmasq_user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", value):
            raise ValueError(f"not a user name: {value!r}")
        return value

    @field_validator("extra_options")
    @classmethod
    def _check_extra(cls, options: list[str]) -> list[str]:
        for option in options:
            if not option.strip() or any(c in option for c in "\n\r\0"):
                raise ValueError(f"entry {option!r} must be one non-empty dnsmasq option line")
        return options

    @field_validator("restart_backoff_max")
    @classmethod
    def _check_backoff(cls, value: float, info: ValidationInfo) -> float:
        first = info.data.get("restart_backoff")
        if first is not None and value < first:
            raise ValueError(f"must be at least restart_backoff ({first})")
        return value
