"""Each node's history: what happened to it, kept in ``bm_node_events``, newest ``KEEP`` entries per node.

Not to be confused with ``bmd.node_events``, the in-process feed of node views the scheduler reads: this is
the operator's record (``GET /v1/nodes/{node}/events``, ``bmd node history NODE``), written by the same
transactions that change the node, so an entry exists exactly when its change was committed:

- ``provision``: every transition of the state machine (``bmd.states``), ``event`` the machine's event,
  ``from_state``/``to_state`` the provision states, ``message`` the reason a failure gave;
- ``maintenance``: set or lifted (``event`` ``set``/``unset``), by whom (``actor``: ``operator``, ``bmd``,
  ``power_sync``, ``inspection``) and why;
- ``power``: a power state seen by ``sync_power_states`` that differs from the one kept (``changed``), a
  BMC that stops answering (``failed``, the error) or answers again (``recovered``), an operator's power
  action through the API (``event`` its target: ``power on``, ``power off``, ``reboot``);
- ``error``: a ``last_error`` written outside a transition (a loop's step failing or recovering, an
  inspection report refused).

Bounded: each write trims the nodes it touched to their newest ``KEEP`` entries in the same transaction (one
DELETE per node through the ``(bm_node_id, id)`` index, an executemany for many nodes), so no node ever has
more and no periodic pass has to scan 100,000 nodes' histories. Deleting a node deletes its history
(``ON DELETE CASCADE``): an id is never reused, and who deleted it is in the audit log.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import NodeEvent, bm_nodes_table, node_events_table, utcnow

__all__ = ["KEEP", "Entry", "Kind", "event_to_dict", "list_events", "maintenance", "record", "trim"]

KEEP = 200
"""Entries kept per node: about a year of a busy node's deploys and deletes, ~40 kB a node."""

MESSAGE_MAX = 2000  # a reason longer than this is cut: the whole text stays in the log line that carried it

_T = node_events_table


class Kind(enum.StrEnum):
    PROVISION = "provision"
    MAINTENANCE = "maintenance"
    POWER = "power"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing that happened to node ``node_id`` (see the module's docstring for the kinds)."""

    node_id: int
    kind: Kind
    event: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    message: str | None = None
    instance_uuid: str | None = None
    actor: str | None = None


def maintenance(node_id: int, on: bool, reason: str | None, actor: str | None) -> Entry:
    """Maintenance set (``on``) or lifted on the node, by ``actor``, with its reason."""
    return Entry(
        node_id,
        Kind.MAINTENANCE,
        "set" if on else "unset",
        from_state="off" if on else "on",
        to_state="on" if on else "off",
        message=reason if on else None,
        actor=actor,
    )


_FIELDS = ("bm_node_id", "at", "kind", "event", "from_state", "to_state", "message", "instance_uuid", "actor")
# INSERT ... SELECT from the node's row: an entry for a node deleted meanwhile (a loop's pass read it before
# the delete) is skipped, never a foreign-key error that would fail the write it describes.
_INSERT = insert(_T).from_select(
    list(_FIELDS),
    select(*(bindparam(f, type_=_T.c[f].type) for f in _FIELDS)).where(
        bm_nodes_table.c.id == bindparam("bm_node_id", type_=_T.c.bm_node_id.type)
    ),
)


def _row(entry: Entry, at: Any) -> dict[str, Any]:
    message = entry.message
    if message is not None and len(message) > MESSAGE_MAX:
        message = message[: MESSAGE_MAX - 1] + "…"
    return {
        "bm_node_id": entry.node_id,
        "at": at,
        "kind": entry.kind.value,
        "event": entry.event,
        "from_state": entry.from_state,
        "to_state": entry.to_state,
        "message": message,
        "instance_uuid": entry.instance_uuid,
        "actor": entry.actor,
    }


async def record(session: AsyncSession, entries: Sequence[Entry]) -> None:
    """Add ``entries`` in this transaction (the one that made the changes they describe), in order, and trim
    their nodes to ``KEEP``: two statements whatever their number."""
    if not entries:
        return
    now = utcnow()
    await session.execute(_INSERT, [_row(e, now) for e in entries])
    await trim(session, {e.node_id for e in entries})


async def trim(session: AsyncSession, node_ids: Iterable[int], keep: int = KEEP) -> None:
    """Delete all but the newest ``keep`` entries of each node: the ``keep``-th newest id is found by
    walking ``keep`` steps of the node's index range, and everything older goes."""
    ids = sorted(set(node_ids))
    if not ids:
        return
    cut = (
        select(_T.c.id)
        .where(_T.c.bm_node_id == bindparam("n"))
        .order_by(_T.c.id.desc())
        .offset(keep)
        .limit(1)
        .scalar_subquery()
    )
    await session.execute(delete(_T).where(_T.c.bm_node_id == bindparam("n"), _T.c.id <= cut), [{"n": n} for n in ids])


async def list_events(session: AsyncSession, node_id: int, limit: int, marker: int | None = None) -> list[NodeEvent]:
    """The node's entries newest first, ``limit`` of them, older than ``marker`` (an entry id) when given."""
    stmt = select(NodeEvent).where(NodeEvent.bm_node_id == node_id)
    if marker is not None:
        stmt = stmt.where(NodeEvent.id < marker)
    return list((await session.scalars(stmt.order_by(NodeEvent.id.desc()).limit(limit))).all())


def event_to_dict(row: NodeEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "node_id": row.bm_node_id,
        "at": row.at,
        "kind": row.kind,
        "event": row.event,
        "from_state": row.from_state,
        "to_state": row.to_state,
        "message": row.message,
        "instance_uuid": row.instance_uuid,
        "actor": row.actor,
    }
