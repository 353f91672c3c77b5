"""SQL for provisioning: PXE IP allocation, deployment rows, instance state. Each call is one statement or
a short transaction, safe under concurrency (atomic allocation, idempotent release)."""

from __future__ import annotations

import secrets

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import Deployment, PxeIp, utcnow
from bmd.errors import Conflict

ALLOCATE_ATTEMPTS = 5


class NoMorePxeIps(Conflict):
    code = "no_pxe_ip"


async def allocate_pxe_ip(session: AsyncSession, node_id: int) -> PxeIp:
    """The first free PXE IP, taken atomically (``... WHERE bm_node_id IS NULL``); the node's own if it
    already has one (a resumed spawn)."""
    mine = await session.scalar(select(PxeIp).where(PxeIp.bm_node_id == node_id))
    if mine is not None:
        return mine
    for _ in range(ALLOCATE_ATTEMPTS):
        free = select(PxeIp.id).where(PxeIp.bm_node_id.is_(None)).order_by(PxeIp.id).limit(1).scalar_subquery()
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
    session: AsyncSession, node_id: int, instance_uuid: str, image_ref: str, root_mb: int, swap_mb: int
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
