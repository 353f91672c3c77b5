"""The supervisor with real child processes (``sh``), no root needed: ready only when the child says so,
restarted with backoff after SIGKILL, a start that fails reports the child's stderr, a child that never
gets ready is killed, a signal asked for while the child starts reaches it once it is ready, stop kills it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from bmd.drivers.dhcp.supervisor import Supervisor
from bmd.errors import DriverError


def child(tmp: Path, delay: float = 0.0) -> list[str]:
    """A shell that records SIGHUPs, then (after ``delay`` s) says it is ready by writing its pid."""
    script = f"""
trap 'echo hup >> {tmp}/hups' HUP
sleep {delay}
echo $$ > {tmp}/ready
while :; do sleep 0.05; done
"""
    return ["sh", "-c", script]


def ready(tmp: Path) -> Callable[[int], bool]:
    def check(pid: int) -> bool:
        try:
            return (tmp / "ready").read_text().strip() == str(pid)
        except OSError:
            return False

    return check


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def poll(check: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if check():
                return
            await asyncio.sleep(0.05)  # polling a child's state with a deadline


async def test_restart_after_kill_and_stop(tmp_path: Path) -> None:
    sup = Supervisor("sh", child(tmp_path), is_ready=ready(tmp_path), backoff=0.1, backoff_max=0.2)
    await sup.start()
    try:
        first = sup.status.pid
        assert sup.status.running and first is not None and sup.status.restarts == 0
        os.kill(first, signal.SIGKILL)
        await poll(lambda: sup.status.running and sup.status.pid not in (None, first))
        assert sup.status.restarts == 1 and sup.status.last_exit == -9
        assert "exited with status -9" in (sup.status.last_error or "")
        second = sup.status.pid
        assert second is not None
    finally:
        await sup.stop()
    assert not sup.status.running and sup.status.pid is None
    assert not alive(second)


async def test_a_child_that_exits_at_start_reports_its_stderr(tmp_path: Path) -> None:
    sup = Supervisor("sh", ["sh", "-c", "echo 'dnsmasq: unknown interface br9' >&2; exit 2"], is_ready=lambda _: False)
    with pytest.raises(DriverError, match=r"exited with status 2: dnsmasq: unknown interface br9"):
        await sup.start()
    assert not sup.status.running
    await sup.stop()  # nothing to stop: fine


async def test_a_child_never_ready_is_killed(tmp_path: Path) -> None:
    sup = Supervisor("sh", child(tmp_path, delay=60), is_ready=ready(tmp_path), start_timeout=0.5)
    with pytest.raises(DriverError, match=r"not ready within 0.5 s"):
        await sup.start()
    await sup.stop()
    assert not sup.status.running


async def test_a_signal_while_starting_waits_for_ready(tmp_path: Path) -> None:
    sup = Supervisor("sh", child(tmp_path, delay=0.5), is_ready=ready(tmp_path))
    start = asyncio.create_task(sup.start())
    try:
        await poll(lambda: sup._proc is not None)
        assert sup.send_signal(signal.SIGHUP) is False  # not ready: kept for later, not sent (it could kill it)
        await start
        await poll(lambda: "hup" in read(tmp_path / "hups"))
        assert sup.status.running and alive(sup.status.pid or 0)
        assert sup.send_signal(signal.SIGHUP) is True
        await poll(lambda: read(tmp_path / "hups").count("hup") == 2)
    finally:
        await sup.stop()
