"""SQL for provisioning: PXE IP allocation, deployment rows, instance state. Each call is one statement or
a short transaction, safe under concurrency (atomic allocation, idempotent release)."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import BareMetalNode, Deployment, PxeIp, utcnow
from bmd.drivers.deploy.refs import scrub_urls
from bmd.errors import Conflict
from bmd.node_events import note_nodes

ALLOCATE_ATTEMPTS = 5
MAX_HEARTBEATS = 50  # the agent's heartbeats kept in a node's deploy_steps (the oldest go first)
DETAIL_MAX = 1024


class NoMorePxeIps(Conflict):
    code = "no_pxe_ip"


async def allocate_pxe_ip(session: AsyncSession, node_id: int) -> PxeIp:
    """The first free PXE IP, taken atomically (``... WHERE bm_node_id IS NULL``); the node's own if it
    already has one (a resumed spawn)."""
    mine = await session.scalar(select(PxeIp).where(PxeIp.bm_node_id == node_id))
    if mine is not None:
        return mine
    for _ in range(ALLOCATE_ATTEMPTS):
        # SKIP LOCKED (PostgreSQL; SQLite has one writer and no row locks): concurrent allocations — other
        # services' among them — each take a different free row instead of all queueing on the first.
        free = (
            select(PxeIp.id)
            .where(PxeIp.bm_node_id.is_(None))
            .order_by(PxeIp.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        result = await session.execute(
            update(PxeIp).where(PxeIp.id == free, PxeIp.bm_node_id.is_(None)).values(bm_node_id=node_id)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            taken = await session.scalar(select(PxeIp).where(PxeIp.bm_node_id == node_id))
            assert taken is not None
            return taken
        if await session.scalar(select(PxeIp.id).where(PxeIp.bm_node_id.is_(None)).limit(1)) is None:
            break  # none left (a concurrent allocation may have taken the one we saw: then we retry)
    raise NoMorePxeIps("no more PXE IPs: every address in bm_pxe_ips is allocated (add some with `bmd pxe-ip add`)")


async def release_pxe_ip(session: AsyncSession, node_id: int) -> None:
    await session.execute(update(PxeIp).where(PxeIp.bm_node_id == node_id).values(bm_node_id=None))


def new_deployment_key() -> str:
    """The seed's ``bm_deployments.key``: an internal random value now, never served to the node (the
    agent authenticates with its token, see :mod:`bmd.provision.agent`)."""
    return secrets.token_hex(16)  # 32 characters, as the seed's deployments


async def create_deployment(
    session: AsyncSession, node_id: int, instance_uuid: str | None, image_ref: str, root_mb: int, swap_mb: int
) -> Deployment:
    """One deployment per node: a stale one (from a crashed spawn) is replaced."""
    await session.execute(delete(Deployment).where(Deployment.bm_node_id == node_id))
    dep = Deployment(
        key=new_deployment_key(),
        bm_node_id=node_id,
        instance_uuid=instance_uuid,
        image_ref=image_ref,
        image_path=None,
        pxe_config_path=None,
        root_mb=root_mb,
        swap_mb=swap_mb,
    )
    session.add(dep)
    await session.flush()
    return dep


async def mark_booted(session: AsyncSession, node_id: int) -> None:
    """bmd powered the node on to boot this deployment's ramdisk: from now on its agent may look up."""
    await session.execute(update(Deployment).where(Deployment.bm_node_id == node_id).values(booted_at=utcnow()))


async def kill_agent_token(session: AsyncSession, node_id: int) -> None:
    """The boot is over: its agent token is refused from now on (issued_at/address stay, as the record)."""
    await session.execute(update(Deployment).where(Deployment.bm_node_id == node_id).values(agent_token_hash=None))


async def delete_deployment(session: AsyncSession, node_id: int) -> None:
    await session.execute(delete(Deployment).where(Deployment.bm_node_id == node_id))


# -- deploy steps: bm_nodes.deploy_steps, the last deploy's steps with timings (not state: any writer) ------


def step_entry(
    step: str, started_at: dt.datetime, seconds: float | None = None, ok: bool | None = None, detail: str = ""
) -> dict[str, Any]:
    """One entry of ``deploy_steps``; ``seconds``/``ok`` are null while the step runs (the wait for the agent).
    ``detail`` is shown to anonymous readers, so any URL in it is redacted (as in last_error)."""
    return {
        "step": step,
        "started_at": started_at.isoformat(),
        "seconds": None if seconds is None else round(seconds, 3),
        "ok": ok,
        "detail": scrub_urls(detail)[:DETAIL_MAX],
    }


async def note_step(
    session: AsyncSession,
    node_id: int,
    entry: dict[str, Any] | None,
    *,
    first: bool = False,
    close: str | None = None,
    ok: bool | None = None,
) -> None:
    """In the caller's transaction: add ``entry`` to the node's deploy steps (``first``: a new deploy, the list
    is replaced), after closing the last open step named ``close`` (its seconds from its start, ``ok``).
    One read and one write of the row."""
    steps: list[dict[str, Any]] = []
    if not first:
        stored = await session.scalar(
            select(BareMetalNode.deploy_steps).where(BareMetalNode.id == node_id).with_for_update()
        )
        steps = [dict(s) for s in stored or [] if isinstance(s, dict)]
    if close is not None:
        for step in reversed(steps):
            if step.get("step") == close and step.get("seconds") is None:
                started = dt.datetime.fromisoformat(str(step["started_at"]))
                step["seconds"], step["ok"] = round((utcnow() - started).total_seconds(), 3), ok
                break
    if entry is not None:
        steps.append(entry)
        if entry["step"] == "heartbeat":
            beats = [i for i, s in enumerate(steps) if s.get("step") == "heartbeat"]
            for i in reversed(beats[: max(0, len(beats) - MAX_HEARTBEATS)]):
                del steps[i]
    await session.execute(update(BareMetalNode).where(BareMetalNode.id == node_id).values(deploy_steps=steps))
    await note_nodes(session, [node_id])
