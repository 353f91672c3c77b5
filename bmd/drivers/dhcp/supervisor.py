"""A supervised child process: started with the service, restarted with backoff when it exits, stopped at
shutdown. :class:`ProcessStatus` is what ``/healthz`` reads (the watcher task updates it; nothing awaits).

The child runs in its own session (a Ctrl-C on bmd's terminal does not reach it; bmd stops it itself, with
its whole process group) and gets SIGTERM if bmd dies (``PR_SET_PDEATHSIG``). Its stderr is read line by
line, logged, and the last lines are kept for the error a failed start reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from bmd.errors import DriverError

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1
READY_POLL = 0.05


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ProcessStatus:
    running: bool = False
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    last_exit: int | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "pid": self.pid,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "last_exit": self.last_exit,
            "last_error": self.last_error,
        }


class Supervisor:
    """Runs ``argv``; ``is_ready(pid)`` says when a started child is serving (e.g. its pid file is written).

    Backoff: ``backoff`` seconds before the first restart, doubled each time up to ``backoff_max``, back to
    ``backoff`` once a child has run for ``stable_after`` seconds.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        is_ready: Callable[[int], bool],
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        stable_after: float = 60.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.is_ready = is_ready
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.stable_after = stable_after
        self.status = ProcessStatus()
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pending: set[int] = set()  # signals asked for while a child was starting

    # -- public ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the child and wait until it is ready; DriverError (with its stderr) if it exits first or is
        not ready within ``start_timeout``. Then watch it."""
        if self._watcher is not None:
            return
        await self._launch()
        self._watcher = asyncio.create_task(self._watch(), name=f"supervise-{self.name}")

    @property
    def started(self) -> bool:
        """``start`` succeeded and ``stop`` has not been called (the child may be between restarts)."""
        return self._watcher is not None

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self._terminate()

    def send_signal(self, sig: int) -> bool:
        """Signal the child once it is ready (before, a SIGHUP could kill it: its handlers may not be set
        yet); a signal asked for while it starts is sent when it is ready. False when none is ready."""
        proc = self._proc
        if proc is None or proc.returncode is not None or not self.status.running:
            if proc is not None and proc.returncode is None:
                self._pending.add(sig)
            return False
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
            return True
        return False

    # -- internals ---------------------------------------------------------------------------------------

    async def _launch(self) -> None:
        self._stderr.clear()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as err:
            self.status.last_error = f"cannot run {self.argv[0]}: {err}"
            raise DriverError(f"{self.name}: {self.status.last_error}") from err
        self._proc = proc
        self._reader = asyncio.create_task(self._read_stderr(proc), name=f"{self.name}-stderr")
        deadline = time.monotonic() + self.start_timeout
        while not self.is_ready(proc.pid):
            if proc.returncode is not None or time.monotonic() > deadline:
                reason = (
                    f"exited with status {proc.returncode}"
                    if proc.returncode is not None
                    else f"not ready within {self.start_timeout:g} s"
                )
                await self._terminate()
                tail = " | ".join(self._stderr)
                self.status.last_error = f"{reason}: {tail}" if tail else reason
                raise DriverError(f"{self.name} {self.status.last_error}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_POLL):
                    await proc.wait()
        self.status.running, self.status.pid = True, proc.pid
        self.status.started_at = time.time()
        log.info("process_started", process=self.name, pid=proc.pid)
        pending, self._pending = self._pending, set()
        for sig in pending:
            self.send_signal(sig)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                log.warning("process_stderr", process=self.name, line=line)

    async def _watch(self) -> None:
        delay = self.backoff
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._reader is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._reader
            ran = time.time() - (self.status.started_at or time.time())
            if ran >= self.stable_after:
                delay = self.backoff
            self.status.running, self.status.pid, self.status.last_exit = False, None, code
            tail = " | ".join(self._stderr)
            self.status.last_error = f"exited with status {code}" + (f": {tail}" if tail else "")
            log.error("process_exited", process=self.name, pid=proc.pid, status=code, restart_in=delay)
            while True:
                await asyncio.sleep(delay)  # backoff between restarts, not a wait on an event
                delay = min(delay * 2, self.backoff_max)
                self.status.restarts += 1
                try:
                    await self._launch()
                    break
                except DriverError as err:
                    log.error("process_restart_failed", process=self.name, error=str(err), restart_in=delay)

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            # The child leads its own session: its group goes too (helpers it forked would keep its pipes).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.stop_timeout):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            log.info("process_stopped", process=self.name, pid=proc.pid, status=proc.returncode)
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await reader
            reader.cancel()
        self.status.running, self.status.pid = False, None
