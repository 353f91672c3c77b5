"""``adopt_nodes``: the recovery of interrupted deploys, cleans and inspections for the nodes this service
just took over (``service.ownership = "ring"``).

Each pass reads the ids of the nodes whose ``service_host`` is this service's host and diffs them against
the last pass: the moves may have been written by another service's ``node_ownership`` pass, so the owned
set is what counts, not this service's own moves. The first pass only records the set: start-up recovery
(``recover`` in ``bmd.service.serve``, run before the loops start) covered those nodes already.

Nodes that left this service: a job of ours still running on one is let finish (cancelling it mid-step
would leave the node half-done) and ``node_lost_ownership`` is logged with the busy ids. The new owner's
recovery skips only the jobs running in its own process: it cannot see ours, so while that one job runs both
services may act on the node. A service loses its nodes only after ``service.service_down_time`` without a
heartbeat, so in practice that job belongs to a process that is gone or stalled.
"""

from __future__ import annotations

import structlog
from sqlalchemy import select

from bmd.db.models import BareMetalNode
from bmd.provision.conductor import Conductor
from bmd.provision.recovery import recover

log = structlog.get_logger(__name__)


class NodeAdoption:
    name = "adopt_nodes"

    def __init__(self, conductor: Conductor, interval: float) -> None:
        self.conductor = conductor
        self.interval = interval
        self.owned: set[int] | None = None

    async def run_once(self) -> None:
        p = self.conductor.p
        async with p.sessionmaker() as session:
            now = set(
                (
                    await session.execute(
                        select(BareMetalNode.id).where(BareMetalNode.service_host == p.settings.service.host)
                    )
                ).scalars()
            )
        before, self.owned = self.owned, now
        if before is None:
            return
        lost = before - now
        if lost:
            busy = sorted(i for i in lost if self.conductor.running(i) is not None)
            log.warning("node_lost_ownership", count=len(lost), busy=busy)
        adopted = now - before
        if adopted:
            log.info("nodes_adopted", count=len(adopted))
            await recover(self.conductor, adopted)
