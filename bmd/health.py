"""Service health, read from state the loops keep: nothing here awaits the database or anything else.

The database is probed by a periodic loop (:class:`DatabaseProbe`, run by the runner like every other loop,
the probe itself in a worker thread),
so ``/healthz`` answers from memory however loaded the database or the API is.

``ok``: the last database probe succeeded recently and every loop succeeded within twice its interval.
``degraded``: some loop is failing or late, or the DHCP provider (``checks.dhcp``, from the provider's own
status object, e.g. dnsmasq's supervisor) is not serving: bmd still answers its API and running deploys
go on, only new PXE boots get no answer, so it is 200 like a failing loop, not 503.
``failing``: the database probe failed, never succeeded, or has not succeeded for
``STALE_FACTOR * interval + DB_PROBE_TIMEOUT`` seconds (a stuck probe counts as failing).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from bmd.context import AppContext

DB_PROBE = "database_probe"
DB_PROBE_INTERVAL = 2.0
DB_PROBE_TIMEOUT = 2.0
STALE_FACTOR = 2.0


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome, stamped by the probing thread when the database answered (or failed)."""

    at: float
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class DatabaseProbe:
    """``SELECT 1`` every ``interval`` seconds on a fresh connection, in a worker thread: neither a request
    pool saturated by clients nor a busy API loop delays the probe or its verdict. ``last`` is what
    ``/healthz`` reads; a pass fails (and the runner records it) when the probe failed.

    SQLite is probed through the standard library's driver straight from the thread (aiosqlite's own
    thread would report a failed connect to the probe's loop after it closed); PostgreSQL through the
    unpooled async engine on a private event loop."""

    name = DB_PROBE

    def __init__(self, engine: AsyncEngine, interval: float = DB_PROBE_INTERVAL, timeout: float = DB_PROBE_TIMEOUT):
        self.engine = engine
        self.interval = interval
        self.timeout = timeout
        self.last: ProbeResult | None = None
        self.last_ok: ProbeResult | None = None
        self._sqlite: Engine | None = None
        if engine.dialect.name == "sqlite":
            self._sqlite = create_engine(
                engine.url.set(drivername="sqlite"), poolclass=NullPool, connect_args={"timeout": timeout}
            )

    async def _select_one(self) -> None:
        async with asyncio.timeout(self.timeout):
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    def _select_one_sqlite(self, engine: Engine) -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def probe_blocking(self) -> ProbeResult:
        """One probe, blocking (the engines are unpooled: no connection outlives its probe)."""
        start = time.perf_counter()
        try:
            if self._sqlite is not None:
                self._select_one_sqlite(self._sqlite)
            else:
                asyncio.run(self._select_one())
        except TimeoutError:
            result = ProbeResult(time.time(), False, error=f"no answer within {self.timeout:g} s")
        except Exception as err:  # noqa: BLE001 - any driver error means the same thing here
            result = ProbeResult(time.time(), False, error=f"{type(err).__name__}: {err}")
        else:
            result = ProbeResult(time.time(), True, latency_ms=round((time.perf_counter() - start) * 1000, 2))
        self.last = result
        if result.ok:
            self.last_ok = result
        return result

    async def run_once(self) -> None:
        call = asyncio.get_running_loop().run_in_executor(None, self.probe_blocking)
        try:
            result = await asyncio.shield(call)
        except asyncio.CancelledError:
            # A thread cannot be interrupted: let it finish (its probe is bounded by the timeout) so it never
            # hands its result to a loop that has closed meanwhile.
            await asyncio.wait({call}, timeout=self.timeout + 1.0)
            raise
        if not result.ok:
            raise ConnectionError(result.error)


def probe_check(probe: DatabaseProbe | None, now: float) -> dict[str, Any]:
    """The database check from the probe's own record (None: no probe registered)."""
    if probe is None:
        return {"status": "failing", "error": "no database probe is running"}
    last, ok = probe.last, probe.last_ok
    if last is None or ok is None:
        return {"status": "failing", "error": last.error if last else "the database has not been probed yet"}
    if not last.ok:
        return {"status": "failing", "error": last.error, "last_success": ok.at}
    age = now - ok.at
    if age > STALE_FACTOR * probe.interval + probe.timeout:
        return {"status": "failing", "error": f"the last successful probe is {age:.1f} s old"}
    return {"status": "ok", "latency_ms": ok.latency_ms, "last_success_age": round(age, 3)}


class HealthChecker:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def database(self, now: float) -> dict[str, Any]:
        probe = self.ctx.runner.tasks.get(DB_PROBE)
        return probe_check(probe if isinstance(probe, DatabaseProbe) else None, now)

    def tasks(self, now: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, rec in self.ctx.runner.records.items():
            if name == DB_PROBE:
                continue  # reported as checks.database
            since = rec.last_success if rec.last_success is not None else self.ctx.started_at
            late = now - since > STALE_FACTOR * rec.interval + 1.0
            status = "failing" if rec.failing else "late" if late else "ok"
            out[name] = {"status": status, **rec.as_dict(now)}
        return out

    def report(self) -> dict[str, Any]:
        now = time.time()
        db = self.database(now)
        tasks = self.tasks(now)
        dhcp = self.ctx.dhcp.health()
        if db["status"] != "ok":
            status = "failing"
        elif dhcp["status"] != "ok" or any(t["status"] != "ok" for t in tasks.values()):
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "service": self.ctx.settings.service.host,
            "uptime_s": round(now - self.ctx.started_at, 3),
            "checks": {"database": db, "dhcp": dhcp},
            "tasks": tasks,
            **({"lab": self.ctx.extras["lab"]} if "lab" in self.ctx.extras else {}),  # bmd serve --lab N
        }
