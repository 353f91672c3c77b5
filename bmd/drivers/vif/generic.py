"""``generic``: the database binding only; nothing is wired on the network side."""

from __future__ import annotations

from collections.abc import Sequence

from bmd.drivers.vif.base import VifBinding, VifDriver


class GenericVif(VifDriver):
    """The database binding only."""

    name = "generic"

    async def attach(self, bindings: Sequence[VifBinding]) -> None:
        return None

    async def detach(self, bindings: Sequence[VifBinding]) -> None:
        return None
