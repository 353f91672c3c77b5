"""Service health, read from state the loops keep: nothing here awaits the database or anything else.

The database is probed by a periodic loop (:class:`DatabaseProbe`, run by the runner like every other loop),
so ``/healthz`` answers from memory however loaded the database or the API is.

``ok``: the last database probe succeeded recently and every loop succeeded within twice its interval.
``degraded``: some loop is failing or late. ``failing``: the database probe failed, never succeeded, or has
not succeeded for ``STALE_FACTOR * interval + DB_PROBE_TIMEOUT`` seconds (a stuck probe counts as failing).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bmd.context import AppContext
from bmd.tasks.runner import TaskRecord

DB_PROBE = "database_probe"
DB_PROBE_INTERVAL = 2.0
DB_PROBE_TIMEOUT = 2.0
STALE_FACTOR = 2.0


class DatabaseProbe:
    """``SELECT 1`` on its own connection every ``interval`` seconds; a pass fails when the database does not
    answer within ``timeout``. The runner's record of this loop is the database check of ``/healthz``."""

    name = DB_PROBE

    def __init__(self, engine: AsyncEngine, interval: float = DB_PROBE_INTERVAL, timeout: float = DB_PROBE_TIMEOUT):
        self.engine = engine
        self.interval = interval
        self.timeout = timeout

    async def run_once(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except TimeoutError as err:
            raise TimeoutError(f"no answer within {self.timeout:g} s") from err


def database_check(rec: TaskRecord | None, now: float) -> dict[str, Any]:
    """The database check from the probe loop's record (None: no probe registered)."""
    if rec is None:
        return {"status": "failing", "error": "no database probe is running"}
    if rec.failing:
        return {"status": "failing", "error": rec.last_error, "last_success": rec.last_success}
    if rec.last_success is None:
        return {"status": "failing", "error": "the database has not been probed yet"}
    age = now - rec.last_success
    if age > STALE_FACTOR * rec.interval + DB_PROBE_TIMEOUT:
        return {"status": "failing", "error": f"the last successful probe is {age:.1f} s old"}
    latency = None if rec.last_duration is None else round(rec.last_duration * 1000, 2)
    return {"status": "ok", "latency_ms": latency, "last_success_age": round(age, 3)}


class HealthChecker:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def database(self, now: float) -> dict[str, Any]:
        return database_check(self.ctx.runner.records.get(DB_PROBE), now)

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
