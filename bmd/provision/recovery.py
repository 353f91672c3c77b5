"""Deploy timeouts and restart recovery: no node is left in a transient state, claimed without a live
instance, or holding an instance that does not exist."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import select, update

from bmd.db.models import BareMetalNode, Deployment, Instance, utcnow
from bmd.errors import InvalidState
from bmd.node_events import note_nodes
from bmd.provision.conductor import Conductor, describe
from bmd.states import ProvisionState

log = structlog.get_logger(__name__)

LIVE_VM_STATES = ("building", "active", "error")


async def fail_timed_out_deploys(conductor: Conductor) -> int:
    """Every deploy of this service whose callback deadline passed goes to error (constant SQL per pass)."""
    p = conductor.p
    now = utcnow()
    late = (
        (BareMetalNode.provision_state == ProvisionState.WAIT_CALLBACK)
        & (BareMetalNode.deploy_deadline < now)
        & (BareMetalNode.service_host == p.settings.service.host)
    )
    reason = f"deploy timed out: no callback from the deploy agent within {p.settings.deploy.deploy_timeout:g} s"
    async with p.sessionmaker.begin() as session:
        rows = (await session.execute(select(BareMetalNode.id, BareMetalNode.instance_uuid).where(late))).all()
        if not rows:
            return 0
        await session.execute(
            update(BareMetalNode)
            .where(late, BareMetalNode.id.in_([r.id for r in rows]))
            .values(
                provision_state=ProvisionState.ERROR,
                provision_updated_at=now,
                last_error=reason,
                deploy_deadline=None,
                task_state=None,
            )
        )
        await note_nodes(session, [r.id for r in rows])
        await session.execute(
            update(Instance)
            .where(Instance.uuid.in_([r.instance_uuid for r in rows if r.instance_uuid]))
            .values(vm_state="error", task_state=None, last_error=reason, updated_at=now)
        )
        await session.execute(  # the agent tokens of those boots die with them
            update(Deployment).where(Deployment.bm_node_id.in_([r.id for r in rows])).values(agent_token_hash=None)
        )
    for r in rows:
        log.error("deploy_timed_out", node=r.id, instance=r.instance_uuid)
    return len(rows)


class DeployTimeouts:
    """Periodic loop: fail the deploys whose agent never called back."""

    name = "check_deploy_timeouts"

    def __init__(self, conductor: Conductor, interval: float) -> None:
        self.conductor = conductor
        self.interval = interval

    async def run_once(self) -> None:
        await fail_timed_out_deploys(self.conductor)


async def _release_orphan(conductor: Conductor, node: BareMetalNode) -> None:
    """The node holds an instance that is gone: give it back, clean."""
    failures = await conductor.p.teardown(node)
    async with conductor.p.sessionmaker.begin() as session:
        values: dict[str, Any] = {
            "instance_uuid": None,
            "task_state": None,
            "deploy_deadline": None,
            "provision_updated_at": utcnow(),
        }
        if failures:
            values |= {
                "provision_state": ProvisionState.ERROR,
                "last_error": "orphan cleanup failed: " + "; ".join(failures),
            }
        else:
            values |= {"provision_state": ProvisionState.AVAILABLE}
        await session.execute(
            update(BareMetalNode)
            .where(BareMetalNode.id == node.id, BareMetalNode.instance_uuid == node.instance_uuid)
            .values(**values)
        )
        await note_nodes(session, [node.id])


async def _finish(conductor: Conductor, node_id: int, instance_uuid: str) -> None:
    await conductor.finish_deploy(node_id, instance_uuid)


async def recover(conductor: Conductor) -> dict[str, int]:
    """Run once at start-up, before the API and the loops: resume or fail what a crash interrupted."""
    p = conductor.p
    host = p.settings.service.host
    counts = {
        "spawns_failed": 0,
        "deletes_resumed": 0,
        "deploys_finished": 0,
        "orphans_released": 0,
        "instances_lost": 0,
    }
    async with p.sessionmaker() as session:
        nodes = (
            (
                await session.execute(
                    select(BareMetalNode).where(
                        BareMetalNode.service_host == host, BareMetalNode.instance_uuid.is_not(None)
                    )
                )
            )
            .scalars()
            .all()
        )
        holders = {n.instance_uuid for n in nodes}
        instances = {
            i.uuid: i
            for i in (await session.execute(select(Instance).where(Instance.uuid.in_(list(holders))))).scalars()
        }
    for node in nodes:
        inst = instances.get(node.instance_uuid or "")
        try:
            if inst is None or inst.vm_state == "deleted":
                await _release_orphan(conductor, node)
                counts["orphans_released"] += 1
            elif node.provision_state == ProvisionState.DEPLOYING:
                await conductor.fail_spawn(node, inst.uuid, "spawn interrupted by a restart of bmd")
                counts["spawns_failed"] += 1
            elif node.provision_state == ProvisionState.DELETING:
                conductor.resume_destroy(node.id, inst.uuid)
                counts["deletes_resumed"] += 1
            elif node.provision_state == ProvisionState.WAIT_CALLBACK and node.deploy_deadline is None:
                conductor.start(node.id, "finish_deploy", _finish(conductor, node.id, inst.uuid))
                counts["deploys_finished"] += 1
        except (InvalidState, OSError) as err:
            log.error("recovery_failed", node=node.id, error=describe(err))
    await fail_timed_out_deploys(conductor)
    # Instances that believe they are placed but whose node does not hold them.
    async with p.sessionmaker.begin() as session:
        held = select(BareMetalNode.instance_uuid).where(BareMetalNode.instance_uuid.is_not(None))
        result = await session.execute(
            update(Instance)
            .where(Instance.vm_state.in_(("building", "active")), Instance.host == host, Instance.uuid.not_in(held))
            .values(vm_state="error", task_state=None, last_error="the node no longer holds this instance")
        )
        counts["instances_lost"] = result.rowcount or 0  # type: ignore[attr-defined]
    if any(counts.values()):
        log.warning("recovered_after_restart", **counts)
    return counts
