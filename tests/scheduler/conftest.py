"""Two schedulers (two full contexts, each with its own bus and selector) on one database, SQLite or the
PostgreSQL test database (when BMD_TEST_POSTGRES_URL is set), as two services would share it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.service import open_context
from tests.conftest import make_settings

from .fleet import Schedulers


@pytest.fixture
async def two(db_url: str, tmp_path: Path) -> AsyncIterator[Schedulers]:
    """Schedulers A and B: two open_contexts on one database, services ``svc-a`` and ``svc-b``."""
    engine = make_engine(make_settings(tmp_path, db_url=db_url).database)
    try:
        await upgrade(engine)  # a no-op on the migrated SQLite copy
    finally:
        await engine.dispose()
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                open_context(make_settings(tmp_path / name, db_url=db_url, service={"host": f"svc-{name}"}))
            )
            for name in ("a", "b")
        ]
        yield a, b
