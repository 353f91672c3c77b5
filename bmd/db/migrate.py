"""Alembic, driven from code: ``bmd db upgrade`` and the start-up check that the schema matches the code."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from bmd.errors import DatabaseError

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: AsyncEngine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate to ``revision``. On SQLite foreign-key enforcement is off while the migrations run (a table
    rebuild drops and recreates a parent table: with enforcement on, dropping it would cascade its deletes
    to every child row), and every reference is checked before the migrations commit."""

    def run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        if conn.dialect.name == "sqlite":
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise DatabaseError(f"the migration left {len(broken)} broken references, e.g. {tuple(broken[0])}")

    async with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:  # a pragma that only takes effect outside a transaction: sent before the BEGIN
            await conn.run_sync(_set_foreign_keys, False)
        try:
            async with conn.begin():
                await conn.run_sync(run)
        finally:
            if sqlite:
                await conn.run_sync(_set_foreign_keys, True)


def _set_foreign_keys(conn: Connection, on: bool) -> None:
    # Straight to the driver: Connection.execute would open a transaction first, inside which SQLite
    # ignores this pragma.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    finally:
        cursor.close()


async def check_schema(engine: AsyncEngine) -> None:
    """Refuse to run against an un-migrated database or one migrated by newer code."""
    current = await current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise DatabaseError("the database is not migrated; run `bmd db upgrade` first")
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current not in known:
        raise DatabaseError(
            f"the database is at revision {current}, which this bmd does not know (newer code migrated it?); "
            f"this code's head is {head}"
        )
    raise DatabaseError(f"the database is at revision {current}, not {head}; run `bmd db upgrade`")
