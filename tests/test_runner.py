"""The periodic runner: timeouts, failures logged on transitions, records for /healthz."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from bmd.tasks.runner import Runner


class Scripted:
    """A loop whose passes follow a script: 'ok', 'fail', or 'hang'."""

    def __init__(self, name: str, script: list[str], interval: float = 0.01) -> None:
        self.name = name
        self.interval = interval
        self.script = list(script)
        self.calls = 0
        self.done = asyncio.Event()
        self.entered = asyncio.Event()

    async def run_once(self) -> None:
        self.calls += 1
        self.entered.set()
        step = self.script.pop(0) if self.script else "ok"
        if not self.script:
            self.done.set()
        if step == "fail":
            raise RuntimeError(f"pass {self.calls} broke")
        if step == "hang":
            await asyncio.Event().wait()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_failures_logged_on_transitions_only() -> None:
    clock = FakeClock()
    runner = Runner(clock=clock, jitter=0)
    task = Scripted("t", ["ok", "fail", "fail", "fail", "ok", "ok"])
    runner.add(task)
    with capture_logs() as logs:
        results = [await runner.run_pass("t") for _ in range(6)]
    assert results == [True, False, False, False, True, True]
    events = [e["event"] for e in logs]
    assert events == ["task_failing", "task_recovered"]
    assert logs[0]["error"] == "RuntimeError: pass 2 broke"
    assert logs[1]["after_failures"] == 3
    rec = runner.records["t"]
    assert rec.failures == 3 and rec.consecutive_failures == 0 and rec.passes == 6
    assert rec.last_error == "RuntimeError: pass 4 broke"
    assert rec.last_success == clock.now and rec.last_duration is not None


async def test_pass_timeout_counts_as_failure() -> None:
    runner = Runner(timeout_factor=1.0, jitter=0)
    runner.add(Scripted("slow", ["hang"], interval=0.05))
    assert await runner.run_pass("slow") is False
    assert "did not finish within 0.05 s" in (runner.records["slow"].last_error or "")
    assert runner.records["slow"].running is False


async def test_loop_survives_exceptions_and_stops_on_event() -> None:
    runner = Runner(jitter=0)
    task = Scripted("t", ["fail", "fail", "ok"], interval=0.001)
    runner.add(task)
    stop = asyncio.Event()
    loop = asyncio.create_task(runner.run(stop))
    async with asyncio.timeout(5):
        await task.done.wait()
    stop.set()
    async with asyncio.timeout(5):
        await loop
    assert task.calls >= 3
    assert runner.records["t"].failures == 2
    assert runner.records["t"].last_success is not None


async def test_cancel_mid_pass_propagates_and_clears_running() -> None:
    runner = Runner(jitter=0)
    hanging = Scripted("h", ["hang"], interval=10)
    runner.add(hanging)
    pass_task = asyncio.create_task(runner.run_pass("h"))
    async with asyncio.timeout(5):
        await hanging.entered.wait()
    assert runner.records["h"].running
    pass_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pass_task
    assert runner.records["h"].running is False


def test_duplicate_names_refused() -> None:
    runner = Runner()
    runner.add(Scripted("x", []))
    with pytest.raises(ValueError, match="already registered"):
        runner.add(Scripted("x", []))
