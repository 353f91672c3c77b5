"""``bmd db upgrade|current``: Alembic migrations driven from code."""

from __future__ import annotations

import asyncio

import click

from bmd.cli.base import CliApp, pass_app
from bmd.errors import BmdError, DatabaseError


async def _with_engine(app: CliApp, action: str) -> int:
    from bmd.db.engine import make_engine
    from bmd.db.migrate import current_revision, head_revision, upgrade

    engine = make_engine(app.settings.database)
    try:
        try:
            if action == "upgrade":
                await upgrade(engine)
            current = await current_revision(engine)
        except BmdError:
            raise
        except Exception as err:
            raise DatabaseError(f"database {engine.url.render_as_string()}: {err}") from err
        app.print({"current": current, "head": head_revision()})
        return 0 if action == "upgrade" or current == head_revision() else 1
    finally:
        await engine.dispose()


@click.group("db")
def group() -> None:
    """The database schema."""


@group.command("upgrade")
@pass_app
def upgrade(app: CliApp) -> int:
    """Apply all migrations."""
    return asyncio.run(_with_engine(app, "upgrade"))


@group.command("current")
@pass_app
def current(app: CliApp) -> int:
    """Show the schema revision (exit 1 when not at head)."""
    return asyncio.run(_with_engine(app, "current"))
