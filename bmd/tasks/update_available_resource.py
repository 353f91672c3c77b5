"""``update_available_resource``: one ResourceTracker per node; the tracker dict is rebuilt every pass.

As in the seed, a node that left this service loses its tracker and its ``compute_nodes`` row in the same
pass, and a new node gets both. SQL cost per pass is constant: one batched read, one bulk upsert of the
changed rows, one ``updated_at`` refresh, one delete of gone nodes.
"""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd.db.compute_nodes import existing_node_ids, write_compute_nodes
from bmd.drivers.baremetal import BareMetalDriver
from bmd.resource_tracker import ResourceTracker

log = structlog.get_logger(__name__)


class UpdateAvailableResource:
    name = "update_available_resource"

    def __init__(
        self, driver: BareMetalDriver, sessionmaker: async_sessionmaker[AsyncSession], interval: float
    ) -> None:
        self.driver = driver
        self.sessionmaker = sessionmaker
        self.interval = interval
        self.trackers: dict[str, ResourceTracker] = {}

    async def run_once(self) -> None:
        resources = await self.driver.get_available_resources()
        new: dict[str, ResourceTracker] = {}
        changed: list[tuple[ResourceTracker, dict[str, object]]] = []
        for nodename, res in resources.items():
            tracker = self.trackers.get(nodename) or ResourceTracker(nodename)
            new[nodename] = tracker
            row = tracker.update_available_resource(res)
            if row is not None:
                changed.append((tracker, row))
        try:
            await self._write(changed)
        except IntegrityError:
            # A node was deleted between the read and the write: drop the rows of vanished nodes and retry.
            async with self.sessionmaker() as session:
                alive = await existing_node_ids(session, self.driver.host)
            changed = [(t, r) for t, r in changed if t.node_id in alive]
            new = {n: t for n, t in new.items() if t.node_id in alive}
            await self._write(changed)
        self.trackers = new

    async def _write(self, changed: list[tuple[ResourceTracker, dict[str, object]]]) -> None:
        try:
            async with self.sessionmaker.begin() as session:
                await write_compute_nodes(session, self.driver.host, [row for _, row in changed])
        except BaseException:
            for tracker, _ in changed:
                tracker.forget()
            raise
        for tracker, row in changed:
            tracker.written(row)
