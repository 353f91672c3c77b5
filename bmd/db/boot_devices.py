"""The last known boot device of a node (``bm_nodes.boot_device``, ``boot_device_persistent``,
``boot_device_checked_at``): written by every live read and every set — the API's and the provisioning's —
and served with its age to callers who may not make bmd talk to the BMC."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import BareMetalNode


async def record_boot_device(
    session: AsyncSession, node_id: int, device: str | None, persistent: bool, at: dt.datetime
) -> bool:
    """Store what the BMC said (or was told) at ``at``, unless something newer is stored already (a read
    that started before a set finished must not overwrite it). True when stored."""
    result = await session.execute(
        update(BareMetalNode)
        .where(
            BareMetalNode.id == node_id,
            or_(BareMetalNode.boot_device_checked_at.is_(None), BareMetalNode.boot_device_checked_at <= at),
        )
        .values(boot_device=device, boot_device_persistent=persistent, boot_device_checked_at=at)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
