"""``service_heartbeat``: this service's row in ``services`` (host, last heartbeat) stays fresh."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import bmd
from bmd.db.models import Service, utcnow


async def register_service(
    session: AsyncSession, host: str, groups: Sequence[str] = ("",), api_url: str | None = None
) -> None:
    """This service's row: started now, serving ``groups``, its API at ``api_url`` (requests for its nodes
    that reach another service are sent there)."""
    now = utcnow()
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Service)
    fields = {"version": bmd.__version__, "started_at": now, "last_heartbeat": now, "groups": list(groups)}
    stmt = ins.values(host=host, binary="bmd", api_url=api_url, **fields)
    stmt = stmt.on_conflict_do_update(index_elements=[Service.host], set_={**fields, "api_url": api_url})
    await session.execute(stmt)


class ServiceHeartbeat:
    name = "service_heartbeat"

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        host: str,
        interval: float,
        groups: Sequence[str] = ("",),
        api_url: str | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.host = host
        self.interval = interval
        self.groups = groups
        self.api_url = api_url

    async def run_once(self) -> None:
        async with self.sessionmaker.begin() as session:
            result = await session.execute(
                update(Service).where(Service.host == self.host).values(last_heartbeat=utcnow())
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                await register_service(session, self.host, self.groups, self.api_url)
