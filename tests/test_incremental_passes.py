"""Passes proportional to change (issue 15): report_driver_status, update_available_resource and the
scheduler's resync read each node's change key and only the rows that moved, yet what they publish and write
is what a pass over everything would — a change within one pass, a gone node gone within one pass, the full
list to a late subscriber — on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from bmd.context import AppContext
from bmd.db.models import BareMetalNode, ComputeNode, Interface, utcnow
from bmd.scheduler.manager import HostManager, SchedulerRefresh
from bmd.service import open_context
from bmd.tasks.report_driver_status import TOPIC, CapabilityReport, ReportDriverStatus
from bmd.tasks.update_available_resource import UpdateAvailableResource
from tests.conftest import make_settings
from tests.test_capabilities import add_nodes, count_statements, data_statements

pytestmark = pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])


@pytest.fixture
def db_url(engine: str, request: pytest.FixtureRequest) -> str | None:
    return None if engine == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def ictx(db_url: str | None, tmp_path, db_file) -> AsyncIterator[AppContext]:  # type: ignore[no-untyped-def]
    """A context on a fresh SQLite file, or on the session's PostgreSQL database under a host of its own
    (other tests' nodes there are other services')."""
    host = f"incr-{uuid.uuid4().hex[:8]}"
    if db_url is None:
        settings = make_settings(tmp_path, service={"host": host, "state_dir": str(tmp_path / "state")})
    else:
        from bmd.db.engine import make_engine
        from bmd.db.migrate import upgrade

        url = db_url
        settings = make_settings(tmp_path, db_url=url, service={"host": host, "state_dir": str(tmp_path / "state")})
        migrating = make_engine(settings.database)
        await upgrade(migrating)
        await migrating.dispose()
    async with open_context(settings) as context:
        yield context
        # The PostgreSQL database is the session's: leave nothing another test's reads would find.
        async with context.sessionmaker.begin() as session:
            hosts = [host, f"{host}-away"]
            await session.execute(delete(ComputeNode).where(ComputeNode.service_host.in_(hosts)))
            mine = select(BareMetalNode.id).where(BareMetalNode.service_host.in_(hosts))
            await session.execute(delete(Interface).where(Interface.bm_node_id.in_(mine)))
            await session.execute(delete(BareMetalNode).where(BareMetalNode.service_host.in_(hosts)))


def host_of(ctx: AppContext) -> str:
    return ctx.settings.service.host


async def compute_rows(ctx: AppContext) -> dict[int, tuple[Any, ...]]:
    """This host's compute_nodes rows by node id: every column but the row id."""
    columns = [c for c in ComputeNode.__table__.columns if c.name != "id"]
    async with ctx.sessionmaker() as session:
        rows = await session.execute(select(*columns).where(ComputeNode.service_host == host_of(ctx)))
        return {row.bm_node_id: tuple(row) for row in rows}


async def published_by_a_full_pass(ctx: AppContext) -> list[dict[str, Any]]:
    """What a loop that holds nothing (its first pass reads every row) publishes now, on a bus of its own."""
    from bmd.bus import Bus

    bus = Bus()
    await ReportDriverStatus(ctx.driver, bus, "127.0.0.1", 60.0).run_once()
    return sorted(bus.latest(TOPIC), key=lambda s: int(s["node"]))


