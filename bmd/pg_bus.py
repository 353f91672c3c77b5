"""The PostgreSQL backend of the node change feed: LISTEN/NOTIFY between the services of one database.

One delta path: every write of ``bm_nodes`` notes its nodes (``bmd.node_events.note_nodes``); with
``bus.backend = "postgresql"`` the same noted views are announced, in the writing transaction, as
``NOTIFY bmd_nodes`` payloads ``{"from": <service.host>, "nodes": [[id, version], ...]}`` (``payloads``:
chunked under PostgreSQL's 8000-byte limit). A notification carries only ids and versions; the receiver
reads the rows.

``NodeListener`` is each service's one listener: a dedicated asyncpg connection (not one of the pool's)
that LISTENs, skips its own service's notifications, reads the announced rows whose version is newer than
the one it last published, and publishes their views on the local ``nodes`` topic exactly as a local
commit does (a row gone is published deleted at the announced version). If the connection drops it
reconnects with a backoff and publishes a full resync (every node's view, and the nodes it knew that are
gone as deleted), since notifications sent meanwhile are lost. Bounded: what waits to be read is one
version per node, at most ``max_pending`` nodes (beyond that a full resync replaces them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from bmd.db.engine import Sessionmaker
from bmd.node_events import NodeEvents, NodeView, read_views

__all__ = ["CHANNEL", "NodeListener", "listen_dsn", "payloads"]

log = structlog.get_logger(__name__)

CHANNEL = "bmd_nodes"
PAYLOAD_LIMIT = 7900  # bytes; PostgreSQL refuses a NOTIFY payload of 8000 or more


def payloads(sender: str, views: Iterable[NodeView], limit: int = PAYLOAD_LIMIT) -> list[str]:
    """The NOTIFY payloads announcing ``views`` (the newest version of each node), each under ``limit``
    bytes of UTF-8."""
    newest: dict[int, int] = {}
    for view in views:
        newest[view.node_id] = max(view.version, newest.get(view.node_id, view.version))
    head = json.dumps({"from": sender, "nodes": []}, separators=(",", ":"))
    room = limit - len(head.encode())
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for node_id, version in sorted(newest.items()):
        item = f"[{node_id},{version}]"
        if chunk and size + len(item) + 1 > room:
            out.append(_payload(head, chunk))
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        out.append(_payload(head, chunk))
    return out


def _payload(head: str, items: list[str]) -> str:
    return head[: -len("[]}")] + "[" + ",".join(items) + "]}"


def listen_dsn(database_url: str) -> str:
    """The asyncpg DSN of SQLAlchemy's ``postgresql+asyncpg://`` URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class NodeListener:
    """This service's LISTEN on ``bmd_nodes``: ``start()`` connects and listens (raising if it cannot),
    ``close()`` cancels and awaits its task and closes the connection."""

    def __init__(
        self,
        dsn: str,
        host: str,
        sessionmaker: Sessionmaker,
        events: NodeEvents,
        *,
        max_pending: int = 100_000,
        backoff: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.host = host
        self.sessionmaker = sessionmaker
        self.events = events
        self.max_pending = max_pending
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.known: dict[int, int] = {}  # node id -> the version last published from a notification
        self.received = 0  # notifications from other services
        self.reconnects = 0
        self.resyncs = 0  # full reads: after a reconnect, or when more than max_pending nodes waited
        self._pending: dict[int, int] = {}  # node id -> newest announced version, not read yet
        self._resync = False
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="pg-bus-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    @property
    def backend_pid(self) -> int | None:
        """The listening connection's server process (tests terminate it)."""
        return None if self._conn is None or self._conn.is_closed() else int(self._conn.get_server_pid())

    async def _connect(self) -> None:
        self._lost.clear()
        conn = await asyncpg.connect(self.dsn)
        conn.add_termination_listener(self._terminated)
        await conn.add_listener(CHANNEL, self._notified)
        self._conn = conn

    def _terminated(self, conn: Any) -> None:
        if conn is not self._conn:
            return  # called soon after: a connection already replaced
        self._lost.set()
        self._wake.set()

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # no round trip: the connection may be half dead

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            sender = message["from"]
            nodes = [(int(node_id), int(version)) for node_id, version in message["nodes"]]
        except (ValueError, KeyError, TypeError) as err:
            log.warning("bus_notification_malformed", channel=CHANNEL, error=str(err))
            return
        if sender == self.host:
            return
        self.received += 1
        for node_id, version in nodes:
            if version > max(self.known.get(node_id, 0), self._pending.get(node_id, 0)):
                self._pending[node_id] = version
        if len(self._pending) > self.max_pending:  # bounded: a full read replaces what waits
            self._pending.clear()
            self._resync = True
        self._wake.set()

    async def _run(self) -> None:
        delay = self.backoff
        while True:
            try:
                while True:
                    await self._wake.wait()  # a notification, or the connection lost (both set it)
                    if self._lost.is_set():
                        break
                    await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a failed read: reconnect and resync
                log.warning("bus_listener_failed", error=str(err))
            log.warning("bus_listener_disconnected", channel=CHANNEL)
            await self._disconnect()
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                except (OSError, asyncpg.PostgresError) as err:
                    delay = min(delay * 2, self.backoff_max)
                    log.debug("bus_listener_reconnect_failed", error=str(err), retry_in=delay)
                    continue
                break
            delay = self.backoff
            self.reconnects += 1
            self._resync = True  # notifications sent while disconnected are lost
            self._wake.set()
            log.info("bus_listener_reconnected", channel=CHANNEL, reconnects=self.reconnects)

    async def _catch_up(self) -> None:
        """Read and publish what was announced (or everything, after a reconnect or an overflow)."""
        self._wake.clear()
        resync, self._resync = self._resync, False
        pending, self._pending = self._pending, {}
        if resync:
            self.resyncs += 1
            async with self.sessionmaker() as session:
                views = await read_views(session)
            present = {view.node_id for view in views}
            gone = [
                NodeView(node_id=node_id, version=version + 1, deleted=True)
                for node_id, version in self.known.items()
                if node_id not in present
            ]
            self._publish([*views, *gone], force=True)
            for view in gone:
                del self.known[view.node_id]
            return
        if not pending:
            return
        async with self.sessionmaker() as session:
            views = await read_views(session, pending)
        present = {view.node_id for view in views}
        gone = [NodeView(node_id=i, version=v, deleted=True) for i, v in pending.items() if i not in present]
        self._publish([*views, *gone], force=False)
        for view in gone:
            self.known.pop(view.node_id, None)

    def _publish(self, views: Sequence[NodeView], *, force: bool) -> None:
        fresh = [v for v in views if force or v.version > self.known.get(v.node_id, 0)]
        for view in fresh:
            self.known[view.node_id] = max(view.version, self.known.get(view.node_id, 0))
        if fresh:
            self.events.publish(fresh)
