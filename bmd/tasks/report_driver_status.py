"""``report_driver_status``: publish every node's capabilities on the bus, every ``host_state_interval``.

What is published on ``capabilities`` is a :class:`CapabilityReport`: the full list (a ``list``, what a
late subscriber gets from the bus's replay and ``bus.latest``, as in the seed), and the delta since the
previous report of the same publisher (``changed`` dicts, ``removed`` nodenames), which a subscriber that
took that previous report applies instead of the whole list.

A pass costs what changed, not what exists: it reads every in-scope node's change key (the row's
``version``, which every write of the row bumps, and its NIC count: ``BareMetalDriver.host_stats_keys``),
and builds the capability dicts of the nodes whose key differs from the one it holds, in one batched read;
the others keep the dict built when their key was last seen. A node whose key is gone from the scan (deleted,
moved to another service) leaves the list in that pass. The first pass reads every row with its key in one
statement. The full list is a new ``list`` of the held dicts (references, not copies), so an earlier report
keeps the list it was published with.

A node whose capability dict cannot be built is left out of the list (the scheduler stops offering it) and
its error is recorded on it (``bmd.tasks.steps``); it is read again every pass until it can be built (its
key is not kept), the others are published as usual.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bmd.bus import Bus
from bmd.drivers.baremetal import BareMetalDriver
from bmd.gcpause import collector_paused
from bmd.tasks.steps import NodeSteps, StepFailureCounter, record_step_errors

TOPIC = "capabilities"

# A pass that finds more nodes changed than this share of those held reads every row in one statement
# rather than in 500-id batches.
_FULL_READ_SHARE = 0.25


class CapabilityReport(list[dict[str, Any]]):
    """One publication: the full list of capability dicts, and what changed since the report ``seq - 1``
    of the same ``origin`` (the publisher). The dicts are shared with later reports: read them, never
    change them."""

    def __init__(
        self,
        entries: Iterable[dict[str, Any]],
        *,
        origin: object,
        seq: int,
        changed: list[dict[str, Any]],
        removed: list[str],
    ) -> None:
        super().__init__(entries)
        self.origin = origin
        self.seq = seq
        self.changed = changed
        self.removed = removed

    def follows(self, previous: CapabilityReport | None) -> bool:
        """Whether this report's delta applies on top of ``previous`` (the last one a subscriber took)."""
        return previous is not None and previous.origin is self.origin and previous.seq == self.seq - 1


class ReportDriverStatus:
    name = "report_driver_status"

    def __init__(
        self,
        driver: BareMetalDriver,
        bus: Bus,
        host_ip: str,
        interval: float,
        failures: StepFailureCounter | None = None,
    ) -> None:
        self.driver = driver
        self.bus = bus
        self.host_ip = host_ip
        self.interval = interval
        self.steps = NodeSteps(self.name, failures)
        self._keys: dict[int, int] = {}  # node id -> the change key its held dict was built at
        self._stats: dict[int, dict[str, Any]] = {}  # node id -> its capability dict, as last published
        self._seq = 0
        self.nodes_read = 0  # capability dicts built by the last pass (what it read beyond the keys)

    async def run_once(self) -> None:
        self.steps.start()
        async with self.driver.sessionmaker() as session:
            if not self._keys:
                keys, found = await self.driver.host_stats_keyed(session, None, self.steps.fail)
                wanted: Iterable[int] = keys
            else:
                keys = await self.driver.host_stats_keys(session)
                with collector_paused():
                    wanted = sorted(node_id for node_id, _ in keys.items() - self._keys.items())  # new or moved
                if len(wanted) > _FULL_READ_SHARE * len(self._keys):
                    found = await self.driver.host_stats_for(session, None, self.steps.fail)
                else:
                    found = await self.driver.host_stats_for(session, wanted, self.steps.fail)
        self._take(keys, wanted, found)
        changes = self.steps.finish()
        if changes:
            try:
                async with self.driver.sessionmaker.begin() as session:
                    await record_step_errors(session, changes)
            except BaseException:
                self.steps.unwritten(changes)
                raise

    def _take(self, keys: dict[int, int], wanted: Iterable[int], found: dict[int, dict[str, Any]]) -> None:
        """Hold the dicts built for the ``wanted`` nodes (under the key scanned: a row written since the
        scan is read again next pass), drop the nodes gone from the scan or not built, publish."""
        changed: list[dict[str, Any]] = []
        removed: list[str] = []
        for node_id in wanted:
            stats = found.get(node_id)
            if stats is None:  # cannot be built (recorded by steps), or gone since the scan: read again
                self._keys.pop(node_id, None)
                if self._stats.pop(node_id, None) is not None:
                    removed.append(str(node_id))
                continue
            stats["host_ip"] = self.host_ip
            self._keys[node_id] = keys[node_id]
            self._stats[node_id] = stats
            changed.append(stats)
        for node_id in self._keys.keys() - keys.keys():
            del self._keys[node_id]
            if self._stats.pop(node_id, None) is not None:
                removed.append(str(node_id))
        self.nodes_read = len(found)
        self._seq += 1
        report = CapabilityReport(self._stats.values(), origin=self, seq=self._seq, changed=changed, removed=removed)
        self.bus.publish(TOPIC, report)
