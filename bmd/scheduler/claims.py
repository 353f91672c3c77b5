"""Atomic claims in SQL, written in groups.

A claim is ``UPDATE bm_nodes SET instance_uuid = :uuid ... WHERE id = :id AND <free>`` (``bmd.db.nodes.FREE``:
no instance, available, not in maintenance) for every node of a request, plus its instance rows, all
in one transaction: all or nothing. On SQLite every write transaction holds the database's single write
lock, so concurrent requests are written as a group (group commit): whoever finds the writer free takes
every request waiting so far and writes them in one transaction with two executemany statements. If any
node of the group was taken meanwhile (another process), the group is rolled back and its requests are
written one by one, each all or nothing. PostgreSQL writes each request in its own transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.engine import Sessionmaker
from bmd.db.models import Instance, bm_nodes_table, utcnow
from bmd.node_events import NodeView, note_views, read_views
from bmd.states import claim_statement, record_claims

_T = bm_nodes_table


@dataclass(frozen=True)
class ClaimOutcome:
    """``lost``: the node another writer took first (nothing was written), or None: all claimed.
    ``views``: the nodes' rows as the claim left them (read in its transaction), or the lost node's row
    as it is now."""

    lost: int | None
    views: list[NodeView] = field(default_factory=list)


@dataclass
class ClaimRequest:
    node_ids: list[int]
    instance_uuids: list[str]
    instances: list[dict[str, Any]]  # the instance rows to insert
    result: asyncio.Future[ClaimOutcome]


class _LostRace(Exception):
    def __init__(self, node_id: int | None) -> None:
        self.node_id = node_id


async def _write(session: AsyncSession, requests: Sequence[ClaimRequest]) -> dict[int, NodeView]:
    """Claim and insert; the claimed rows' views, published to the other writers' readers on commit."""
    now = utcnow()
    params: list[dict[str, Any]] = [
        {"b_id": node_id, "b_uuid": inst, "b_now": now}
        for r in requests
        for node_id, inst in zip(r.node_ids, r.instance_uuids, strict=True)
    ]
    stmt = claim_statement()
    if len(requests) == 1 or session.get_bind().dialect.name != "sqlite":
        for p in params:  # per-row rowcount tells exactly which node was lost
            if (await session.execute(stmt, p)).rowcount != 1:  # type: ignore[attr-defined]
                raise _LostRace(int(p["b_id"]))
    else:
        done = (await session.execute(stmt, params)).rowcount  # type: ignore[attr-defined]
        if done != len(params):
            raise _LostRace(None)
    await session.execute(insert(Instance), [row for r in requests for row in r.instances])
    await record_claims(session, [(p["b_id"], p["b_uuid"]) for p in params])
    views = await read_views(session, [node_id for r in requests for node_id in r.node_ids])
    note_views(session, views)
    return {view.node_id: view for view in views}


def _outcome(request: ClaimRequest, views: dict[int, NodeView]) -> ClaimOutcome:
    return ClaimOutcome(None, [views[node_id] for node_id in request.node_ids if node_id in views])


class ClaimWriter:
    def __init__(self, sessionmaker: Sessionmaker) -> None:
        self.sessionmaker = sessionmaker
        self.grouped = sessionmaker.kw.get("bind") is not None and sessionmaker.kw["bind"].dialect.name == "sqlite"
        self._pending: list[ClaimRequest] = []
        self._writer = asyncio.Lock()
        self._groups: set[asyncio.Task[None]] = set()
        self.groups_written = 0

    async def claim(
        self, node_ids: list[int], instance_uuids: list[str], instances: list[dict[str, Any]]
    ) -> ClaimOutcome:
        """Claim the nodes and insert the instances, all or nothing."""
        request = ClaimRequest(node_ids, instance_uuids, instances, asyncio.get_running_loop().create_future())
        if not self.grouped:
            return await self._one(request)
        self._pending.append(request)
        async with self._writer:
            if not request.result.done():
                group, self._pending = self._pending, []
                # Shielded: the group's other requests get their answers even if this caller is cancelled.
                task = asyncio.create_task(self._write_group(group))
                self._groups.add(task)
                task.add_done_callback(self._groups.discard)
                await asyncio.shield(task)
        return await request.result

    async def _one(self, request: ClaimRequest) -> ClaimOutcome:
        try:
            async with self.sessionmaker.begin() as session:
                views = await _write(session, [request])
        except _LostRace as lost:
            if lost.node_id is None:  # not reached: one request's statements are checked row by row
                raise RuntimeError("a lost claim did not name its node") from lost
            async with self.sessionmaker() as session:
                return ClaimOutcome(lost.node_id, await read_views(session, [lost.node_id]))
        return _outcome(request, views)

    async def _write_group(self, group: list[ClaimRequest]) -> None:
        try:
            try:
                async with self.sessionmaker.begin() as session:
                    views = await _write(session, group)
            except _LostRace:
                for request in group:  # someone else took a node: each request on its own
                    request.result.set_result(await self._one(request))
            else:
                self.groups_written += 1
                for request in group:
                    request.result.set_result(_outcome(request, views))
        except BaseException as err:
            for request in group:
                if not request.result.done():
                    request.result.set_exception(
                        err if isinstance(err, Exception) else RuntimeError("claim interrupted")
                    )
            if not isinstance(err, Exception):
                raise
