"""The async engine and session factory, built once at start-up.

SQLite is always a file, opened with WAL, foreign keys on and a busy timeout (set on every connection).
PostgreSQL goes through asyncpg. Query functions take a session; they never make one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from bmd.config import DatabaseSettings


def _sqlite_pragmas(busy_timeout_s: float) -> Any:
    def on_connect(dbapi_conn: Any, _: ConnectionPoolEntry) -> None:
        # aiosqlite's adapter: disable pysqlite's implicit BEGIN handling so SQLAlchemy's is the only one.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.close()

    return on_connect


WRITE_OPTION = "bmd_write"


def _sqlite_begin(conn: Any) -> None:
    # pysqlite's implicit transaction handling is off (isolation_level=None), so SQLAlchemy's BEGIN is the
    # only one and SAVEPOINT and transactional DDL work as documented. A write transaction takes the write
    # lock up front (BEGIN IMMEDIATE): in WAL mode a read transaction that later writes after another
    # writer committed fails at once with "database is locked", without waiting on the busy timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")


def make_engine(settings: DatabaseSettings, *, pooled: bool = True) -> AsyncEngine:
    """The engine; ``pooled=False``: a fresh connection per use, none held between (the health probe's, so it
    never queues behind requests for a pooled connection)."""
    url = make_url(settings.url)
    kwargs: dict[str, Any] = {"echo": settings.echo}
    if url.drivername.startswith("sqlite"):
        assert url.database
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": settings.sqlite_busy_timeout}
    elif pooled:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
    if not pooled:
        kwargs["poolclass"] = NullPool
    engine = create_async_engine(url, **kwargs)
    if url.drivername.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(settings.sqlite_busy_timeout))
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


class Sessionmaker(async_sessionmaker[AsyncSession]):
    """``maker()`` gives a session for reading; ``maker.begin()`` one whose transaction writes.

    On SQLite a write transaction starts with BEGIN IMMEDIATE, and the writers of this process queue on an
    asyncio lock first: SQLite's own busy handler polls with sleeps of up to 100 ms, so 32 connections
    waiting inside it would crawl, while the lock hands over at once. Other processes still queue on the
    busy timeout. A write transaction must not open another one (that would wait for itself): it raises.
    """

    def __init__(self, engine: AsyncEngine, info: dict[str, Any] | None = None) -> None:
        super().__init__(engine, expire_on_commit=False, info=info)
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self._serialize = engine.dialect.name == "sqlite"
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        me = asyncio.current_task()
        if self._owner is not None and self._owner is me:
            raise RuntimeError("a write transaction was opened inside another one")
        async with self._lock:
            self._owner = me
            try:
                async with self(bind=self._writer)._maker_context_manager() as session:
                    yield session
            finally:
                self._owner = None

    def begin(self) -> Any:
        if self._serialize:
            return self._write()
        return self(bind=self._writer)._maker_context_manager()


def make_sessionmaker(engine: AsyncEngine, node_events: Any = None) -> Sessionmaker:
    """``node_events`` (a ``bmd.node_events.NodeEvents``): publishes the nodes each transaction notes."""
    return Sessionmaker(engine, info=None if node_events is None else {"node_events": node_events})


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"
