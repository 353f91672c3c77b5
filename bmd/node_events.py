"""Node change events: what the scheduler reads of a ``bm_nodes`` row, published after the write commits.

A writer of ``bm_nodes`` (the claim, the state machine's ``transition``, the API's enrol / patch / delete /
maintenance, power sync) calls ``note_nodes(session, ids)`` inside its transaction, after its writes: the
nodes' ``NodeView`` (id, ``version``, the few fields the scheduler uses) is read in that transaction, and
published on the bus topic ``nodes`` (a list of views) once the transaction commits; nothing is published
if it rolls back. The sessionmaker carries the ``NodeEvents`` that publishes (``make_sessionmaker``); a
session without one notes nothing.

With the PostgreSQL bus (``bus.backend = "postgresql"``, ``NodeEvents(notify_from=service.host)``) the same
noted views are also announced to the other services in the transaction itself, just before it commits:
``SELECT pg_notify('bmd_nodes', ...)`` with the ids and versions (``bmd/pg_bus.py`` chunks them under
NOTIFY's 8000-byte limit and runs the listener that reads them back); PostgreSQL delivers a NOTIFY only when
its transaction commits, so a rolled-back write announces nothing, as it publishes nothing.

``version`` is bumped by every write of the row (``bmd.db.models.BareMetalNode.version``), so a reader keeps
the newest view of each node whatever order views arrive in (events, the periodic resync).

A view also carries its row's capability ``fingerprint``: the hash of the columns the node's capability
dict is built from (``CAPABILITY_COLUMNS``, joined into one text by the database). The scheduler reads a
node's capabilities again only when the fingerprint of a newer view differs from the one it holds
(``bmd.scheduler.manager``), so capability changes take the same delta path as every other change, and a
write that leaves them alone (a power check, a claim) costs no read.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, cast, event, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from bmd.bus import Bus
from bmd.db.models import bm_nodes_table
from bmd.db.nodes import is_free
from bmd.gcpause import collector_paused
from bmd.logs import NodeNames

__all__ = [
    "CAPABILITY_COLUMNS",
    "TOPIC",
    "NodeEvents",
    "NodeView",
    "note_deleted",
    "note_nodes",
    "note_views",
    "read_versions",
    "read_views",
    "remember_names",
]

TOPIC = "nodes"
_T = bm_nodes_table
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the scheduler reads it from ``bm_nodes``, at one ``version`` of the row. Slotted: the
    scheduler holds one per node (at 100,000 nodes a dict per view costs ~5 MB more, what the fingerprints
    add)."""

    node_id: int
    version: int
    uuid: str = ""
    name: str | None = None
    instance_uuid: str | None = None
    provision_state: str = "available"
    maintenance: bool = False
    power_state: str | None = None
    power_failures: int = 0
    deleted: bool = False
    # ``hash`` of the row's columns its capability dict is built from (CAPABILITY_COLUMNS): when it differs
    # from the held view's, the scheduler reads the node's capabilities again. A str hash is salted per
    # process: compared within the process only, never stored or sent (notifications carry ids, versions).
    fingerprint: int = 0

    @property
    def free(self) -> bool:
        return not self.deleted and is_free(self.instance_uuid, self.provision_state, self.maintenance)

    @property
    def power_fault(self) -> bool:
        return self.power_state == "error" or bool(self.power_failures)

    def newer_than(self, other: NodeView | None) -> bool:
        return other is None or self.version > other.version


# What ``BareMetalDriver.host_stats_of`` builds a node's capability dict from, besides what the view holds
# (instance_uuid, provision_state, maintenance: the scheduler applies those from the view itself). The
# password only as present or not: that is all a driver's ``validate`` looks at. The node's interface count
# is not here (another table's; a NIC added or removed reaches the scheduler with the next ``capabilities``
# publication).
CAPABILITY_COLUMNS = (
    _T.c.service_host,
    _T.c.cpus,
    _T.c.memory_mb,
    _T.c.local_gb,
    _T.c.extra_specs,
    _T.c.boot_mode,
    _T.c.pm_driver,
    _T.c.pm_address,
    _T.c.pm_user,
    _T.c.pm_password.is_not(None),
)


def _joined(columns: Iterable[Any]) -> Any:
    """The columns as one text, joined by the database (one column to fetch, not ten). NULL reads as
    empty; the separator is a control character, so two different rows join alike only if a field holds
    it — then a change is missed until the periodic ``capabilities`` publication, nothing worse."""
    parts: list[ColumnElement[str]] = [func.coalesce(cast(column, Text), "") for column in columns]
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + literal("\x1f") + part
    return joined.label("capability_text")


