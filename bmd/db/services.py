"""Which services are live: the one definition the scheduler and node ownership share.

A service is live while its ``services.last_heartbeat`` (``bmd.tasks.heartbeat``) is at most
``service.service_down_time`` seconds old; silent longer, it is down — the scheduler does not place on its
nodes, and with ``service.ownership = "ring"`` its nodes move to the live services (``bmd.ownership``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import Service, utcnow


def is_live(last_heartbeat: dt.datetime, now: dt.datetime, down_time: float) -> bool:
    """True while a heartbeat at ``last_heartbeat`` is no older than ``down_time`` seconds at ``now``."""
    return now - last_heartbeat <= dt.timedelta(seconds=down_time)


async def live_groups(session: AsyncSession, down_time: float, now: dt.datetime | None = None) -> dict[str, list[str]]:
    """The live services' groups: group -> the live hosts serving it, sorted (one read)."""
    now = now or utcnow()
    served: dict[str, list[str]] = {}
    for host, heartbeat, groups in await session.execute(select(Service.host, Service.last_heartbeat, Service.groups)):
        if is_live(heartbeat, now, down_time):
            for group in groups or [""]:
                served.setdefault(group, []).append(host)
    return {group: sorted(hosts) for group, hosts in served.items()}


async def service_liveness(session: AsyncSession, down_time: float, now: dt.datetime | None = None) -> dict[str, bool]:
    """Every service in ``services``: host -> live (one read)."""
    now = now or utcnow()
    rows = await session.execute(select(Service.host, Service.last_heartbeat))
    return {host: is_live(heartbeat, now, down_time) for host, heartbeat in rows}
