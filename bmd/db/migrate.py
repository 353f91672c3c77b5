"""Alembic, driven from code: ``bmd db upgrade`` and the start-up check that the schema matches the code."""

from __future__ import annotations

from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, delete, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bmd.db.models import SchemaCompat
from bmd.errors import DatabaseError

MIGRATIONS = Path(__file__).with_name("migrations")
# The first revision with bmd_schema_compat: from it on, each migrated revision records the oldest code
# that still runs on its schema (a rolling upgrade, README "Rolling upgrade").
COMPAT_SINCE = "0010"

log = structlog.get_logger(__name__)


def alembic_config(engine: AsyncEngine | None = None, script_location: Path | None = None) -> Config:
    """``script_location`` is another migrations directory (tests build one with a revision past ours)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location or MIGRATIONS))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision(script_location: Path | None = None) -> str:
    head = ScriptDirectory.from_config(alembic_config(script_location=script_location)).get_current_head()
    assert head is not None
    return head


def compatible_down_to(script: ScriptDirectory, revision: str) -> str:
    """The oldest code head that still runs on the schema of ``revision``: the migration module's
    ``compatible_down_to`` (an additive migration names its down_revision), else the revision itself (a
    migration that drops or renames something needs code that knows it)."""
    found = script.get_revision(revision)
    assert found is not None
    value = getattr(found.module, "compatible_down_to", revision)
    assert isinstance(value, str)
    return value


def _lineage(script: ScriptDirectory, revision: str) -> set[str]:
    """``revision`` and every revision before it."""
    return {rev.revision for rev in script.iterate_revisions(revision, "base")}


def _record_compat(conn: Connection, script: ScriptDirectory, before: str | None, after: str | None) -> None:
    """One bmd_schema_compat row (upserted) per revision from COMPAT_SINCE on that this run applied, and
    for the head reached, so an older service reading it knows whether it still runs on this schema."""
    if after is None or COMPAT_SINCE not in _lineage(script, after):
        return
    done = _lineage(script, before) if before is not None else set()
    revisions = {after} | {rev for rev in _lineage(script, after) - done if COMPAT_SINCE in _lineage(script, rev)}
    for rev in sorted(revisions):  # delete then insert: an upsert both SQLite and PostgreSQL run
        conn.execute(delete(SchemaCompat).where(SchemaCompat.revision == rev))
        conn.execute(insert(SchemaCompat).values(revision=rev, oldest_code=compatible_down_to(script, rev)))


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def upgrade(engine: AsyncEngine, revision: str = "head", script_location: Path | None = None) -> None:
    """Migrate to ``revision``. On SQLite foreign-key enforcement is off while the migrations run (a table
    rebuild drops and recreates a parent table: with enforcement on, dropping it would cascade its deletes
    to every child row), and every reference is checked before the migrations commit. In the same
    transaction each applied revision's compatibility is recorded (bmd_schema_compat): the other services,
    still on older code, keep running when the migration is additive (README "Rolling upgrade")."""

    def run(conn: Connection) -> None:
        cfg = alembic_config(script_location=script_location)
        cfg.attributes["connection"] = conn
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(cfg, revision)
        after = MigrationContext.configure(conn).get_current_revision()
        _record_compat(conn, ScriptDirectory.from_config(cfg), before, after)
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


async def check_schema(engine: AsyncEngine, script_location: Path | None = None) -> None:
    """Refuse to run against an un-migrated or older database, or one migrated by newer code that this code
    cannot run on. A newer schema whose bmd_schema_compat row names this code's head (or an older one) as
    the oldest code it supports is accepted with a warning: the rolling upgrade's window, in which a
    service restarts on the new code after ``bmd db upgrade`` ran from another one."""
    current = await current_revision(engine)
    script = ScriptDirectory.from_config(alembic_config(script_location=script_location))
    head = head_revision(script_location)
    if current == head:
        return
    if current is None:
        raise DatabaseError("the database is not migrated; run `bmd db upgrade` first")
    known = {rev.revision for rev in script.walk_revisions()}
    if current in known:
        raise DatabaseError(
            f"the database is at revision {current}, older than this code's {head}; run `bmd db upgrade`"
        )
    oldest = await _oldest_code(engine, current)
    if oldest is None:
        raise DatabaseError(
            f"the database is at revision {current}, which this bmd does not know (newer code migrated it?) "
            f"and records no compatibility for; this code's head is {head}: upgrade this service's code first"
        )
    if oldest not in _lineage(script, head):
        raise DatabaseError(
            f"the database is at revision {current}, newer than this code's head {head}, and that schema needs "
            f"code at least at revision {oldest}: upgrade this service's code first"
        )
    log.warning("schema_newer_compatible", db_revision=current, code_head=head, oldest_code=oldest)


async def _oldest_code(engine: AsyncEngine, revision: str) -> str | None:
    """The oldest code head recorded for ``revision``, or None (no row, or no bmd_schema_compat at all)."""

    def read(conn: Connection) -> str | None:
        if not inspect(conn).has_table(SchemaCompat.__tablename__):
            return None
        table = SchemaCompat.__table__
        return conn.execute(select(table.c.oldest_code).where(table.c.revision == revision)).scalar_one_or_none()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