async def change_everything_once(ctx: AppContext, ids: list[int]) -> dict[str, int]:
    """One of each change a pass must reflect, between two passes; which node took which."""
    (enrolled,) = await add_nodes(ctx, 1, host=host_of(ctx))
    now = utcnow()
    async with ctx.sessionmaker.begin() as session:
        await session.execute(update(BareMetalNode).where(BareMetalNode.id == ids[0]).values(memory_mb=4096))
        await session.execute(update(BareMetalNode).where(BareMetalNode.id == ids[1]).values(maintenance=True))
        await session.execute(delete(BareMetalNode).where(BareMetalNode.id == ids[2]))
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.id == ids[3]).values(service_host=f"{host_of(ctx)}-away")
        )
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.id == ids[4]).values(instance_uuid=str(uuid.uuid4()))
        )
        mac = f"52:54:02:{ids[5] >> 16 & 255:02x}:{ids[5] >> 8 & 255:02x}:{ids[5] & 255:02x}"
        await session.execute(  # a NIC: another table's row, the node's own is untouched
            insert(Interface), [{"bm_node_id": ids[5], "address": mac, "created_at": now, "updated_at": now}]
        )
    return {"enrolled": enrolled, "patched": ids[0], "maintenance": ids[1], "deleted": ids[2], "moved": ids[3]}


async def test_every_change_is_published_within_one_pass(ictx: AppContext) -> None:
    ids = await add_nodes(ictx, 8, host=host_of(ictx))
    report = ReportDriverStatus(ictx.driver, ictx.bus, "127.0.0.1", 60.0)
    await report.run_once()
    which = await change_everything_once(ictx, ids)
    await report.run_once()
    published = ictx.bus.latest(TOPIC)
    assert isinstance(published, CapabilityReport)
    assert sorted(published, key=lambda s: int(s["node"])) == await published_by_a_full_pass(ictx)
    assert sorted(int(s["node"]) for s in published.changed) == sorted(
        [which["enrolled"], which["patched"], which["maintenance"], ids[4], ids[5]]
    )
    assert sorted(published.removed) == sorted([str(which["deleted"]), str(which["moved"])])
    by_node = {int(s["node"]): s for s in published}
    assert by_node[which["patched"]]["host_memory_total"] == 4096 and by_node[which["maintenance"]]["maintenance"]
    assert not by_node[ids[6]]["deploy_ready"] and by_node[ids[5]]["deploy_ready"]  # the NIC counted
    await report.run_once()  # nothing changed since: an empty delta, the same list
    assert ictx.bus.latest(TOPIC) == published and ictx.bus.latest(TOPIC).changed == []


async def test_compute_nodes_follow_every_change_within_one_pass(ictx: AppContext) -> None:
    ids = await add_nodes(ictx, 8, host=host_of(ictx))
    task = UpdateAvailableResource(ictx.driver, ictx.sessionmaker, 60.0)
    await task.run_once()
    which = await change_everything_once(ictx, ids)
    await task.run_once()
    incremental = await compute_rows(ictx)
    assert set(incremental) == set(ids) - {which["deleted"], which["moved"]} | {which["enrolled"]}
    assert set(task.trackers) == {str(i) for i in incremental}
    await UpdateAvailableResource(ictx.driver, ictx.sessionmaker, 60.0).run_once()  # holds nothing: writes all
    rewritten = await compute_rows(ictx)
    strip = {n: row[:-1] for n, row in incremental.items()}  # (updated_at last: when it was written)
    assert strip == {n: row[:-1] for n, row in rewritten.items()}


async def test_a_late_subscriber_and_a_delta_follower_see_the_same_fleet(ictx: AppContext) -> None:
    ids = await add_nodes(ictx, 8, host=host_of(ictx))
    report = ReportDriverStatus(ictx.driver, ictx.bus, "127.0.0.1", 60.0)
    follower = HostManager(ictx.settings, ictx.sessionmaker, ictx.bus, ictx.driver)
    await report.run_once()
    follower.take_report(ictx.bus.latest(TOPIC))
    taken_whole = follower.take_capabilities
    follower.take_capabilities = lambda caps: pytest.fail("a report that follows is taken as its delta")  # type: ignore[method-assign]
    await change_everything_once(ictx, ids)
    await report.run_once()
    follower.take_report(ictx.bus.latest(TOPIC))
    follower.take_capabilities = taken_whole  # type: ignore[method-assign]

    late = ictx.bus.subscribe(TOPIC)  # replayed: the full list, not the last delta
    replayed = late.drain()[0]
    assert sorted(replayed, key=lambda s: int(s["node"])) == await published_by_a_full_pass(ictx)
    newcomer = HostManager(ictx.settings, ictx.sessionmaker, ictx.bus, ictx.driver)
    newcomer.take_report(replayed)
    assert {s.nodename: s.capabilities for s in follower.selector.hosts()} == {
        s.nodename: s.capabilities for s in newcomer.selector.hosts()
    }
    assert len(newcomer.selector) == len(replayed) == 7


