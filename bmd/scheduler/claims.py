"""Atomic claims in SQL, written in groups (group commit), on SQLite and PostgreSQL alike.

A claim is ``UPDATE bm_nodes SET instance_uuid = <its instance> ... WHERE id = <its node> AND <free>``
(``bmd.db.nodes.FREE``: no instance, available, not in maintenance) for every node of a request, plus its
instance rows: all or nothing per request. A transaction commit is what costs (SQLite's single write lock
and fsync, a PostgreSQL round trip and WAL flush), so concurrent requests are written as a group: whoever
finds the writer free takes every request waiting so far and writes them in one transaction.

In that transaction the group's nodes are first locked and read: ``SELECT id ... WHERE id IN (...) AND
<free> FOR NO KEY UPDATE``, in id order (two processes lock overlapping groups in the same order, so they
never deadlock). On PostgreSQL the lock waits for another writer of a row and then re-checks ``<free>`` on
the row it committed; on SQLite the write transaction already holds the database's write lock (BEGIN
IMMEDIATE), so the read is exact. A request whose nodes are all free and not taken by an earlier request of
the group wins; one that is not has lost its race on the first such node and writes nothing. The winners'
claims are one statement (``bmd.states.claim``), their instance rows another; the lost requests get their
node's row as it is now, and the other requests of the group commit together (no rollback, no rewrite one
by one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.engine import Sessionmaker
from bmd.db.models import Instance, bm_nodes_table, utcnow
from bmd.db.nodes import FREE
from bmd.node_events import NodeView, note_views, read_views
from bmd.states import claim, record_claims

_T = bm_nodes_table
_CHUNK = 500  # ids per locking statement (asyncpg takes at most 32,767 parameters)


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


async def lock_free(session: AsyncSession, node_ids: Sequence[int]) -> set[int]:
    """Which of the nodes are free, each locked for this transaction (in id order) until it ends."""
    ids = sorted(set(node_ids))
    free: set[int] = set()
    for start in range(0, len(ids), _CHUNK):
        stmt = (
            select(_T.c.id)
            .where(_T.c.id.in_(ids[start : start + _CHUNK]), FREE)
            .order_by(_T.c.id)
            .with_for_update(key_share=True)  # FOR NO KEY UPDATE: what the UPDATE takes; ignored by SQLite
        )
        free.update((await session.execute(stmt)).scalars())
    return free


def _share(requests: Sequence[ClaimRequest], free: set[int]) -> dict[int, int]:
    """Each losing request (by index) and the node it lost on: the first of its nodes not free, or already
    given to an earlier request of the group."""
    lost: dict[int, int] = {}
    given: set[int] = set()
    for i, request in enumerate(requests):
        mine: set[int] = set()
        for node_id in request.node_ids:
            if node_id not in free or node_id in given or node_id in mine:
                lost[i] = node_id
                break
            mine.add(node_id)
        else:
            given |= mine
    return lost


async def write_group(session: AsyncSession, requests: Sequence[ClaimRequest]) -> list[ClaimOutcome]:
    """Claim and insert for each request that can have all its nodes; one outcome per request, in order.
    The claimed rows' views are noted, so they are published to the other writers' readers on commit."""
    lost = _share(requests, await lock_free(session, [n for r in requests for n in r.node_ids]))
    winners = [r for i, r in enumerate(requests) if i not in lost]
    claims = [(n, u) for r in winners for n, u in zip(r.node_ids, r.instance_uuids, strict=True)]
    if claims:
        await claim(session, claims, utcnow())
        rows = [row for r in winners for row in r.instances]
        if rows:
            await session.execute(insert(Instance), rows)
        await record_claims(session, claims)
    views = {v.node_id: v for v in await read_views(session, [n for n, _ in claims] + list(lost.values()))}
    # The rows were locked and free, so every claim wrote its row; checked, not assumed.
    unwritten = [n for n, u in claims if n not in views or views[n].instance_uuid != u]
    if unwritten:
        raise RuntimeError(f"claims of locked free nodes wrote nothing: {unwritten}")
    note_views(session, [views[n] for n, _ in claims])
    return [
        ClaimOutcome(lost[i], [views[lost[i]]] if lost[i] in views else [])
        if i in lost
        else ClaimOutcome(None, [views[n] for n in r.node_ids])
        for i, r in enumerate(requests)
    ]


class ClaimWriter:
    def __init__(self, sessionmaker: Sessionmaker) -> None:
        self.sessionmaker = sessionmaker
        self._pending: list[ClaimRequest] = []
        self._writer = asyncio.Lock()
        self._groups: set[asyncio.Task[None]] = set()
        self.groups_written = 0

    async def claim(
        self, node_ids: list[int], instance_uuids: list[str], instances: list[dict[str, Any]]
    ) -> ClaimOutcome:
        """Claim the nodes and insert the instances, all or nothing."""
        request = ClaimRequest(node_ids, instance_uuids, instances, asyncio.get_running_loop().create_future())
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

    async def _write_group(self, group: list[ClaimRequest]) -> None:
        try:
            async with self.sessionmaker.begin() as session:
                outcomes = await write_group(session, group)
            self.groups_written += 1
            for request, outcome in zip(group, outcomes, strict=True):
                request.result.set_result(outcome)
        except BaseException as err:
            for request in group:
                if not request.result.done():
                    request.result.set_exception(
                        err if isinstance(err, Exception) else RuntimeError("claim interrupted")
                    )
            if not isinstance(err, Exception):
                raise
