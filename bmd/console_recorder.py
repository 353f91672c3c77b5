"""Recording a node's serial console while it deploys, cleans or is inspected, into its console log
(:mod:`bmd.console_log`).

The conductor starts a recording when it powers the node on for the ramdisk (:meth:`ConsoleRecorder.start`,
with the boot's purpose); the recording ends ``console.grace`` seconds after the node leaves that boot's
states (:data:`PURPOSE_STATES`) — a deploy: ``active``, ``error``, back to ``available``, ``deleting`` or
deleted, so the first lines of the deployed image's boot are kept too; a clean or an inspection: any state
but ``cleaning`` (``inspecting``). The recorder learns that from the bus topic ``nodes`` (every write of
``bm_nodes`` is published there, see :mod:`bmd.node_events`), with no query of its own; a recording also
never outlives its boot's timeout (``deploy.deploy_timeout``, ``deploy.clean_timeout``,
``inspection.timeout``) plus ``console.grace`` plus a margin, whatever it missed.

A recording writes a header line (time, instance uuid) to the node's log, which keeps the older content
above it (the log is bounded by :class:`~bmd.console_log.ConsoleLogs`), then reads the node's console
through its console interface (:meth:`~bmd.drivers.base.ConsoleInterface.connect`) and appends what it
reads:

- nothing listening, or the connection refused or timing out: retried with a doubling backoff (from
  0.2 s up to ``console.retry_max``) for as long as the recording lasts;
- the peer closing (the machine powered off or restarted): reconnected the same way;
- a peer that floods: read at most ``console.read_rate`` bytes a second (the rest waits in the kernel's
  socket buffers, so the peer is slowed down, not bmd); the log stays within its size cap;
- a peer that accepts and says nothing: the recording waits on it alone and ends on time;
- bmd stopping: :meth:`ConsoleRecorder.close` cancels every recording and awaits it.

Each recording is one task owned by the recorder, the bus watcher another; nothing else waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from bmd.bus import Bus
from bmd.config import Settings
from bmd.console_log import ConsoleLogs
from bmd.drivers.base import ConsoleInterface, NodeFacts
from bmd.node_events import TOPIC, NodeView

log = structlog.get_logger(__name__)

Purpose = Literal["deploy", "clean", "inspect"]
# The states a node is in while the boot of each purpose lasts.
PURPOSE_STATES: dict[str, frozenset[str]] = {
    "deploy": frozenset({"deploying", "wait_callback"}),
    "clean": frozenset({"cleaning"}),
    "inspect": frozenset({"inspecting"}),
}
FIRST_RETRY = 0.2
CHUNK = 16384
LIFETIME_MARGIN = 600.0  # the finish (disk boot, reboot) after the callback, beyond deploy_timeout


@dataclass(eq=False)
class Recording:
    """One node's recording: its task, the timeout that ends it, what it has done (for tests and logs)."""

    node_id: int
    node_uuid: str
    instance_uuid: str | None  # the instance deployed; None for a clean or an inspection
    endpoint: str
    version: int  # the node row's version when the deploy was loaded: older views do not end it
    purpose: Purpose = "deploy"
    task: asyncio.Task[None] | None = None
    timeout: asyncio.Timeout | None = None
    end_at: float | None = None  # loop time the recording stops at, once the deploy ended
    connections: int = 0
    bytes_read: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ConsoleRecorder:
    """Every running console recording, at most one per node."""

    def __init__(self, logs: ConsoleLogs, console: ConsoleInterface, bus: Bus, settings: Settings) -> None:
        self.logs = logs
        self.console = console
        self.bus = bus
        self.grace = settings.console.grace
        self.read_rate = settings.console.read_rate
        self.retry_max = settings.console.retry_max
        extra = settings.console.grace + LIFETIME_MARGIN
        self.lifetimes: dict[str, float] = {
            "deploy": settings.deploy.deploy_timeout + extra,
            "clean": settings.deploy.clean_timeout + extra,
            "inspect": settings.inspection.timeout + extra,
        }
        self.recordings: dict[int, Recording] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False

    # -- the conductor's verbs ----------------------------------------------------------------------------

    def start(
        self,
        node: NodeFacts,
        node_uuid: str,
        instance_uuid: str | None,
        version: int = 0,
        purpose: Purpose = "deploy",
    ) -> Recording | None:
        """Record the node's console for the deploy of ``instance_uuid`` (or its clean, its inspection: no
        instance); a recording of an earlier boot of the node is stopped. None when the node has no console
        to read (or bmd is stopping)."""
        endpoint = self.console.endpoint(node)
        if endpoint is None or self._closing:
            return None
        self.stop(node.id)
        rec = Recording(node.id, node_uuid, instance_uuid, endpoint, version, purpose)
        rec.task = asyncio.create_task(self._record(rec, node), name=f"console:{node.id}")
        self.recordings[node.id] = rec
        rec.task.add_done_callback(lambda _: self._forget(rec))
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="console-watcher")
        log.info("console_recording_started", node=node.id, endpoint=endpoint, instance=instance_uuid, purpose=purpose)
        return rec

    def end(self, node_id: int, grace: float | None = None) -> None:
        """The node's deploy is over: read on for ``grace`` seconds (``console.grace``), then stop."""
        rec = self.recordings.get(node_id)
        if rec is None:
            return
        when = asyncio.get_running_loop().time() + (self.grace if grace is None else grace)
        rec.end_at = when if rec.end_at is None else min(rec.end_at, when)
        if rec.timeout is not None:
            rec.timeout.reschedule(rec.end_at)

    def stop(self, node_id: int) -> None:
        """Stop the node's recording now (its task ends at its next await)."""
        rec = self.recordings.pop(node_id, None)
        if rec is not None and rec.task is not None:
            rec.task.cancel()

    async def close(self) -> None:
        """Cancel every recording and the watcher, and await them."""
        self._closing = True
        tasks = [r.task for r in self.recordings.values() if r.task is not None]
        if self._watcher is not None:
            tasks.append(self._watcher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.recordings.clear()

    def _forget(self, rec: Recording) -> None:
        if self.recordings.get(rec.node_id) is rec:
            del self.recordings[rec.node_id]
        rec.done.set()

    # -- when a deploy ends: the bus topic "nodes" -------------------------------------------------------

    def observe(self, views: Any) -> None:
        """End the recordings of nodes a batch of views shows out of their deploy."""
        for view in views if isinstance(views, list) else ():
            if not isinstance(view, NodeView):
                continue
            rec = self.recordings.get(view.node_id)
            if rec is None or view.version <= rec.version:
                continue
            ongoing = PURPOSE_STATES[rec.purpose]
            if view.deleted or view.provision_state not in ongoing or view.instance_uuid != rec.instance_uuid:
                self.end(view.node_id)

    async def _watch(self) -> None:
        sub = self.bus.subscribe(TOPIC, replay=False, queue_size=256)
        try:
            async for views in sub:
                self.observe(views)
        finally:
            sub.close()

    # -- one recording ------------------------------------------------------------------------------------

    async def _record(self, rec: Recording, node: NodeFacts) -> None:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        what = {"deploy": f"deploy of instance {rec.instance_uuid}", "clean": "clean", "inspect": "inspection"}
        header = f"\n===== bmd: {what[rec.purpose]} on node {rec.node_uuid}, {stamp} =====\n"
        with structlog.contextvars.bound_contextvars(node=rec.node_id):
            try:
                async with asyncio.timeout(self.lifetimes[rec.purpose]) as rec.timeout:
                    if rec.end_at is not None:  # ended before this task first ran
                        rec.timeout.reschedule(rec.end_at)
                    await self.logs.aappend(rec.node_uuid, header)
                    await self._read_until_cancelled(rec, node)
            except TimeoutError:
                pass  # the deploy ended (and its grace passed), or the lifetime did
            except Exception as err:  # noqa: BLE001 - a recording's failure is its own (the log file, say)
                log.warning("console_recording_failed", error=str(err))
            log.info("console_recording_ended", connections=rec.connections, bytes=rec.bytes_read)

    async def _read_until_cancelled(self, rec: Recording, node: NodeFacts) -> None:
        backoff = FIRST_RETRY
        loop = asyncio.get_running_loop()
        while True:
            try:
                reader, writer = await self.console.connect(node)
            except (OSError, TimeoutError) as err:
                log.debug("console_connect_failed", endpoint=rec.endpoint, error=str(err) or type(err).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.retry_max)
                continue
            rec.connections += 1
            started = loop.time()
            try:
                await self._copy(rec, reader)
            except OSError as err:
                log.debug("console_read_failed", endpoint=rec.endpoint, error=str(err))
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()
            # a peer that closes at once is not reconnected to in a tight loop
            backoff = FIRST_RETRY if loop.time() - started > self.retry_max else min(backoff * 2, self.retry_max)
            await asyncio.sleep(backoff)

    async def _copy(self, rec: Recording, reader: asyncio.StreamReader) -> None:
        """Append what the peer sends until it closes, at most ``read_rate`` bytes a second."""
        loop = asyncio.get_running_loop()
        window_start, window_bytes = loop.time(), 0
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                return
            rec.bytes_read += len(chunk)
            await self.logs.aappend(rec.node_uuid, chunk)
            window_bytes += len(chunk)
            ahead = window_bytes / self.read_rate - (loop.time() - window_start)
            if ahead > 0:
                await asyncio.sleep(ahead)  # the peer waits in its socket buffer meanwhile
            if loop.time() - window_start > 10.0:
                window_start, window_bytes = loop.time(), 0