async def test_a_report_missed_is_caught_up_from_the_full_list(ictx: AppContext) -> None:
    ids = await add_nodes(ictx, 4, host=host_of(ictx))
    report = ReportDriverStatus(ictx.driver, ictx.bus, "127.0.0.1", 60.0)
    follower = HostManager(ictx.settings, ictx.sessionmaker, ictx.bus, ictx.driver)
    await report.run_once()
    follower.take_report(ictx.bus.latest(TOPIC))
    async with ictx.sessionmaker.begin() as session:
        await session.execute(delete(BareMetalNode).where(BareMetalNode.id == ids[0]))
    await report.run_once()  # the follower misses this one (its queue overflowed, say)
    await report.run_once()  # whose delta is empty
    follower.take_report(ictx.bus.latest(TOPIC))
    assert str(ids[0]) not in follower.selector and len(follower.selector) == 3


async def test_a_steady_pass_reads_and_writes_only_what_changed(ictx: AppContext) -> None:
    ids = await add_nodes(ictx, 60, host=host_of(ictx))
    report = ReportDriverStatus(ictx.driver, ictx.bus, "127.0.0.1", 60.0)
    resources = UpdateAvailableResource(ictx.driver, ictx.sessionmaker, 60.0)
    await report.run_once()
    await resources.run_once()
    assert report.nodes_read == resources.nodes_read == 60
    before = await compute_rows(ictx)

    with count_statements(ictx) as seen:
        await report.run_once()
        await resources.run_once()
    assert report.nodes_read == resources.nodes_read == 0
    assert len(data_statements(seen)) == 2, seen  # each loop's read of the keys, nothing else
    assert await compute_rows(ictx) == before  # no row written, not even its updated_at

    async with ictx.sessionmaker.begin() as session:
        await session.execute(update(BareMetalNode).where(BareMetalNode.id.in_(ids[:2])).values(memory_mb=2048))
    with count_statements(ictx) as seen:
        await report.run_once()
        await resources.run_once()
    assert report.nodes_read == resources.nodes_read == 2
    writes = [s for s in data_statements(seen) if not s.lstrip().upper().startswith("SELECT")]
    assert len(writes) == 1 and writes[0].startswith("INSERT INTO compute_nodes"), writes  # one bulk upsert
    after = await compute_rows(ictx)
    assert {n for n in after if after[n] != before[n]} == set(ids[:2])


async def test_the_scheduler_resync_reads_only_the_views_that_moved(ictx: AppContext) -> None:
    ids = await add_nodes(ictx, 30, host=host_of(ictx))
    refresh = SchedulerRefresh(ictx.scheduler, 60.0)
    await refresh.run_once()

    def view_reads(statements: list[str]) -> list[str]:
        return [s for s in statements if "capability_text" in s]  # read_views' statement

    with count_statements(ictx) as seen:
        await refresh.run_once()
    assert view_reads(seen) == []
    async with ictx.sessionmaker.begin() as session:  # written without an event: only the resync sees it
        await session.execute(update(BareMetalNode).where(BareMetalNode.id == ids[3]).values(maintenance=True))
    with count_statements(ictx) as seen:
        await refresh.run_once()
    assert len(view_reads(seen)) == 1 and " IN " in view_reads(seen)[0].upper()
    held = {v.node_id: v for v in ictx.scheduler.node_views()}
    assert held[ids[3]].maintenance and not held[ids[4]].maintenance
