"""A rolling upgrade (README "Rolling upgrade"): a temporary migrations directory with a test-only 0011 past
our head 0010, one additive (compatible_down_to 0010) and one breaking (compatible_down_to 0011); the real
check_schema of code at 0010 runs on the first with a warning and refuses the second."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from bmd.config import DatabaseSettings
from bmd.context import AppContext
from bmd.db.engine import make_engine
from bmd.db.migrate import MIGRATIONS, check_schema, current_revision, upgrade
from bmd.errors import DatabaseError
from bmd.service import Endpoint, serve
from tests.conftest import make_settings

ADDITIVE = """
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
compatible_down_to = "0010"


def upgrade() -> None:
    op.add_column("bm_nodes", sa.Column("test_extra", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("bm_nodes", "test_extra")
"""

BREAKING = """
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
compatible_down_to = "0011"


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("api_url")


def downgrade() -> None:
    raise NotImplementedError
"""


def scripts(tmp_path: Path, migration: str) -> Path:
    """Our migrations copied to tmp_path with one more revision, 0011."""
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "versions" / "0011_test_only.py").write_text(migration)
    return target


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'bmd.sqlite'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _reset(engine: AsyncEngine) -> None:
    if engine.dialect.name == "postgresql":  # one database per run: start each test from an empty schema
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))


async def test_additive_newer_schema_runs_with_a_warning(tmp_path: Path, db_url: str) -> None:
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        await _reset(engine)
        await upgrade(engine, "0010")
        await upgrade(engine, script_location=scripts(tmp_path, ADDITIVE))
        async with engine.connect() as conn:
            rows = dict((await conn.execute(text("SELECT revision, oldest_code FROM bmd_schema_compat"))).all())
        assert rows == {"0010": "0009", "0011": "0010"}  # one row per revision from 0010 on, two runs
        with capture_logs() as logs:
            await check_schema(engine)
        events = [e for e in logs if e["event"] == "schema_newer_compatible"]
        assert events and events[0]["db_revision"] == "0011" and events[0]["code_head"] == "0010"
    finally:
        await engine.dispose()


async def test_breaking_newer_schema_is_refused(tmp_path: Path, db_url: str) -> None:
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        await _reset(engine)
        await upgrade(engine, script_location=scripts(tmp_path, BREAKING))
        with pytest.raises(DatabaseError, match=r"needs code at least at revision 0011.*upgrade this service"):
            await check_schema(engine)
    finally:
        await engine.dispose()


async def test_older_schema_is_refused(tmp_path: Path, db_url: str) -> None:
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        await _reset(engine)
        await upgrade(engine, "0009")
        with pytest.raises(DatabaseError, match="run `bmd db upgrade`"):
            await check_schema(engine)
    finally:
        await engine.dispose()


async def test_service_keeps_serving_while_another_migrates(tmp_path: Path) -> None:
    """A service at head 0010 answers /healthz before, during and after `upgrade()` to the additive 0011
    on its database (what `bmd db upgrade` does from another host)."""
    settings = make_settings(tmp_path)
    engine = make_engine(settings.database)
    try:
        await upgrade(engine)
        stop = asyncio.Event()
        statuses: list[int] = []

        async def during(_ctx: AppContext, endpoint: Endpoint) -> None:
            try:
                async with aiohttp.ClientSession() as session:
                    migrating = asyncio.create_task(upgrade(engine, script_location=scripts(tmp_path, ADDITIVE)))
                    while True:
                        async with session.get(endpoint.url + "/healthz") as resp:
                            statuses.append(resp.status)
                        if migrating.done():
                            break
                    await migrating
                    async with session.get(endpoint.url + "/healthz") as resp:
                        statuses.append(resp.status)
            finally:
                stop.set()

        async with asyncio.timeout(60):
            await serve(settings, stop, on_ready=during)
        assert await current_revision(engine) == "0011"
        assert statuses and set(statuses) == {200}
    finally:
        await engine.dispose()
