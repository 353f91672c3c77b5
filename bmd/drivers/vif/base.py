"""The VIF interface: what a network driver does once the database binding is stored."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from bmd.drivers.base import BaseInterface
from bmd.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class VifBinding:
    """One VIF bound to one of the node's interfaces, with what the network side needs."""

    interface_id: int
    address: str
    datapath_id: str | None
    port_no: int | None
    vif_uuid: str
    network_id: str
    vlan_id: int | None


class VifDriver(BaseInterface):
    """The network side of plugging. ``attach`` is all or nothing; ``detach`` is idempotent.

    ``validate(node)`` accepts every node: which interfaces a request binds (and so which switch ports must
    be known) depends on the request, so that check is made at plug time (:func:`switch_port`).
    """

    slot = "vif"

    @abc.abstractmethod
    async def attach(self, bindings: Sequence[VifBinding]) -> None: ...

    @abc.abstractmethod
    async def detach(self, bindings: Sequence[VifBinding]) -> None: ...


def switch_port(b: VifBinding) -> tuple[str, int]:
    """The (datapath_id, port_no) of a bound interface; InvalidInput when the switch port is not known."""
    if b.datapath_id is None or b.port_no is None:
        raise InvalidInput(
            f"interface {b.address} has no datapath_id/port_no; the switch port of a VIF must be known",
            field="interfaces.datapath_id",
        )
    return b.datapath_id, b.port_no
