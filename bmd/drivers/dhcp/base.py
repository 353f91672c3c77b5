"""The DHCP provider interface: what the deploy path and ``/healthz`` need of a DHCP/TFTP server.

A provider answers PXE requests only from the MACs it was given with :meth:`DhcpProvider.add_node` (the
nodes being deployed), until :meth:`DhcpProvider.remove_node`. ``health`` is read by ``/healthz`` and must
answer from memory (no I/O, no await): a provider keeps a status object its own tasks update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from bmd.tasks.runner import PeriodicTask

BOOT_MODES = ("bios", "uefi")


class DhcpProvider(Protocol):
    name: str

    async def start(self) -> None:
        """Start serving (with the service). Raises ConfigError/DriverError when it cannot start at all."""

    async def stop(self) -> None:
        """Stop serving (at service stop). Idempotent."""

    async def add_node(self, node_uuid: str, macs: Sequence[str], boot_mode: str, address: str | None = None) -> None:
        """Answer PXE requests from ``macs`` from now on (replacing the node's earlier MACs). Idempotent.
        ``address``: the node's allocated PXE IP (``bm_pxe_ips``), given to it when the provider serves that
        subnet (so ``agent.lookup_source = "pxe_ip"`` sees the agent come from it)."""

    async def remove_node(self, node_uuid: str) -> None:
        """Stop answering the node's MACs. Idempotent."""

    def periodic(self) -> Sequence[PeriodicTask]:
        """Loops the service's runner runs for the provider (e.g. dnsmasq's log rotation)."""

    def health(self) -> dict[str, Any]:
        """``{"provider": name, "status": "ok" | "failing", ...}`` from memory."""