_COLUMNS = (
    _T.c.id,
    _T.c.version,
    _T.c.uuid,
    _T.c.name,
    _T.c.instance_uuid,
    _T.c.provision_state,
    _T.c.maintenance,
    _T.c.power_state,
    _T.c.power_failures,
    _joined(CAPABILITY_COLUMNS),
)


def _view(row: Any) -> NodeView:
    # Unpacked by position, in _COLUMNS' order: at 100,000 rows a resync spends most of its time here, and
    # a Row's attribute lookups cost more than the read of the columns.
    node_id, version, uuid, name, instance_uuid, provision_state, maintenance, power_state, failures, caps = row
    return NodeView(
        node_id,
        version,
        uuid,
        name,
        instance_uuid,
        provision_state,
        bool(maintenance),
        power_state,
        failures or 0,
        False,
        hash(caps),
    )


async def read_views(session: AsyncSession, node_ids: Iterable[int] | None = None) -> list[NodeView]:
    """The views of ``node_ids`` (every node when None), one statement per 500 ids."""
    if node_ids is None:
        return [_view(row) for row in await session.execute(select(*_COLUMNS).order_by(_T.c.id))]
    ids = sorted(set(node_ids))
    views: list[NodeView] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        views.extend(_view(row) for row in await session.execute(select(*_COLUMNS).where(_T.c.id.in_(chunk))))
    return views


async def read_versions(session: AsyncSession) -> dict[int, int]:
    """Every node's ``version`` by id: what a resync compares with the views it holds before it reads the
    views of the nodes that changed."""
    result = await session.execute(select(_T.c.id, _T.c.version))
    with collector_paused():
        return dict(result.all())


class NodeEvents:
    """Publishes the views noted in a transaction on ``bus`` once it commits, and keeps ``names`` (the
    log's node directory) current. ``notify_from`` (this service's host): also NOTIFY the other services
    of the same PostgreSQL database, in the transaction (see the module's docstring)."""

    def __init__(self, bus: Bus, names: NodeNames | None = None, *, notify_from: str | None = None) -> None:
        self.bus = bus
        self.names = names
        self.notify_from = notify_from
        self._pending: weakref.WeakKeyDictionary[Session, list[NodeView]] = weakref.WeakKeyDictionary()

    def note(self, session: AsyncSession, views: Sequence[NodeView]) -> None:
        self._pending.setdefault(session.sync_session, []).extend(views)

    def committing(self, session: Session) -> None:
        """Just before the commit, in the transaction: the NOTIFYs of the noted views (postgresql bus)."""
        views = self._pending.get(session)
        if views and self.notify_from is not None:
            from bmd.pg_bus import CHANNEL, payloads  # here: bmd.pg_bus reads views with this module

            for payload in payloads(self.notify_from, views):
                session.execute(select(func.pg_notify(CHANNEL, payload)))

    def committed(self, session: Session) -> None:
        views = self._pending.pop(session, None)
        if views:
            self.publish(views)

    def publish(self, views: list[NodeView]) -> None:
        """Publish views on ``nodes`` as a local commit does (the PostgreSQL listener's views come here)."""
        if self.names is not None:
            remember_names(self.names, views)
        self.bus.publish(TOPIC, views)

    def rolled_back(self, session: Session) -> None:
        self._pending.pop(session, None)


def remember_names(names: NodeNames, views: Iterable[NodeView]) -> None:
    for view in views:
        if view.deleted:
            names.forget(view.node_id)
        else:
            names.set(view.node_id, view.uuid, view.name)


def _events(session: AsyncSession | Session) -> NodeEvents | None:
    events = session.info.get("node_events")
    return events if isinstance(events, NodeEvents) else None


def note_views(session: AsyncSession, views: Sequence[NodeView]) -> None:
    """Publish views read in this transaction once it commits."""
    events = _events(session)
    if events is not None:
        events.note(session, views)


async def note_nodes(session: AsyncSession, node_ids: Iterable[int]) -> list[NodeView]:
    """Read the nodes' views in this transaction (after its writes) and publish them once it commits."""
    events = _events(session)
    if events is None:
        return []
    views = await read_views(session, node_ids)
    events.note(session, views)
    return views


async def note_deleted(session: AsyncSession, node_ids: Iterable[int]) -> None:
    """Call before deleting the rows: their views, marked deleted one version on, once it commits."""
    events = _events(session)
    if events is not None:
        views = await read_views(session, node_ids)
        events.note(session, [dataclasses.replace(v, version=v.version + 1, deleted=True) for v in views])


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    events = _events(session)
    if events is not None:
        events.committing(session)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    events = _events(session)
    if events is not None:
        events.committed(session)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    events = _events(session)
    if events is not None:
        events.rolled_back(session)
