"""The periodic runner: owns timing, jitter, a per-pass timeout and the record /healthz reads.

A loop is any object with ``name``, ``interval`` and ``async run_once()``. A failing pass is logged on the
transition (ok → failing: error; failing → ok: ``task_recovered``), not on every pass, and the loop goes on.
Every pass's duration also goes into ``pass_duration`` (``bmd_task_pass_duration_seconds`` on /metrics).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
from prometheus_client import Histogram

from bmd.metrics import LOOP_BUCKETS

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


class PeriodicTask(Protocol):
    name: str
    interval: float

    async def run_once(self) -> None: ...


@dataclass
class TaskRecord:
    """What the runner knows about one loop. Times are ``time.time()`` seconds (None: never)."""

    name: str
    interval: float
    last_start: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_duration: float | None = None
    passes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    running: bool = False

    @property
    def failing(self) -> bool:
        return self.consecutive_failures > 0

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "interval": self.interval,
            "last_start": self.last_start,
            "last_success": self.last_success,
            "last_success_age": None if self.last_success is None else round(now - self.last_success, 3),
            "last_error": self.last_error,
            "last_duration": self.last_duration,
            "passes": self.passes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "running": self.running,
        }


class Runner:
    """Runs every registered loop until ``stop`` is set; tasks are created and awaited here only."""

    def __init__(
        self,
        *,
        timeout_factor: float = 2.0,
        jitter: float = 0.1,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.timeout_factor = timeout_factor
        self.jitter = jitter
        self.clock = clock
        self._rng = rng or random.Random()
        self._tasks: dict[str, PeriodicTask] = {}
        self.records: dict[str, TaskRecord] = {}
        self.pass_duration = Histogram(
            "bmd_task_pass_duration_seconds",
            "Duration of each periodic loop's passes, failed and timed-out ones included.",
            ["task"],
            buckets=LOOP_BUCKETS,
            registry=None,
        )

    @property
    def tasks(self) -> dict[str, PeriodicTask]:
        """The registered loops by name (read-only use: /healthz reads the state some of them keep)."""
        return dict(self._tasks)

    def add(self, task: PeriodicTask) -> None:
        if task.name in self._tasks:
            raise ValueError(f"a periodic task named {task.name!r} is already registered")
        self._tasks[task.name] = task
        self.records[task.name] = TaskRecord(task.name, task.interval)
        self.pass_duration.labels(task=task.name)  # the loop's series exists before its first pass ends

    async def run_pass(self, name: str) -> bool:
        """Run one pass of one loop now, with the timeout and bookkeeping. True when it succeeded."""
        task = self._tasks[name]
        rec = self.records[name]
        timeout = task.interval * self.timeout_factor
        started = self.clock()
        mono = time.perf_counter()
        rec.last_start, rec.running = started, True
        error: str | None = None
        exc: BaseException | None = None
        try:
            with structlog.contextvars.bound_contextvars(task=name):
                async with asyncio.timeout(timeout):
                    await task.run_once()
        except TimeoutError:
            error = f"pass did not finish within {timeout:g} s"
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a pass may fail any way; the loop goes on
            error, exc = f"{type(err).__name__}: {err}", err
        finally:
            rec.running = False
            took = time.perf_counter() - mono
            rec.last_duration = round(took, 6)
            self.pass_duration.labels(task=name).observe(took)
            rec.passes += 1
        if error is None:
            if rec.failing:
                log.info("task_recovered", task=name, after_failures=rec.consecutive_failures)
            rec.last_success, rec.consecutive_failures = self.clock(), 0
            return True
        rec.failures += 1
        rec.consecutive_failures += 1
        rec.last_error, rec.last_error_at = error, self.clock()
        if rec.consecutive_failures == 1:
            log.error("task_failing", task=name, error=error, exc_info=exc)
        return False

    def _delay(self, interval: float) -> float:
        return interval * (1 + self._rng.uniform(-self.jitter, self.jitter)) if self.jitter else interval

    async def _loop(self, name: str, stop: asyncio.Event) -> None:
        task = self._tasks[name]
        # Spread the first passes so loops that share an interval do not all fire at once.
        delay = self._rng.uniform(0, min(task.interval, 1.0) * self.jitter) if self.jitter else 0.0
        while not stop.is_set():
            try:
                async with asyncio.timeout(delay):
                    await stop.wait()
                return
            except TimeoutError:
                pass
            mono = time.perf_counter()
            await self.run_pass(name)
            delay = max(0.0, self._delay(task.interval) - (time.perf_counter() - mono))

    async def run(self, stop: asyncio.Event) -> None:
        """Run all loops until ``stop`` is set; in-flight passes are cancelled and awaited on exit."""
        async with asyncio.TaskGroup() as group:
            for name in self._tasks:
                group.create_task(self._loop(name, stop), name=f"periodic:{name}")
