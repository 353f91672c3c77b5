"""``dhcp_provider = "none"``: the operator's DHCP server does it (see ``docs/dhcp.md``); bmd only writes
the boot files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bmd.tasks.runner import PeriodicTask


class NoDhcp:
    name = "none"

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def add_node(self, node_uuid: str, macs: Sequence[str], boot_mode: str, address: str | None = None) -> None:
        return None

    async def remove_node(self, node_uuid: str) -> None:
        return None

    def periodic(self) -> list[PeriodicTask]:
        return []

    def health(self) -> dict[str, Any]:
        return {"provider": self.name, "status": "ok"}
