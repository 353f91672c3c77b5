"""Deploy timeouts and restart recovery: no node is left in a transient state, claimed without a live
instance, or holding an instance that does not exist."""

from __future__ import annotations

import contextlib
from collections.abc import Collection

import structlog
from sqlalchemy import ColumnElement, select, true, update

from bmd import states
from bmd.db.models import BareMetalNode, Deployment, Instance, utcnow
from bmd.errors import Conflict, InvalidState
from bmd.provision import records
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
        failed = await states.fail_many(session, [(r.id, r.instance_uuid) for r in rows], reason, where=late)
        if not failed:
            return 0
        await session.execute(  # the agent tokens of those boots die with them
            update(Deployment).where(Deployment.bm_node_id.in_(failed)).values(agent_token_hash=None)
        )
    holders = {r.id: r.instance_uuid for r in rows}
    for node_id in failed:
        log.error("deploy_timed_out", node=node_id, instance=holders[node_id])
        conductor.deploys.ended(node_id, "timed_out")
    return len(failed)


async def _fail_timed_out_boots(conductor: Conductor, mode: str) -> int:
    """Every clean (``mode`` "clean") or inspection ("inspect") of this service whose agent deadline
    passed: clean failed (and maintenance) or inspect failed, then the node is powered off and its boot
    files go (as the node's job)."""
    p = conductor.p
    state, fail, timeout = {
        "clean": (ProvisionState.CLEANING, states.fail_clean, p.settings.deploy.clean_timeout),
        "inspect": (ProvisionState.INSPECTING, states.fail_inspect, p.settings.inspection.timeout),
    }[mode]
    late = (
        (BareMetalNode.provision_state == state)
        & (BareMetalNode.deploy_deadline < utcnow())
        & (BareMetalNode.service_host == p.settings.service.host)
    )
    reason = f"{mode} timed out: no report from the {mode} agent within {timeout:g} s"
    async with p.sessionmaker() as session:
        ids = list((await session.execute(select(BareMetalNode.id).where(late))).scalars())
    failed = 0
    for node_id in ids:
        async with p.sessionmaker.begin() as session:
            if not await fail(session, node_id, reason, where=late):
                continue
            await records.kill_agent_token(session, node_id)
            node = await session.get(BareMetalNode, node_id)
        failed += 1
        log.error(f"{mode}_timed_out", node=node_id)
        if node is not None:
            with contextlib.suppress(Conflict):  # a job still runs on it: the next delete or retry tidies
                tidy = conductor.tidy_after_ramdisk(node, keep_record=True)
                conductor.start(node_id, f"{mode}_tidy", tidy, queue=True)
    return failed


async def fail_timed_out_cleans(conductor: Conductor) -> int:
    return await _fail_timed_out_boots(conductor, "clean")


async def fail_timed_out_inspections(conductor: Conductor) -> int:
    return await _fail_timed_out_boots(conductor, "inspect")


class DeployTimeouts:
    """Periodic loop: fail the deploys whose agent never called back."""

    name = "check_deploy_timeouts"

    def __init__(self, conductor: Conductor, interval: float) -> None:
        self.conductor = conductor
        self.interval = interval

    async def run_once(self) -> None:
        await fail_timed_out_deploys(self.conductor)
        await fail_timed_out_cleans(self.conductor)
        await fail_timed_out_inspections(self.conductor)


async def _release_orphan(conductor: Conductor, node: BareMetalNode) -> None:
    """The node holds an instance that is gone: give it back, clean."""
    failures = await conductor.p.teardown(node)
    failure = "orphan cleanup failed: " + "; ".join(failures) if failures else None
    async with conductor.p.sessionmaker.begin() as session:
        await states.release(session, node.id, node.instance_uuid or "", failure=failure)


