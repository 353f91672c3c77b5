"""One ResourceTracker per node (nodename), as in the seed: it turns the driver's view of the node into the
``compute_nodes`` row (the resource tracker's output, as in the seed; the scheduler does not read it: its
used/free comes from ``bm_nodes``, see ``bmd.scheduler.manager``). Trackers remember what they last wrote,
so a pass only writes the rows that changed; the writes of all trackers go to the database in one bulk
statement.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from bmd.drivers.baremetal import RESOURCE_KEYS as ROW_KEYS

_values = itemgetter(*ROW_KEYS)


class ResourceTracker:
    __slots__ = ("_written", "node_id", "nodename")

    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self.node_id = int(nodename)
        self._written: tuple[Any, ...] | None = None

    def update_available_resource(self, resources: dict[str, Any]) -> dict[str, Any] | None:
        """Compute this node's compute_nodes row; None when it is what was last written."""
        values = _values(resources)
        if values == self._written:
            return None
        row = dict(zip(ROW_KEYS, values, strict=True))
        row["bm_node_id"] = self.node_id
        row["free_ram_mb"] = row["memory_mb"] - row["memory_mb_used"]
        row["free_disk_gb"] = row["local_gb"] - row["local_gb_used"]
        return row

    def written(self, row: dict[str, Any]) -> None:
        """Record that ``row`` is now in the database."""
        self._written = _values(row)

    def forget(self) -> None:
        """The database may not hold what we think (a failed write): write again next pass."""
        self._written = None
