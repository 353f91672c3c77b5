"""``bmd db upgrade|current``: Alembic migrations driven from code."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bmd.errors import BmdError, DatabaseError


async def _with_engine(app: Any, action: str) -> int:
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


def register(sub: argparse._SubParsersAction[Any]) -> None:
    db = sub.add_parser("db", help="database schema")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    p = dbsub.add_parser("upgrade", help="apply all migrations")
    p.set_defaults(func=lambda app: asyncio.run(_with_engine(app, "upgrade")))
    p = dbsub.add_parser("current", help="show the schema revision (exit 1 when not at head)")
    p.set_defaults(func=lambda app: asyncio.run(_with_engine(app, "current")))