async def _resume_boots(conductor: Conductor, state: ProvisionState, node_ids: Collection[int] | None = None) -> int:
    """Nodes found ``cleaning`` or ``inspecting`` (they hold no instance): reported already, the finish runs
    again; not yet booted (bmd stopped mid-way through the boot), the boot runs again; booted and waiting,
    the agent may still report (the timeout check fails it otherwise)."""
    p = conductor.p
    async with p.sessionmaker() as session:
        rows = (
            await session.execute(
                select(BareMetalNode.id, BareMetalNode.deploy_deadline, Deployment.booted_at, Deployment.instance_uuid)
                .outerjoin(Deployment, Deployment.bm_node_id == BareMetalNode.id)
                .where(BareMetalNode.service_host == p.settings.service.host, BareMetalNode.provision_state == state)
                .where(_among(node_ids))
            )
        ).all()
    resumed = 0
    for row in rows:
        if conductor.running(row.id) is not None:
            continue
        if row.deploy_deadline is not None and row.booted_at is not None:
            continue
        booted = row.deploy_deadline is None
        if state == ProvisionState.CLEANING:
            conductor.resume_clean(row.id, row.instance_uuid, booted=booted)
        else:
            conductor.resume_inspect(row.id, booted=booted)
        resumed += 1
    return resumed


def _among(node_ids: Collection[int] | None) -> ColumnElement[bool]:
    return true() if node_ids is None else BareMetalNode.id.in_(list(node_ids))


UNBOOTABLE = (
    "deploy interrupted: the service that prepared the node's boot stopped before its agent looked up "
    "(the boot files and image were on that service)"
)


async def recover(conductor: Conductor, node_ids: Collection[int] | None = None) -> dict[str, int]:
    """Resume or fail what a crash interrupted: at start-up (``node_ids`` None: every node of this service,
    before the API and the loops), or for the nodes this service just took over from a dead one
    (``bmd.tasks.adoption``). A node with a job running in this process is left to it."""
    p = conductor.p
    host = p.settings.service.host
    counts = {
        "spawns_failed": 0,
        "deploys_failed": 0,
        "deletes_resumed": 0,
        "deploys_finished": 0,
        "orphans_released": 0,
        "instances_lost": 0,
        "cleans_resumed": 0,
        "inspections_resumed": 0,
    }
    async with p.sessionmaker() as session:
        nodes = (
            (
                await session.execute(
                    select(BareMetalNode).where(
                        BareMetalNode.service_host == host,
                        BareMetalNode.instance_uuid.is_not(None),
                        _among(node_ids),
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
        looked_up = set(
            (
                await session.execute(
                    select(Deployment.bm_node_id)
                    .join(BareMetalNode, BareMetalNode.id == Deployment.bm_node_id)
                    .where(BareMetalNode.service_host == host, _among(node_ids))
                    .where(Deployment.agent_token_issued_at.is_not(None))
                )
            ).scalars()
        )
    for node in nodes:
        if conductor.running(node.id) is not None:
            continue
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
            elif node.provision_state == ProvisionState.WAIT_CALLBACK:
                if node_ids is not None and node.deploy_deadline is not None and node.id not in looked_up:
                    # Taken over before its agent looked up: the boot files and image it would fetch are on
                    # the service that stopped. Its agent that did look up goes on: it calls back here.
                    async with p.sessionmaker.begin() as session:  # to error, as a deploy its agent failed
                        await conductor.record_deploy_failure(session, node.id, inst.uuid, UNBOOTABLE)
                    await conductor.discard_boot_files(node)
                    counts["deploys_failed"] += 1
                    continue
                conductor.record_console(node, 0, inst.uuid)  # its deploy goes on: so does its console log
                if node.deploy_deadline is None:
                    conductor.resume_finish(node.id, inst.uuid)
                    counts["deploys_finished"] += 1
        except (InvalidState, OSError) as err:
            log.error("recovery_failed", node=node.id, error=describe(err))
    await fail_timed_out_deploys(conductor)
    counts["cleans_resumed"] = await _resume_boots(conductor, ProvisionState.CLEANING, node_ids)
    await fail_timed_out_cleans(conductor)
    counts["inspections_resumed"] = await _resume_boots(conductor, ProvisionState.INSPECTING, node_ids)
    await fail_timed_out_inspections(conductor)
    # Instances that believe they are placed but whose node does not hold them.
    async with p.sessionmaker.begin() as session:
        counts["instances_lost"] = await states.lose_instances(session, host, "the node no longer holds this instance")
    if any(counts.values()):
        log.warning("recovered_after_restart", **counts)
    return counts
