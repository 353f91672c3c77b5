"""``node_ownership``: ``bm_nodes.service_host`` follows the hash ring over the live services.

Registered only with ``service.ownership = "ring"`` (the default, ``"static"``, leaves ``service_host`` as
enrolled). Each pass reads which services are live (``bmd.db.services``, the scheduler's own definition),
builds one ring per node group (``bm_nodes.conductor_group``, Ironic's conductor_group) over the live
services serving it (``service.groups``, recorded in ``services.groups``) and rewrites ``service_host``
of the nodes whose owner changed, so a service silent for ``service.service_down_time`` loses its nodes
to the survivors within one pass, and takes about 1/N of them back once it heartbeats again. Every
service runs the same loop; they compute the same owners from the same rows, and a row already moved is
not written twice.

Per pass, whatever the number of nodes: one read of ``services``, one of ``bm_nodes`` (id, uuid,
service_host), one executemany UPDATE of the moved rows (each bumps its ``version``), and the change views
published on the ``nodes`` topic after commit (``bmd.node_events.note_nodes``, one read per 500 moved).
"""

from __future__ import annotations

import collections

import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd.db.models import bm_nodes_table
from bmd.db.services import live_groups
from bmd.node_events import note_nodes
from bmd.ownership import HashRing, assign_owners

log = structlog.get_logger(__name__)

_T = bm_nodes_table
_MOVE = (
    update(_T)
    .where(_T.c.id == bindparam("move_id"), _T.c.service_host != bindparam("move_host"))
    .values(service_host=bindparam("move_host"))
)


class NodeOwnership:
    name = "node_ownership"

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], down_time: float, interval: float) -> None:
        self.sessionmaker = sessionmaker
        self.down_time = down_time
        self.interval = interval

    async def run_once(self) -> None:
        async with self.sessionmaker.begin() as session:
            moves = await rebalance(session, self.down_time)
        if moves:
            log.info("nodes_rehomed", moved=len(moves), to=dict(collections.Counter(moves.values())))


async def rebalance(session: AsyncSession, down_time: float) -> dict[int, str]:
    """Move every node to its owner on the ring of the live services serving its group, in ``session``'s
    transaction; the moves made (node id -> new owner). A group no live service serves (not even this
    one): its nodes do not move — a ring over nobody has no owner to give, and they keep the last one."""
    served = await live_groups(session, down_time)
    if not served:
        log.warning("ownership_no_live_service")
        return {}
    by_group: dict[str, dict[int, tuple[str, str]]] = collections.defaultdict(dict)
    for row in await session.execute(select(_T.c.id, _T.c.uuid, _T.c.service_host, _T.c.conductor_group)):
        by_group[row.conductor_group][row.id] = (row.uuid, row.service_host)
    moves: dict[int, str] = {}
    for group, nodes in by_group.items():
        hosts = served.get(group)
        if hosts is None:
            log.warning("ownership_group_unserved", group=group, nodes=len(nodes))
            continue
        moves.update(assign_owners(HashRing(hosts), nodes))
    if moves:
        await session.execute(_MOVE, [{"move_id": i, "move_host": host} for i, host in moves.items()])
        await note_nodes(session, moves)
    return moves
