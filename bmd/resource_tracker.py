"""One ResourceTracker per node (nodename), as in the seed: it turns the driver's view of the node into the
``compute_nodes`` row the scheduler reads. Trackers remember what they last wrote, so a pass only writes
the rows that changed; the writes of all trackers go to the database in one bulk statement.
"""

from __future__ import annotations

from typing import Any

ROW_KEYS = (
    "vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used", "local_gb_used",
    "hypervisor_type", "hypervisor_version", "hypervisor_hostname", "cpu_info", "running_vms",
    "service_host",
)  # fmt: skip


class ResourceTracker:
    __slots__ = ("_written", "node_id", "nodename")

    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self.node_id = int(nodename)
        self._written: tuple[Any, ...] | None = None

    def update_available_resource(self, resources: dict[str, Any]) -> dict[str, Any] | None:
        """Compute this node's compute_nodes row; None when it is what was last written."""
        values = tuple(resources[k] for k in ROW_KEYS)
        if values == self._written:
            return None
        row = dict(zip(ROW_KEYS, values, strict=True))
        row["bm_node_id"] = self.node_id
        row["free_ram_mb"] = row["memory_mb"] - row["memory_mb_used"]
        row["free_disk_gb"] = row["local_gb"] - row["local_gb_used"]
        return row

    def written(self, row: dict[str, Any]) -> None:
        """Record that ``row`` is now in the database."""
        self._written = tuple(row[k] for k in ROW_KEYS)

    def forget(self) -> None:
        """The database may not hold what we think (a failed write): write again next pass."""
        self._written = None
