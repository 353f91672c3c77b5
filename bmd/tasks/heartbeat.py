"""``service_heartbeat``: this service's row in ``services`` (host, last heartbeat) stays fresh."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import bmd
from bmd.db.models import Service, utcnow


async def register_service(session: AsyncSession, host: str) -> None:
    now = utcnow()
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Service)
    stmt = ins.values(host=host, binary="bmd", version=bmd.__version__, started_at=now, last_heartbeat=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Service.host],
        set_={"version": bmd.__version__, "started_at": now, "last_heartbeat": now},
    )
    await session.execute(stmt)


class ServiceHeartbeat:
    name = "service_heartbeat"

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], host: str, interval: float) -> None:
        self.sessionmaker = sessionmaker
        self.host = host
        self.interval = interval

    async def run_once(self) -> None:
        async with self.sessionmaker.begin() as session:
            result = await session.execute(
                update(Service).where(Service.host == self.host).values(last_heartbeat=utcnow())
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                await register_service(session, self.host)
