"""The conductor's hardware lock across services: every node job runs holding the node's reservation
(``bmd.db.reservations``) when several services share the database (ring ownership)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from bmd.db.engine import Sessionmaker
from bmd.db.reservations import NodeReserved, release, reserve

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Reservations:
    def __init__(self, sessionmaker: Sessionmaker, host: str, down_time: float) -> None:
        self.sessionmaker = sessionmaker
        self.host = host
        self.down_time = down_time

    async def hold(self, node_id: int, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` holding the node's reservation; NodeReserved (409) without running it when another
        live service holds it. Released however ``coro`` ends, cancellation included."""
        try:
            async with self.sessionmaker.begin() as session:
                await reserve(session, node_id, self.host, self.down_time)
        except BaseException as err:
            coro.close()
            if isinstance(err, NodeReserved):
                log.warning("node_reserved_elsewhere", node=node_id, error=str(err))
            raise
        try:
            return await coro
        finally:
            # shielded: a cancelled job still gives the lock back (else it waits for our down time)
            await asyncio.shield(self._release(node_id))

    async def _release(self, node_id: int) -> None:
        async with self.sessionmaker.begin() as session:
            await release(session, node_id, self.host)
