"""Per-node reservations: the hardware lock between services (Ironic's node lock), with owner and expiry.

``bm_nodes.reservation`` names the service acting on the node's hardware now and ``reserved_at`` since
when. Taking it is one conditional UPDATE — free, already ours, or held by a service that is no longer live
(silent past ``service.service_down_time``: the reservation of a dead owner expires with its heartbeat, never
sooner) — so two services can never both hold it whatever the engine. It is released when the action ends;
a service that starts drops the reservations an earlier run of itself left (it holds none yet).

Within one service the conductor's per-node job slot already runs one action at a time; the reservation is
what keeps a second service off the node while ownership moves (the old owner's job may still be running
when the ring gives the node to another service). Taken only with ring ownership (one service alone needs
no lock in the database).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import BareMetalNode, Service, utcnow
from bmd.errors import Conflict

__all__ = ["NodeReserved", "drop_own", "release", "reserve"]


class NodeReserved(Conflict):
    """Another live service holds the node's reservation: 409 naming it."""

    code = "node_reserved"


async def reserve(session: AsyncSession, node_id: int, host: str, down_time: float) -> None:
    """Take node ``node_id``'s reservation for ``host``, or raise NodeReserved naming its live holder."""
    now = utcnow()
    live = select(Service.host).where(Service.last_heartbeat >= now - dt.timedelta(seconds=down_time))
    stmt = (
        update(BareMetalNode)
        .where(
            BareMetalNode.id == node_id,
            or_(
                BareMetalNode.reservation.is_(None),
                BareMetalNode.reservation == host,
                BareMetalNode.reservation.not_in(live.scalar_subquery()),
            ),
        )
        .values(reservation=host, reserved_at=now)
        .execution_options(synchronize_session=False)
    )
    if (await session.execute(stmt)).rowcount == 1:  # type: ignore[attr-defined]
        return
    row = (
        await session.execute(
            select(BareMetalNode.reservation, BareMetalNode.reserved_at).where(BareMetalNode.id == node_id)
        )
    ).one_or_none()
    if row is None:
        return  # the node is gone: the action itself says so
    holder, since = row
    raise NodeReserved(f"node {node_id} is reserved by service {holder} (since {since}): retry once it is done")


async def release(session: AsyncSession, node_id: int, host: str) -> None:
    stmt = (
        update(BareMetalNode)
        .where(BareMetalNode.id == node_id, BareMetalNode.reservation == host)
        .values(reservation=None, reserved_at=None)
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)


async def drop_own(session: AsyncSession, host: str) -> int:
    """At start: the reservations an earlier run of this service left (it was killed mid-action)."""
    stmt = (
        update(BareMetalNode)
        .where(BareMetalNode.reservation == host)
        .values(reservation=None, reserved_at=None)
        .execution_options(synchronize_session=False)
    )
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]
