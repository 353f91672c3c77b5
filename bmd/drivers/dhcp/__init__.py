"""DHCP/TFTP for the provisioning network: a provider bmd drives (``pxe.dhcp_provider``).

``none`` (:mod:`.none`): the operator's own DHCP server hands out the PXE options (``docs/dhcp.md``).
``dnsmasq`` (:mod:`.dnsmasq`): bmd writes dnsmasq's configuration, one hosts file per node being deployed,
and runs it as a supervised child (:mod:`.supervisor`).
"""

from __future__ import annotations

from bmd.config import Settings
from bmd.drivers.dhcp.base import DhcpProvider
from bmd.drivers.dhcp.none import NoDhcp

__all__ = ["DhcpProvider", "NoDhcp", "build_provider"]


def build_provider(settings: Settings, public_url: str = "") -> DhcpProvider:
    """The configured provider (not started). ``public_url`` is how booting nodes reach bmd when
    ``api.public_url`` is not set; dnsmasq hands iPXE ``<that>/images/boot.ipxe``."""
    if settings.pxe.dhcp_provider == "dnsmasq":
        from bmd.drivers.dhcp.dnsmasq import DnsmasqProvider

        return DnsmasqProvider.from_settings(settings, public_url)
    return NoDhcp()
