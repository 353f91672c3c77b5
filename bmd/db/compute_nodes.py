"""Bulk writes of ``compute_nodes``: one upsert statement for all changed rows, one delete for gone nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import BareMetalNode, ComputeNode, compute_nodes_table, utcnow

_TABLE = compute_nodes_table


def _upsert(dialect: str) -> Any:
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_TABLE)
    cols = [c.name for c in _TABLE.columns if c.name not in ("id", "bm_node_id")]
    return ins.on_conflict_do_update(index_elements=[_TABLE.c.bm_node_id], set_={c: ins.excluded[c] for c in cols})


async def write_compute_nodes(session: AsyncSession, host: str, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert ``rows`` (executemany: one statement), refresh this host's ``updated_at``, drop gone nodes."""
    now = utcnow()
    if rows:
        dialect = session.get_bind().dialect.name
        await session.execute(_upsert(dialect), [{**r, "updated_at": now} for r in rows])
    await session.execute(update(ComputeNode).where(ComputeNode.service_host == host).values(updated_at=now))
    mine = select(BareMetalNode.id).where(BareMetalNode.service_host == host).scalar_subquery()
    await session.execute(
        delete(ComputeNode).where(ComputeNode.service_host == host, ComputeNode.bm_node_id.not_in(mine))
    )


async def existing_node_ids(session: AsyncSession, host: str) -> set[int]:
    stmt = select(BareMetalNode.id).where(BareMetalNode.service_host == host)
    return set((await session.execute(stmt)).scalars())
