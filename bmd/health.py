"""Service health: the database probe and each periodic loop's freshness, folded into one status.

``ok``: database answers and every loop succeeded within twice its interval. ``degraded``: some loop is
failing or late. ``failing``: the database does not answer. The probe result is cached for a second so a
monitoring system polling hard never queues work on the database.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text

from bmd.context import AppContext

DB_PROBE_TIMEOUT = 2.0
DB_PROBE_TTL = 1.0
STALE_FACTOR = 2.0


class HealthChecker:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._db: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def _probe_db(self) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(DB_PROBE_TIMEOUT):
                async with self.ctx.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except TimeoutError:
            return {"status": "failing", "error": f"no answer within {DB_PROBE_TIMEOUT:g} s"}
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - any driver error means the same thing here
            return {"status": "failing", "error": type(err).__name__}
        return {"status": "ok", "latency_ms": round((time.perf_counter() - start) * 1000, 2)}

    async def database(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._db is not None and now - self._db[0] < DB_PROBE_TTL:
            return self._db[1]
        async with self._lock:  # concurrent pollers share one probe
            if self._db is None or time.monotonic() - self._db[0] >= DB_PROBE_TTL:
                self._db = (time.monotonic(), await self._probe_db())
            return self._db[1]

    def tasks(self, now: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, rec in self.ctx.runner.records.items():
            since = rec.last_success if rec.last_success is not None else self.ctx.started_at
            late = now - since > STALE_FACTOR * rec.interval + 1.0
            status = "failing" if rec.failing else "late" if late else "ok"
            out[name] = {"status": status, **rec.as_dict(now)}
        return out

    async def report(self) -> dict[str, Any]:
        now = time.time()
        db = await self.database()
        tasks = self.tasks(now)
        if db["status"] != "ok":
            status = "failing"
        elif any(t["status"] != "ok" for t in tasks.values()):
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "service": self.ctx.settings.service.host,
            "uptime_s": round(now - self.ctx.started_at, 3),
            "checks": {"database": db},
            "tasks": tasks,
        }
