"""Database: migrations from the first revision, SQLite pragmas, the schema check, PostgreSQL parity."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from bmd.config import DatabaseSettings
from bmd.db.engine import make_engine
from bmd.db.migrate import check_schema, current_revision, head_revision, upgrade
from bmd.db.models import Base
from bmd.errors import DatabaseError

SEED_COLUMNS = {
    "bm_nodes": {
        "id",
        "service_host",
        "instance_uuid",
        "cpus",
        "memory_mb",
        "local_gb",
        "pm_address",
        "pm_user",
        "pm_password",
        "prov_mac_address",
        "registration_status",
        "task_state",
        "prov_vlan_id",
        "terminal_port",
    },
    "bm_pxe_ips": {"id", "address", "server_address", "bm_node_id"},
    "bm_interfaces": {"id", "bm_node_id", "address", "datapath_id", "port_no", "vif_uuid"},
    "bm_deployments": {"id", "key", "image_path", "pxe_config_path", "root_mb", "swap_mb"},
    "instance_types": {"id", "name", "memory_mb", "vcpus", "root_gb", "ephemeral_gb", "flavorid", "swap"},
    "instance_type_extra_specs": {"id", "instance_type_id", "key", "value"},
    "instances": {"id", "uuid", "instance_type_id", "host", "node", "vm_state", "task_state", "image_ref"},
    "compute_nodes": {
        "vcpus",
        "memory_mb",
        "local_gb",
        "vcpus_used",
        "memory_mb_used",
        "local_gb_used",
        "free_ram_mb",
        "free_disk_gb",
        "hypervisor_type",
        "hypervisor_version",
        "hypervisor_hostname",
        "cpu_info",
        "running_vms",
    },
    "services": {"id", "host", "last_heartbeat"},
}


def sqlite_settings(path: Path) -> DatabaseSettings:
    return DatabaseSettings(url=f"sqlite+aiosqlite:///{path}")


async def columns(engine) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda c: {t: {col["name"] for col in inspect(c).get_columns(t)} for t in inspect(c).get_table_names()}
        )


async def assert_migrated_schema(engine) -> None:  # type: ignore[no-untyped-def]
    found = await columns(engine)
    for table, cols in SEED_COLUMNS.items():
        assert cols <= found[table], (table, cols - found[table])
    # The migrations produce exactly the models' tables and columns.
    for table in Base.metadata.sorted_tables:
        assert {c.name for c in table.columns} == found[table.name], table.name


async def test_upgrade_from_empty_builds_the_seed_tables(tmp_path: Path) -> None:
    engine = make_engine(sqlite_settings(tmp_path / "db.sqlite"))
    try:
        with pytest.raises(DatabaseError, match="bmd db upgrade"):
            await check_schema(engine)
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        await check_schema(engine)
        await assert_migrated_schema(engine)
        await upgrade(engine)  # idempotent
    finally:
        await engine.dispose()


async def test_sqlite_is_a_wal_file_with_foreign_keys(db_file: Path) -> None:
    engine = make_engine(sqlite_settings(db_file))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
        async with engine.begin() as conn:
            with pytest.raises(Exception, match="FOREIGN KEY"):
                await conn.execute(
                    text(
                        "INSERT INTO bm_interfaces (bm_node_id, address, created_at, updated_at) "
                        "VALUES (999, 'aa:bb:cc:dd:ee:ff', '2026-01-01', '2026-01-01')"
                    )
                )
    finally:
        await engine.dispose()


async def test_newer_database_is_refused(db_file: Path) -> None:
    engine = make_engine(sqlite_settings(db_file))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
        with pytest.raises(DatabaseError, match="does not know"):
            await check_schema(engine)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_same_migrations_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(DatabaseSettings(url=postgres_url))
    try:
        await upgrade(engine)
        await check_schema(engine)
        await assert_migrated_schema(engine)
    finally:
        await engine.dispose()


async def _insert_node(conn: Any, name: str) -> int:
    now = "2026-01-01 00:00:00"
    result = await conn.execute(
        text(
            "INSERT INTO bm_nodes (uuid, name, service_host, cpus, memory_mb, local_gb, pm_driver, "
            "registration_status, power_failures, provision_state, maintenance, extra_specs, created_at, updated_at) "
            "VALUES (:uuid, :name, 'h', 1, 1, 1, 'fake', 'done', 0, 'available', 0, '{}', :now, :now)"
        ),
        {"uuid": str(uuid.uuid4()), "name": name, "now": now},
    )
    return int(result.lastrowid)


async def test_ids_are_never_reused(db_file: Path) -> None:
    """Deleting the newest node does not give its id to the next one (SQLite would, without AUTOINCREMENT)."""
    engine = make_engine(sqlite_settings(db_file))
    try:
        async with engine.begin() as conn:
            first = await _insert_node(conn, "a")
            newest = await _insert_node(conn, "b")
            await conn.execute(text("DELETE FROM bm_nodes WHERE id = :id"), {"id": newest})
            after = await _insert_node(conn, "c")
        assert first < newest < after
        async with engine.connect() as conn:
            tables = dict((await conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))).all())
        for table in Base.metadata.sorted_tables:
            if [c.type.python_type for c in table.primary_key.columns] == [int]:  # a surrogate id
                assert "AUTOINCREMENT" in tables[table.name], table.name
    finally:
        await engine.dispose()


async def test_rebuilding_tables_keeps_every_row_and_reference(tmp_path: Path) -> None:
    """The AUTOINCREMENT migration rebuilds parent tables: no child row is cascaded away, every id is kept,
    and foreign keys are enforced again afterwards."""
    engine = make_engine(sqlite_settings(tmp_path / "db.sqlite"))
    try:
        await upgrade(engine, "0002")
        async with engine.begin() as conn:
            node = await _insert_node(conn, "a")
            await conn.execute(
                text(
                    "INSERT INTO bm_interfaces (bm_node_id, address, created_at, updated_at) "
                    "VALUES (:n, 'aa:bb:cc:dd:ee:01', '2026-01-01', '2026-01-01')"
                ),
                {"n": node},
            )
        await upgrade(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT bm_node_id FROM bm_interfaces"))).scalars().all() == [node]
            assert (await conn.execute(text("SELECT id FROM bm_nodes"))).scalars().all() == [node]
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        await assert_migrated_schema(engine)
    finally:
        await engine.dispose()
