"""Bulk writes of ``compute_nodes``: one upsert statement for all changed rows, one delete for gone nodes.

A row's ``updated_at`` is when it was last written (its resources changed), as nova's resource tracker
saves a compute node only when it changed: a pass over an unchanged fleet writes nothing. The service's
heartbeat (``services``) is what says its loops are alive.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import BareMetalNode, ComputeNode, compute_nodes_table, utcnow

_TABLE = compute_nodes_table
_CHUNK = 500  # ids per IN list


_COLUMNS = [c.name for c in _TABLE.columns if c.name != "id"]
assert _COLUMNS[-1] == "updated_at"
_ROW = operator.itemgetter(*_COLUMNS[:-1])  # a tracker's row, in column order (updated_at is added)


@functools.cache
def _upsert_sql(dialect: str) -> str:
    """The upsert as plain SQL: executemany over tuples skips SQLAlchemy's per-row parameter processing,
    which is most of the cost of writing 10,000 rows. Both SQLite and PostgreSQL speak ON CONFLICT."""
    n = len(_COLUMNS)
    marks = ", ".join(f"${i}" for i in range(1, n + 1)) if dialect == "postgresql" else ", ".join("?" * n)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "bm_node_id")
    return (
        f"INSERT INTO {_TABLE.name} ({', '.join(_COLUMNS)}) VALUES ({marks}) "
        f"ON CONFLICT (bm_node_id) DO UPDATE SET {updates}"
    )


async def write_compute_nodes(
    session: AsyncSession, host: str, rows: Sequence[dict[str, Any]], gone: Collection[int] | None = None
) -> None:
    """Upsert ``rows`` (executemany: one statement), then drop the rows of gone nodes: the ``gone`` ids
    (one statement per 500), or when None every row of this host whose node is no longer this host's (one
    statement over the table: what a first pass cleans up after a restart)."""
    now = utcnow()
    if rows:
        dialect = session.get_bind().dialect.name
        # SQLite stores naive UTC text in SQLAlchemy's format; asyncpg takes the aware datetime.
        stamp: Any = now.replace(tzinfo=None).isoformat(" ", "microseconds") if dialect == "sqlite" else now
        conn = await session.connection()
        await conn.exec_driver_sql(_upsert_sql(dialect), [(*_ROW(r), stamp) for r in rows])
    if gone is None:
        mine = select(BareMetalNode.id).where(BareMetalNode.service_host == host).scalar_subquery()
        await session.execute(
            delete(ComputeNode).where(ComputeNode.service_host == host, ComputeNode.bm_node_id.not_in(mine))
        )
        return
    ids = sorted(gone)
    for start in range(0, len(ids), _CHUNK):
        # this host's rows only: a node moved to another service may have its row there already
        chunk = ids[start : start + _CHUNK]
        await session.execute(
            delete(ComputeNode).where(ComputeNode.service_host == host, ComputeNode.bm_node_id.in_(chunk))
        )


async def existing_node_ids(session: AsyncSession, host: str) -> set[int]:
    stmt = select(BareMetalNode.id).where(BareMetalNode.service_host == host)
    return set((await session.execute(stmt)).scalars())
