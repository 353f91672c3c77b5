"""``update_available_resource``: one ResourceTracker per node, kept from pass to pass.

As in the seed, a node that left this service loses its tracker and its ``compute_nodes`` row in the same
pass, and a new node gets both. A pass costs what changed: it reads every node's change key (its row's
``version``: ``BareMetalDriver.resource_keys``), then the resources of the nodes whose key moved (one
statement per 500), writes the rows that changed in one bulk upsert and deletes the rows of gone nodes; an
unchanged fleet costs the one read of the keys. The first pass reads every row (with its key) in one
statement and cleans up the rows this host left behind (nodes moved away while it was down). A node whose
resources cannot be computed keeps its last row, has its error recorded on it (``bmd.tasks.steps``) and
is read again next pass; the others go on.
"""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd.db.compute_nodes import existing_node_ids, write_compute_nodes
from bmd.drivers.baremetal import BareMetalDriver
from bmd.gcpause import collector_paused
from bmd.resource_tracker import ResourceTracker
from bmd.tasks.steps import NodeSteps, StepChanges, StepFailureCounter, record_step_errors

log = structlog.get_logger(__name__)

# A pass that finds more nodes changed than this share of its trackers reads every row in one statement
# rather than in 500-id batches.
_FULL_READ_SHARE = 0.25


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
        self._passed = False  # a pass has completed: the next one reads only what changed
        # node id -> the change key (bmd.drivers.baremetal.change_key) its tracker last took in; a node
        # absent is read again next pass
        self._keys: dict[int, int] = {}
        self.nodes_read = 0  # nodes whose resources the last pass read (beyond the keys)
        self.steps = NodeSteps(self.name, failures)

    async def run_once(self) -> None:
        self.steps.start()
        failed: set[int] = set()

        def on_error(node_id: int, err: Exception) -> None:
            failed.add(node_id)
            self.steps.fail(node_id, err)

        first = not self._passed
        trackers = self.trackers
        async with self.sessionmaker() as session:
            if first:
                keys, resources = await self.driver.resources_for(session, None, on_error)
                wanted: list[int] = list(keys)
            else:
                keys = await self.driver.resource_keys(session)
                with collector_paused():
                    wanted = sorted(node_id for node_id, _ in keys.items() - self._keys.items())  # new or moved
                full = len(wanted) > _FULL_READ_SHARE * len(self._keys)
                _, resources = await self.driver.resources_for(session, None if full else wanted, on_error)
        self.nodes_read = len(resources)
        added: dict[str, ResourceTracker] = {}
        gone: set[str] = set()
        changed: list[tuple[ResourceTracker, dict[str, object], int]] = []
        for node_id in wanted:
            nodename = str(node_id)
            tracker = trackers.get(nodename) or added.get(nodename)
            res = resources.get(node_id)
            if res is None:
                self._keys.pop(node_id, None)  # read again next pass
                if node_id not in failed:  # deleted or moved away since the keys were read
                    gone.add(nodename)
                continue  # a failing node keeps its tracker and compute_nodes row: it is not gone
            if tracker is None:
                tracker = added[nodename] = ResourceTracker(nodename)
            try:
                row = tracker.update_available_resource(res)
            except Exception as err:  # noqa: BLE001 - one node's fault never ends the pass for the others
                on_error(node_id, err)
                self._keys.pop(node_id, None)
                continue
            if row is None:
                self._keys[node_id] = keys[node_id]
            else:
                changed.append((tracker, row, keys[node_id]))
        if not first:
            gone |= {str(node_id) for node_id in self._keys.keys() - keys.keys()}
        changes = self.steps.finish()
        try:
            try:
                await self._write(changed, None if first else gone, changes)
            except IntegrityError:
                # A node was deleted between the read and the write: drop the rows of vanished nodes, retry.
                async with self.sessionmaker() as session:
                    alive = await existing_node_ids(session, self.driver.host)
                gone |= {t.nodename for t, _, _ in changed if t.node_id not in alive}
                changed = [c for c in changed if c[0].node_id in alive]
                await self._write(changed, None if first else gone, changes)
        except BaseException:
            self.steps.unwritten(changes)
            raise
        trackers.update(added)
        for nodename in gone:
            trackers.pop(nodename, None)
            self._keys.pop(int(nodename), None)
        self._passed = True

    async def _write(
        self,
        changed: list[tuple[ResourceTracker, dict[str, object], int]],
        gone: set[str] | None,
        changes: StepChanges,
    ) -> None:
        gone_ids = None if gone is None else {int(nodename) for nodename in gone}
        try:
            async with self.sessionmaker.begin() as session:
                await write_compute_nodes(session, self.driver.host, [row for _, row, _ in changed], gone_ids)
                if changes:
                    await record_step_errors(session, changes)
        except BaseException:
            for tracker, _, _ in changed:
                tracker.forget()
                self._keys.pop(tracker.node_id, None)
            raise
        for tracker, row, key in changed:
            tracker.written(row)
            self._keys[tracker.node_id] = key
