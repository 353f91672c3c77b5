"""One service, many hosts: capability dicts, resource trackers, the two loops, constant SQL per pass."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import delete, event, insert, select, update

from bmd.context import AppContext
from bmd.db.models import BareMetalNode, ComputeNode, Interface, utcnow
from bmd.drivers.baremetal import BareMetalDriver
from bmd.errors import NotFound
from bmd.tasks.report_driver_status import TOPIC, ReportDriverStatus
from bmd.tasks.update_available_resource import UpdateAvailableResource
from tests.conftest import make_settings, node_body

SEED_KEYS = {
    "vcpus",
    "vcpus_used",
    "cpu_info",
    "disk_total",
    "disk_used",
    "disk_available",
    "host_memory_total",
    "host_memory_free",
    "hypervisor_type",
    "hypervisor_version",
    "hypervisor_hostname",
    "supported_instances",
    "host",
    "node",
}


async def add_nodes(ctx: AppContext, count: int, host: str = "test-host", **values: Any) -> list[int]:
    now = utcnow()
    rows = [
        {
            "uuid": str(uuid.uuid4()),
            "service_host": host,
            "cpus": 8,
            "memory_mb": 16384,
            "local_gb": 200,
            "pm_driver": "fake",
            "registration_status": "done",
            "provision_state": "available",
            "maintenance": False,
            "extra_specs": {},
            "power_failures": 0,
            "created_at": now,
            "updated_at": now,
            **values,
        }
        for _ in range(count)
    ]
    async with ctx.sessionmaker.begin() as session:
        await session.execute(insert(BareMetalNode), rows)
        ids = (await session.execute(select(BareMetalNode.id).order_by(BareMetalNode.id.desc()).limit(count))).scalars()
        return sorted(ids)


async def add_nics(ctx: AppContext, node_ids: list[int]) -> None:
    """One interface per node: a node without one cannot PXE boot, so the scheduler skips it."""
    now = utcnow()
    rows = [
        {
            "bm_node_id": n,
            "address": f"52:54:01:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
            "created_at": now,
        }
        for n in node_ids
    ]
    async with ctx.sessionmaker.begin() as session:
        await session.execute(insert(Interface), [{**r, "updated_at": now} for r in rows])


@contextmanager
def count_statements(ctx: AppContext) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append(statement)

    event.listen(ctx.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(ctx.engine.sync_engine, "before_cursor_execute", before)


def data_statements(statements: list[str]) -> list[str]:
    return [s for s in statements if not s.startswith(("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA"))]


async def compute_rows(ctx: AppContext) -> dict[int, ComputeNode]:
    async with ctx.sessionmaker() as session:
        return {r.bm_node_id: r for r in (await session.execute(select(ComputeNode))).scalars()}


async def test_host_stats_is_a_list_with_exactly_the_seed_keys(ctx: AppContext) -> None:
    await add_nodes(ctx, 3)
    stats = await ctx.driver.get_host_stats(refresh=True)
    assert isinstance(stats, list) and len(stats) == 3
    extra = set(ctx.driver.extra_specs)
    assert extra == {"cpu_arch", "baremetal_driver"}
    for entry in stats:
        assert set(entry) == SEED_KEYS | extra | {"maintenance", "deploy_ready", "deploy_blocker", "boot_mode"}
        assert entry["boot_mode"] == "bios"
        assert entry["hypervisor_hostname"] == entry["node"]
        assert entry["host"] == "test-host"
        assert entry["hypervisor_type"] == "baremetal"
        assert entry["supported_instances"] == [("x86_64", "baremetal", "baremetal")]
        assert entry["vcpus"] == 8 and entry["vcpus_used"] == 0
        assert entry["host_memory_total"] == entry["host_memory_free"] == 16384
        assert entry["disk_total"] == entry["disk_available"] == 200 and entry["disk_used"] == 0


async def test_only_this_services_nodes(ctx: AppContext) -> None:
    mine = await add_nodes(ctx, 2)
    await add_nodes(ctx, 2, host="other-host")
    assert await ctx.driver.get_available_nodes() == [str(i) for i in mine]
    assert [s["node"] for s in await ctx.driver.get_host_stats()] == [str(i) for i in mine]
    with pytest.raises(NotFound):
        await ctx.driver.get_available_resource(str(mine[-1] + 1))


async def test_used_and_maintenance_nodes_offer_nothing(ctx: AppContext) -> None:
    free, used, maint = await add_nodes(ctx, 3)
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.id == used).values(instance_uuid=str(uuid.uuid4()))
        )
        await session.execute(update(BareMetalNode).where(BareMetalNode.id == maint).values(maintenance=True))
    res = await ctx.driver.get_available_resource(str(used))
    assert res["vcpus_used"] == 8 and res["memory_mb_used"] == 16384 and res["local_gb_used"] == 200
    assert res["running_vms"] == 1
    assert (await ctx.driver.get_available_resource(str(free)))["memory_mb_used"] == 0
    stats = {s["node"]: s for s in await ctx.driver.get_host_stats()}
    assert stats[str(maint)]["maintenance"] is True
    assert stats[str(maint)]["host_memory_free"] == 0 and stats[str(maint)]["disk_available"] == 0
    assert stats[str(maint)]["vcpus_used"] == stats[str(maint)]["vcpus"]
    assert stats[str(used)]["maintenance"] is False and stats[str(used)]["host_memory_free"] == 0
    assert stats[str(free)]["host_memory_free"] == 16384


async def test_per_node_capabilities_override_service_wide(tmp_path, db_file) -> None:  # type: ignore[no-untyped-def]
    from bmd.service import open_context

    settings = make_settings(
        tmp_path, driver={"instance_type_extra_specs": ["cpu_arch:x86_64", "location:dc1", "nested:x"]}
    )
    async with open_context(settings) as ctx:
        plain, arm = await add_nodes(ctx, 2)
        async with ctx.sessionmaker.begin() as session:
            await session.execute(
                update(BareMetalNode)
                .where(BareMetalNode.id == arm)
                .values(extra_specs={"cpu_arch": "aarch64", "location": "rack11", "gpu": {"model": "a100", "count": 4}})
            )
        stats = {s["node"]: s for s in await ctx.driver.get_host_stats()}
    assert stats[str(plain)]["location"] == "dc1" and stats[str(plain)]["cpu_arch"] == "x86_64"
    assert stats[str(arm)]["location"] == "rack11" and stats[str(arm)]["cpu_arch"] == "aarch64"
    assert stats[str(arm)]["gpu"] == {"model": "a100", "count": 4}
    assert stats[str(arm)]["supported_instances"] == [("aarch64", "baremetal", "baremetal")]
    assert stats[str(arm)]["baremetal_driver"] == settings.driver.baremetal_driver


async def test_report_driver_status_publishes_with_host_ip(ctx: AppContext, client) -> None:  # type: ignore[no-untyped-def]
    await add_nodes(ctx, 2)
    task = ReportDriverStatus(ctx.driver, ctx.bus, "10.1.2.3", 60.0)
    early = ctx.bus.subscribe(TOPIC)
    await task.run_once()
    published = await asyncio.wait_for(early.get(), 5)
    assert len(published) == 2 and {e["host_ip"] for e in published} == {"10.1.2.3"}
    late = ctx.bus.subscribe(TOPIC)  # a scheduler starting after the publication still gets the list
    assert await asyncio.wait_for(late.get(), 5) is published
    body = await (await client.get("/v1/capabilities")).json()
    assert body["published"] is True and [e["node"] for e in body["capabilities"]] == [e["node"] for e in published]
    assert body["capabilities"][0]["supported_instances"] == [["x86_64", "baremetal", "baremetal"]]


async def test_node_added_and_removed_between_passes(ctx: AppContext) -> None:
    first = await add_nodes(ctx, 2)
    report = ReportDriverStatus(ctx.driver, ctx.bus, "127.0.0.1", 60.0)
    update_task = UpdateAvailableResource(ctx.driver, ctx.sessionmaker, 60.0)
    await update_task.run_once()
    await report.run_once()
    assert set(update_task.trackers) == {str(i) for i in first}
    assert set(await compute_rows(ctx)) == set(first)

    (added,) = await add_nodes(ctx, 1)
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.id == first[0]).values(service_host="elsewhere")
        )
        await session.execute(delete(BareMetalNode).where(BareMetalNode.id == first[1]))
    await update_task.run_once()
    await report.run_once()
    assert set(update_task.trackers) == {str(added)}
    rows = await compute_rows(ctx)
    assert set(rows) == {added}
    row = rows[added]
    assert (row.vcpus, row.memory_mb, row.local_gb, row.free_ram_mb, row.free_disk_gb) == (8, 16384, 200, 16384, 200)
    assert (row.hypervisor_type, row.hypervisor_hostname, row.running_vms) == ("baremetal", str(added), 0)
    assert [e["node"] for e in ctx.bus.latest(TOPIC)] == [str(added)]


async def test_tracker_writes_changes_and_keeps_trackers(ctx: AppContext) -> None:
    (node,) = await add_nodes(ctx, 1)
    task = UpdateAvailableResource(ctx.driver, ctx.sessionmaker, 60.0)
    await task.run_once()
    tracker = task.trackers[str(node)]
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.id == node).values(instance_uuid=str(uuid.uuid4()))
        )
    await task.run_once()
    assert task.trackers[str(node)] is tracker
    row = (await compute_rows(ctx))[node]
    assert (row.vcpus_used, row.memory_mb_used, row.free_ram_mb, row.free_disk_gb, row.running_vms) == (
        8,
        16384,
        0,
        0,
        1,
    )


@pytest.mark.parametrize("loop", ["report_driver_status", "update_available_resource"])
async def test_sql_statements_per_pass_do_not_grow_with_nodes(tmp_path, migrated_template, loop: str) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from bmd.service import open_context

    counts = {}
    for n in (10, 1000):
        where = tmp_path / f"n{n}"
        where.mkdir()
        shutil.copyfile(migrated_template, where / "bmd.sqlite")
        async with open_context(make_settings(where)) as ctx:
            await add_nodes(ctx, n)
            task: Any = (
                ReportDriverStatus(ctx.driver, ctx.bus, "127.0.0.1", 60.0)
                if loop == "report_driver_status"
                else UpdateAvailableResource(ctx.driver, ctx.sessionmaker, 60.0)
            )
            per_pass = []
            for _ in range(2):  # first pass writes every row, the second only refreshes
                with count_statements(ctx) as seen:
                    await task.run_once()
                per_pass.append(len(data_statements(seen)))
            counts[n] = per_pass
            if loop == "update_available_resource":
                assert len(await compute_rows(ctx)) == n
    assert counts[10] == counts[1000], counts
    assert max(counts[10]) <= 4


async def test_driver_is_built_from_config(ctx: AppContext) -> None:
    assert isinstance(ctx.driver, BareMetalDriver)
    assert ctx.driver.extra_specs["baremetal_driver"] == ctx.settings.driver.baremetal_driver


async def test_set_and_unset_capability_api(client, auth, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    node = await (await client.post("/v1/nodes", json=node_body(1), headers=auth)).json()
    resp = await client.put(f"/v1/nodes/{node['id']}/capabilities/location", json={"value": "rack11"}, headers=auth)
    assert resp.status == 200 and (await resp.json())["extra_specs"] == {"location": "rack11"}
    resp = await client.put(f"/v1/nodes/{node['id']}/capabilities/gpu", json={"value": {"model": "a100"}}, headers=auth)
    assert resp.status == 200
    stats = await ctx.driver.get_host_stats()
    assert stats[0]["location"] == "rack11" and stats[0]["gpu"] == {"model": "a100"}
    for bad_key, field in (("vcpus", "key"), ("a:b", "key")):
        resp = await client.put(f"/v1/nodes/{node['id']}/capabilities/{bad_key}", json={"value": 1}, headers=auth)
        assert resp.status == 400 and (await resp.json())["field"] == field
    resp = await client.put(f"/v1/nodes/{node['id']}/capabilities/x", json={"value": None}, headers=auth)
    assert resp.status == 400
    resp = await client.delete(f"/v1/nodes/{node['id']}/capabilities/location", headers=auth)
    assert resp.status == 200 and (await resp.json())["extra_specs"] == {"gpu": {"model": "a100"}}
    assert (await client.delete(f"/v1/nodes/{node['id']}/capabilities/location", headers=auth)).status == 404


@pytest.mark.postgres
async def test_loops_and_claims_on_postgresql(tmp_path, postgres_url: str) -> None:  # type: ignore[no-untyped-def]
    from bmd.db.engine import make_engine
    from bmd.db.migrate import upgrade
    from bmd.service import open_context

    settings = make_settings(tmp_path, db_url=postgres_url)
    engine = make_engine(settings.database)
    await upgrade(engine)
    await engine.dispose()
    async with open_context(settings) as ctx:
        ids = await add_nodes(ctx, 20)
        await add_nics(ctx, ids)
        task = UpdateAvailableResource(ctx.driver, ctx.sessionmaker, 60.0)
        await task.run_once()
        async with ctx.sessionmaker.begin() as session:
            await session.execute(update(BareMetalNode).where(BareMetalNode.id == ids[0]).values(maintenance=True))
        await task.run_once()
        rows = await compute_rows(ctx)
        assert set(rows) == set(ids) and rows[ids[0]].free_ram_mb == 0 and rows[ids[1]].free_ram_mb == 16384
        assert rows[ids[1]].updated_at.tzinfo is not None
        await ReportDriverStatus(ctx.driver, ctx.bus, "127.0.0.1", 60.0).run_once()
        ctx.scheduler.take_capabilities(ctx.bus.latest(TOPIC))
        from bmd.flavors import Flavor
        from bmd.provision.instances import InstanceRequest, claim_instances
        from bmd.provision.request import DeployRequest
        from bmd.scheduler.host_state import RequestSpec

        flavor = Flavor(id=0, name="f", flavorid="f", memory_mb=16384, vcpus=8, root_gb=200, ephemeral_gb=0, swap=0)
        async with ctx.sessionmaker.begin() as session:
            from bmd.db.models import InstanceType

            session.add(InstanceType(name="f", flavorid="f", memory_mb=16384, vcpus=8, root_gb=200))
        async with ctx.sessionmaker() as session:
            from bmd.db.flavors import get_flavor

            flavor = await get_flavor(session, "f")
        request = InstanceRequest(flavor, RequestSpec(flavor), deploy=DeployRequest("http://x/disk.img"))
        placed = await asyncio.gather(*(claim_instances(ctx.scheduler, request) for _ in range(10)))
        nodes = [p.node_id for batch in placed for p in batch]
        assert len(nodes) == len(set(nodes)) == 10 and ids[0] not in nodes


async def test_boot_mode_is_a_capability_flavors_match(ctx: AppContext) -> None:
    from bmd.filters.compute_capabilities import satisfies_extra_specs

    bios = await add_nodes(ctx, 2)
    uefi = await add_nodes(ctx, 2, boot_mode="uefi")
    stats = {int(s["node"]): s for s in await ctx.driver.get_host_stats(refresh=True)}
    expected = {**dict.fromkeys(bios, "bios"), **dict.fromkeys(uefi, "uefi")}
    assert {n: stats[n]["boot_mode"] for n in bios + uefi} == expected
    wants_uefi = {"capabilities:boot_mode": "uefi"}
    assert [n for n in bios + uefi if satisfies_extra_specs(stats[n], wants_uefi)] == uefi
    assert [n for n in bios + uefi if satisfies_extra_specs(stats[n], {"capabilities:boot_mode": "bios"})] == bios
