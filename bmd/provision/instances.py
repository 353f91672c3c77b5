"""What an instance request asks for, and the instance rows it becomes once nodes are chosen.

The scheduler selects and claims nodes; the rows it writes with the claim, in the same transaction, are
built here (``build_instance_rows``), VIF uuids included (``network_info``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bmd.db.models import utcnow
from bmd.flavors import Flavor
from bmd.provision.request import DeployRequest
from bmd.scheduler.host_state import RequestSpec
from bmd.states import claimed_instance

if TYPE_CHECKING:
    from bmd.scheduler.manager import HostManager, Placement

__all__ = ["InstanceRequest", "build_instance_rows", "claim_instances", "network_info"]


@dataclass
class InstanceRequest:
    flavor: Flavor
    spec: RequestSpec
    deploy: DeployRequest  # as stored: refs redacted, the clear ones that carry credentials in secret_refs
    networks: list[dict[str, Any]] = field(default_factory=list)
    secret_refs: str | None = None  # instances.secret_refs (see bmd.drivers.deploy.refs.seal_refs)


def network_info(networks: list[dict[str, Any]]) -> list[Any]:
    """The seed's network_info for one instance: (network, mapping) pairs, a fresh VIF uuid each."""
    return [[{"id": n["id"], "vlan": n.get("vlan")}, {"vif_uuid": str(uuid.uuid4())}] for n in networks]


def build_instance_rows(
    request: InstanceRequest, placements: Sequence[Placement], reservation: str
) -> list[dict[str, Any]]:
    """One ``instances`` row per placement, building and spawning on its node."""
    now = utcnow()
    return [
        {
            "uuid": p.instance_uuid,
            "instance_type_id": request.flavor.id,
            "flavor_name": request.flavor.name,
            "reservation_id": reservation,
            "host": p.host,
            "node": p.nodename,
            "bm_node_id": p.node_id,
            **claimed_instance(),
            "image_ref": request.deploy.image_ref,
            "secret_refs": request.secret_refs,
            "image_properties": dict(request.spec.image_properties),
            "hints": dict(request.spec.hints),
            "network_info": network_info(request.networks),
            "deploy_info": request.deploy.to_json(),
            "created_at": now,
            "updated_at": now,
        }
        for p in placements
    ]


async def claim_instances(scheduler: HostManager, request: InstanceRequest) -> list[Placement]:
    """Claim nodes for the request and record its instances, all or nothing (one reservation)."""
    reservation = str(uuid.uuid4())
    return await scheduler.claim(request.spec, lambda placements: build_instance_rows(request, placements, reservation))
