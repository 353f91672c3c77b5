"""``update_available_resource``: one ResourceTracker per node; the tracker dict is rebuilt every pass.

As in the seed, a node that left this service loses its tracker and its ``compute_nodes`` row in the same
pass, and a new node gets both. SQL cost per pass is constant: one batched read, one bulk upsert of the
changed rows, one ``updated_at`` refresh, one delete of gone nodes. A node whose resources cannot be
computed keeps its last row and has its error recorded on it (``bmd.tasks.steps``); the others go on.
"""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd.db.compute_nodes import existing_node_ids, write_compute_nodes
from bmd.drivers.baremetal import BareMetalDriver
from bmd.resource_tracker import ResourceTracker
from bmd.tasks.steps import NodeSteps, StepChanges, StepFailureCounter, record_step_errors

log = structlog.get_logger(__name__)


class UpdateAvailableResource:
    name = "update_available_resource"

    def __init__(
        self,
        driver: BareMetalDriver,
        sessionmaker: async_sessionmaker[AsyncSession],
        interval: float,
        failures: StepFailureCounter | None = None,
    ) -> None:
        self.driver = driver
        self.sessionmaker = sessionmaker
        self.interval = interval
        self.trackers: dict[str, ResourceTracker] = {}
        self.steps = NodeSteps(self.name, failures)

    async def run_once(self) -> None:
        self.steps.start()
        failed: set[str] = set()

        def on_error(node_id: int, err: Exception) -> None:
            failed.add(str(node_id))
            self.steps.fail(node_id, err)

        resources = await self.driver.get_available_resources(on_error=on_error)
        new: dict[str, ResourceTracker] = {}
        changed: list[tuple[ResourceTracker, dict[str, object]]] = []
        for nodename, res in resources.items():
            tracker = self.trackers.get(nodename) or ResourceTracker(nodename)
            new[nodename] = tracker
            try:
                row = tracker.update_available_resource(res)
            except Exception as err:  # noqa: BLE001 - one node's fault never ends the pass for the others
                on_error(tracker.node_id, err)
                continue
            if row is not None:
                changed.append((tracker, row))
        for nodename in failed:  # a failing node keeps its tracker and compute_nodes row: it is not gone
            if nodename in self.trackers:
                new.setdefault(nodename, self.trackers[nodename])
        changes = self.steps.finish()
        try:
            try:
                await self._write(changed, changes)
            except IntegrityError:
                # A node was deleted between the read and the write: drop the rows of vanished nodes, retry.
                async with self.sessionmaker() as session:
                    alive = await existing_node_ids(session, self.driver.host)
                changed = [(t, r) for t, r in changed if t.node_id in alive]
                new = {n: t for n, t in new.items() if t.node_id in alive}
                await self._write(changed, changes)
        except BaseException:
            self.steps.unwritten(changes)
            raise
        self.trackers = new

    async def _write(self, changed: list[tuple[ResourceTracker, dict[str, object]]], changes: StepChanges) -> None:
        try:
            async with self.sessionmaker.begin() as session:
                await write_compute_nodes(session, self.driver.host, [row for _, row in changed])
                if changes:
                    await record_step_errors(session, changes)
        except BaseException:
            for tracker, _ in changed:
                tracker.forget()
            raise
        for tracker, row in changed:
            tracker.written(row)
