"""Service health, read from state the loops keep: nothing here awaits the database or anything else.

The database is probed by a periodic loop (:class:`DatabaseProbe`, run by the runner like every other loop,
the probe itself in a thread of its own),
so ``/healthz`` answers from memory however loaded the database or the API is.

``starting``: recovery and the first capability passes are not done yet (``/readyz`` 503); ``stopping``:
the service is draining. Either gives way to ``failing``.
``ok``: the last database probe succeeded recently and every loop succeeded within twice its interval.
``degraded``: some loop is failing or late, or the DHCP provider (``checks.dhcp``, from the provider's own
status object, e.g. dnsmasq's supervisor) is not serving: bmd still answers its API and running deploys
go on, only new PXE boots get no answer, so it is 200 like a failing loop, not 503.
``failing``: the database probe failed (an error, or no answer within ``DB_PROBE_TIMEOUT``), a probe has
been waiting for its answer longer than that, or the database was never reached once the service is ready.
A last success that is merely old while no probe is waiting is ``late`` (degraded), not failing: it means
the event loop was too busy to start the next probe, which says nothing of the database.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
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
    """``SELECT 1`` every ``interval`` seconds on a fresh connection, in a thread of its own: neither a request
    pool saturated by clients, nor the shared worker threads busy with images, nor a busy event loop (whose
    timers fire late) delays the probe or changes its verdict: the thread times the probe and stamps it.
    ``last`` is what ``/healthz`` reads; a pass fails (and the runner records it) when the probe failed.

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
        self.probing_since: float | None = None  # a probe is waiting for the database since then
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="database-probe")
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
        self.probing_since = time.time()
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
        self.last, self.probing_since = result, None
        if result.ok:
            self.last_ok = result
        return result

    def close(self) -> None:
        """Stop the probe's thread (after the runner's loops: a probe in flight ends within its timeout)."""
        self._thread.shutdown(wait=True)

    async def run_once(self) -> None:
        call = asyncio.get_running_loop().run_in_executor(self._thread, self.probe_blocking)
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
    """The database check from the probe's own record (None: no probe registered). ``pending``: never
    probed yet (failing once the service is ready, see :meth:`HealthChecker.report`)."""
    if probe is None:
        return {"status": "failing", "error": "no database probe is running"}
    last, ok, since = probe.last, probe.last_ok, probe.probing_since
    if since is not None and now - since > probe.timeout + 1.0:
        return {"status": "failing", "error": f"a probe has been waiting {now - since:.1f} s for the database"}
    if last is None:
        return {"status": "pending", "error": "the database has not been probed yet"}
    if not last.ok or ok is None:
        return {"status": "failing", "error": last.error, "last_success": ok.at if ok else None}
    age = now - ok.at
    if age > STALE_FACTOR * probe.interval + probe.timeout:
        return {
            "status": "late",
            "error": f"no probe has run for {age:.1f} s (the event loop is busy)",
            "latency_ms": ok.latency_ms,
            "last_success_age": round(age, 3),
        }
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
            # the loops start once the service is ready: a loop that never ran is late from then on
            start = self.ctx.ready_at if self.ctx.ready_at is not None else now
            since = rec.last_success if rec.last_success is not None else start
            late = now - since > STALE_FACTOR * rec.interval + 1.0
            status = "failing" if rec.failing else "late" if late else "ok"
            out[name] = {"status": status, **rec.as_dict(now)}
        return out

    def report(self) -> dict[str, Any]:
        now = time.time()
        db = self.database(now)
        tasks = self.tasks(now)
        dhcp = self.ctx.dhcp.health()
        ready = self.ctx.ready_at is not None
        if db["status"] == "failing" or (db["status"] == "pending" and ready):
            status = "failing"
        elif not ready:
            status = "starting"
        elif self.ctx.stopping:
            status = "stopping"
        elif db["status"] != "ok" or dhcp["status"] != "ok" or any(t["status"] != "ok" for t in tasks.values()):
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

    def readiness(self) -> dict[str, Any]:
        """``/readyz``: ready only when the summary is ``ok``; otherwise the status and what is not ok."""
        report = self.report()
        checks = {f"checks.{name}": c for name, c in report["checks"].items()}
        tasks = {f"tasks.{name}": t for name, t in report["tasks"].items()}
        not_ok = sorted(name for name, c in {**checks, **tasks}.items() if c["status"] != "ok")
        return {"status": report["status"], "ready": report["status"] == "ok", "not_ok": not_ok}
