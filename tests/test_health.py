"""/healthz: database probe (a loop; /healthz reads its record), task freshness and failures, status codes,
no secrets."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bmd.api.app import create_app
from bmd.config import DatabaseSettings
from bmd.context import AppContext
from bmd.db.engine import make_engine
from bmd.health import DB_PROBE, STALE_FACTOR, DatabaseProbe, probe_check
from bmd.tasks.runner import Runner


class Flaky:
    name = "flaky"
    interval = 60.0

    def __init__(self) -> None:
        self.fail = True
        self.succeeded = asyncio.Event()

    async def run_once(self) -> None:
        if self.fail:
            raise ConnectionError("bmc went away")
        self.succeeded.set()


async def test_ok_after_every_task_succeeded(client, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    for name in ctx.runner.records:
        assert await ctx.runner.run_pass(name)
    resp = await client.get("/healthz")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "ok", body
    assert body["checks"]["database"]["status"] == "ok"
    assert set(body["tasks"]) == {
        "service_heartbeat",
        "report_driver_status",
        "update_available_resource",
        "sync_power_states",
        "check_deploy_timeouts",
        "scheduler_refresh",
    }
    text = await resp.text()
    assert ctx.api_token not in text


async def test_failing_task_degrades_and_loop_recovers(client, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    flaky = Flaky()
    ctx.runner.add(flaky)
    for name in ctx.runner.records:
        await ctx.runner.run_pass(name)
    body = await (await client.get("/healthz")).json()
    assert body["status"] == "degraded"
    assert body["tasks"]["flaky"]["status"] == "failing"
    assert body["tasks"]["flaky"]["last_error"] == "ConnectionError: bmc went away"
    # the real loop keeps running passes after the failure, and health comes back
    flaky.fail = False
    stop = asyncio.Event()
    ctx.runner.records["flaky"].interval = flaky.interval = 0.001
    loop = asyncio.create_task(ctx.runner.run(stop))
    try:
        async with asyncio.timeout(10):
            await flaky.succeeded.wait()
    finally:
        stop.set()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    body = await (await client.get("/healthz")).json()
    assert body["tasks"]["flaky"]["status"] == "ok"


async def test_never_run_task_becomes_late(client, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    assert ctx.ready_at is not None
    ctx.ready_at -= 10_000  # the loops started long ago
    assert await ctx.runner.run_pass(DB_PROBE)  # the database is fine; only the other loops never ran
    body = await (await client.get("/healthz")).json()
    assert body["status"] == "degraded"
    assert {t["status"] for t in body["tasks"].values()} == {"late"}


async def test_database_down_is_503(ctx: AppContext, tmp_path: Any) -> None:
    where = tmp_path / "x" / "db.sqlite"
    broken = make_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{where}"), pooled=False)  # as the service probes
    where.mkdir()  # a directory where the database file should be: it cannot be opened
    bad_ctx = dataclasses.replace(ctx, engine=broken, runner=Runner())
    bad_ctx.runner.add(DatabaseProbe(broken))
    try:
        assert not await bad_ctx.runner.run_pass(DB_PROBE)
        async with TestClient(TestServer(create_app(bad_ctx), host="127.0.0.1", port=0)) as c:
            resp = await c.get("/healthz")
            body = await resp.json()
    finally:
        await broken.dispose()
    assert resp.status == 503 and body["status"] == "failing"
    assert body["checks"]["database"]["status"] == "failing"


async def test_concurrent_pollers_share_one_probe(client, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    assert await ctx.runner.run_pass(DB_PROBE)
    statuses = await asyncio.gather(*(client.get("/healthz") for _ in range(50)))
    assert {r.status for r in statuses} <= {200}


async def test_metrics_in_prometheus_text(client, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    await ctx.runner.run_pass("report_driver_status")
    resp = await client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert 'bmd_task_passes_total{task="report_driver_status"} 1' in text
    assert "# TYPE bmd_claims_total counter" in text and "bmd_claims_total 0" in text
    assert ctx.api_token not in text


async def test_stale_probe_is_late_and_a_stuck_one_failing(ctx: AppContext) -> None:
    """/healthz never probes itself. A last success that ages while no probe waits means the event loop did
    not start the next one (a long pass holding it): late, not a database failure. A probe that has waited
    longer than its timeout for the database is failing."""
    probe = ctx.runner.tasks[DB_PROBE]
    assert isinstance(probe, DatabaseProbe)
    assert await ctx.runner.run_pass(DB_PROBE)
    assert probe.last_ok is not None and probe.probing_since is None
    fresh = probe_check(probe, probe.last_ok.at + probe.interval)
    assert fresh["status"] == "ok" and fresh["latency_ms"] is not None
    later = probe.last_ok.at + STALE_FACTOR * probe.interval + probe.timeout + 1
    stale = probe_check(probe, later)
    assert stale["status"] == "late" and "event loop" in stale["error"]
    probe.probing_since = later - probe.timeout - 2  # a probe sent then has had no answer
    stuck = probe_check(probe, later)
    assert stuck["status"] == "failing" and "waiting" in stuck["error"]


async def test_starting_until_ready(client, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    """Before the service is ready: /livez 200, /readyz 503 and /healthz ``starting`` (a database not yet
    probed is no failure then); once ready and every check ok, 200 everywhere; stopping, /readyz 503."""
    ctx.ready_at = None
    resp = await client.get("/healthz")
    assert resp.status == 503 and (await resp.json())["status"] == "starting"
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body == {"status": "starting", "ready": False, "not_ok": ["checks.database"]}
    assert (await client.get("/livez")).status == 200
    for name in ctx.runner.records:
        assert await ctx.runner.run_pass(name)
    assert (await client.get("/readyz")).status == 503  # passes done, but not yet declared ready
    ctx.mark_ready()
    resp = await client.get("/readyz")
    assert resp.status == 200 and await resp.json() == {"status": "ok", "ready": True, "not_ok": []}
    ctx.mark_stopping()
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["status"] == "stopping"
    resp = await client.get("/livez")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_readyz_503_while_degraded_naming_the_loop(client, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    for name in ctx.runner.records:
        assert await ctx.runner.run_pass(name)
    ctx.runner.add(Flaky())
    assert not await ctx.runner.run_pass("flaky")
    resp = await client.get("/readyz")
    assert resp.status == 503 and await resp.json() == {"status": "degraded", "ready": False, "not_ok": ["tasks.flaky"]}
    assert (await client.get("/healthz")).status == 200  # degraded is still 200 on the summary


async def test_ready_database_never_probed_is_failing(client, ctx: AppContext) -> None:  # type: ignore[no-untyped-def]
    resp = await client.get("/healthz")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "failing"
    assert body["checks"]["database"]["status"] == "pending"
