"""Per-node steps of the fleet-wide loops: one node's failure is contained, recorded and counted.

A loop runs one step per node (read its BMC, build its capability dict, track its resources). An
unexpected exception in one step — any ``Exception``, never cancellation — is turned into that node's
error: counted in ``bmd_node_step_failures_total{task=...}``, logged once when the node starts failing (or
fails differently) and once when it recovers, and written on ``bm_nodes.last_error`` by the loop in one
bulk statement per pass. The pass goes on for the other nodes.

``last_error`` is shared with the provisioning flows, so a recovery clears only the text this loop wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from bmd import node_history as history
from bmd.db.models import bm_nodes_table

log = structlog.get_logger(__name__)


@dataclass
class StepFailureCounter:
    """Failed per-node steps by task, since start (``/metrics`` reads it)."""

    totals: dict[str, int] = field(default_factory=dict)

    def add(self, task: str) -> None:
        self.totals[task] = self.totals.get(task, 0) + 1


@dataclass(frozen=True)
class StepChanges:
    """What changed since the last pass: nodes newly failing (or failing differently) with their error,
    and nodes that recovered with the error they had."""

    failed: Mapping[int, str]
    recovered: Mapping[int, str]

    def __bool__(self) -> bool:
        return bool(self.failed or self.recovered)


def describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class NodeSteps:
    """One loop's record of which nodes' steps fail. Call ``start()`` at the top of a pass, ``fail(node, err)``
    for each failed step, ``finish()`` at the end for what to write, and ``unwritten()`` when writing it failed."""

    def __init__(self, task: str, counter: StepFailureCounter | None = None) -> None:
        self.task = task
        self.counter = counter if counter is not None else StepFailureCounter()
        self.failing: dict[int, str] = {}  # node id -> the error it has now
        self._this_pass: dict[int, str] = {}

    def start(self) -> None:
        self._this_pass = {}

    def fail(self, node_id: int, err: BaseException) -> str:
        """Record ``err`` as the node's failure in this pass; returns the error text to store."""
        message = f"{self.task}: {describe(err)}"
        self._this_pass[node_id] = message
        self.counter.add(self.task)
        if self.failing.get(node_id) != message:
            log.error("node_step_failed", task=self.task, node=node_id, error=message, exc_info=err)
        return message

    def finish(self) -> StepChanges:
        now = self._this_pass
        failed = {n: m for n, m in now.items() if self.failing.get(n) != m}
        recovered = {n: m for n, m in self.failing.items() if n not in now}
        for node_id in recovered:
            log.info("node_step_recovered", task=self.task, node=node_id)
        self.failing = dict(now)
        self._this_pass = {}
        return StepChanges(failed, recovered)

    def unwritten(self, changes: StepChanges) -> None:
        """The write of ``changes`` failed: offer them again at the next pass."""
        for node_id in changes.failed:
            self.failing.pop(node_id, None)
        self.failing.update(changes.recovered)


async def record_step_errors(session: AsyncSession, changes: StepChanges) -> None:
    """Write ``last_error`` of the nodes that changed: one executemany per kind, whatever their number."""
    t = bm_nodes_table
    await history.record(
        session,
        [history.Entry(n, history.Kind.ERROR, "failed", message=m) for n, m in changes.failed.items()]
        + [history.Entry(n, history.Kind.ERROR, "recovered", message=m) for n, m in changes.recovered.items()],
    )
    if changes.failed:
        await session.execute(
            update(t).where(t.c.id == bindparam("b_id")).values(last_error=bindparam("err")),
            [{"b_id": n, "err": m} for n, m in changes.failed.items()],
        )
    if changes.recovered:  # only the text this loop wrote: a deploy's error is not ours to clear
        await session.execute(
            update(t).where(t.c.id == bindparam("b_id"), t.c.last_error == bindparam("old")).values(last_error=None),
            [{"b_id": n, "old": m} for n, m in changes.recovered.items()],
        )
