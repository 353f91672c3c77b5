"""``sync_power_states``: read every node's power state through its BMC, record it, act on mismatches.

Concurrency is bounded by ``tasks.power_sync_workers`` and every read by ``tasks.power_sync_timeout``. A
read that has not answered after ``release_after`` seconds gives its worker slot back and goes on waiting
on its own, so dead BMCs cost one timeout in parallel, not one timeout each: a pass takes about
``ceil(N / workers) x per-call time + one timeout``. Nodes that failed last time are polled first.

After ``power_sync_max_retries`` consecutive failures a node goes to maintenance (reason ``power failure:
<error>``, set by ``power_sync``); when its BMC answers again that maintenance is lifted — never one an
operator set. The database sees a few bulk statements per pass whatever the number of nodes: a node
whose reading changed nothing but the time of the check (most of them, most passes) is in one
``last_power_check`` update by id list (per :data:`_CHUNK` nodes), the others in one executemany.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd import node_history as history
from bmd.config import TaskSettings
from bmd.db.models import BareMetalNode, bm_nodes_table, utcnow
from bmd.db.nodes import is_free
from bmd.drivers.power.base import PowerState
from bmd.drivers.power.registry import PowerRegistry
from bmd.errors import BmdError
from bmd.node_events import note_nodes
from bmd.tasks.steps import NodeSteps, StepFailureCounter, describe

log = structlog.get_logger(__name__)

T = TypeVar("T")

POWER_SYNC = "power_sync"
_COLUMNS = (
    BareMetalNode.id,
    BareMetalNode.pm_driver,
    BareMetalNode.pm_address,
    BareMetalNode.pm_user,
    BareMetalNode.pm_password,
    BareMetalNode.power_state,
    BareMetalNode.power_failures,
    BareMetalNode.last_power_error,
    BareMetalNode.maintenance,
    BareMetalNode.maintenance_set_by,
    BareMetalNode.provision_state,
    BareMetalNode.instance_uuid,
)

# Ids per "only the check time moved" update: well under the bound-parameter limits of SQLite (32,766) and
# PostgreSQL (32,767).
_CHUNK = 5000


def expected_power(row: Any) -> PowerState | None:
    """What the node's power should be: on while it runs an instance, off while it is free; None when a
    deploy or delete is moving it (those flows own the power)."""
    if row.provision_state == "active" and row.instance_uuid is not None:
        return PowerState.ON
    if is_free(row.instance_uuid, row.provision_state, row.maintenance):
        return PowerState.OFF
    return None


@dataclass(slots=True)
class Reading:
    node: Any
    state: PowerState | None = None
    error: str | None = None


class SyncPowerStates:
    name = "sync_power_states"

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        power: PowerRegistry,
        host: str,
        settings: TaskSettings,
        release_after: float = 0.25,
        failures: StepFailureCounter | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.power = power
        self.host = host
        self.settings = settings
        self.interval = settings.power_sync_interval
        self.release_after = min(release_after, settings.power_sync_timeout)
        self.last_pass: dict[str, int] = {}
        # A BMC error is the node's power error, as always; anything else (a malformed address, a driver
        # bug, a password that does not decrypt) is also that node's alone, counted and logged on change.
        self.steps = NodeSteps(self.name, failures)

    async def _nodes(self) -> list[Any]:
        stmt = (
            select(*_COLUMNS)
            .where(BareMetalNode.service_host == self.host, BareMetalNode.pm_address.is_not(None))
            .order_by(BareMetalNode.power_failures.desc(), BareMetalNode.id)  # failed last time: first
        )
        async with self.sessionmaker() as session:
            return list((await session.execute(stmt)).all())

    async def _read(self, node: Any) -> Reading:
        try:
            driver, access = self.power.for_node(node)
            async with asyncio.timeout(self.settings.power_sync_timeout):
                return Reading(node, state=await driver.get_power_state(access))
        except TimeoutError:
            return Reading(node, error=f"BMCTimeout: no answer within {self.settings.power_sync_timeout:g} s")
        except BmdError as err:
            return Reading(node, error=f"{type(err).__name__}: {err}")
        except Exception as err:  # noqa: BLE001 - one node's fault never ends the pass for the others
            return Reading(node, error=self.steps.fail(node.id, err))

    async def _poll(self, nodes: list[Any]) -> list[Reading]:
        """Every node's reading, ``power_sync_workers`` reads at a time. A read that has not answered after
        ``release_after`` seconds is parked: its worker takes the next node and the read waits out its
        timeout on its own (one task per slow BMC, cancelled with the pass)."""
        readings: list[Reading] = []
        parked: set[asyncio.Task[Reading]] = set()

        async def read(node: Any) -> None:
            call = asyncio.ensure_future(self._read(node))
            parked.add(call)  # until it answers in time: a cancelled pass cancels it too
            await asyncio.wait({call}, timeout=self.release_after)
            if call.done():
                parked.discard(call)
                readings.append(call.result())

        try:
            await _each(nodes, self.settings.power_sync_workers, read)
            for call in list(parked):
                readings.append(await call)
        finally:
            for call in parked:
                call.cancel()
            if parked:
                await asyncio.wait(parked)
        return readings

    async def _force(self, forced: tuple[Reading, PowerState]) -> None:
        reading, target = forced
        try:
            driver, access = self.power.for_node(reading.node)
            async with asyncio.timeout(self.settings.power_sync_timeout * 4):
                await driver.set_power_state(access, target)
            reading.state = target
            log.info("power_state_forced", node=reading.node.id, state=target.value)
        except (TimeoutError, BmdError) as err:
            log.warning("power_state_force_failed", node=reading.node.id, error=str(err) or type(err).__name__)
        except Exception as err:  # noqa: BLE001 - contained like a read
            self.steps.fail(reading.node.id, err)  # the read succeeded: its state stands
            log.warning("power_state_force_failed", node=reading.node.id, error=describe(err))

    async def run_once(self) -> None:
        self.steps.start()
        readings = await self._poll(await self._nodes())
        forced = []
        for r in readings:
            want = expected_power(r.node)
            if r.state is not None and want is not None and r.state != want:
                log.warning(
                    "power_state_mismatch",
                    node=r.node.id,
                    actual=r.state.value,
                    expected=want.value,
                    instance=r.node.instance_uuid,
                )
                if self.settings.force_power_state_during_sync:
                    forced.append((r, want))
        await _each(forced, self.settings.power_sync_workers, self._force)
        await self._record(readings)
        self.steps.finish()  # the errors themselves are in last_power_error, written by _record

    async def _record(self, readings: list[Reading]) -> None:
        now = utcnow()
        limit = self.settings.power_sync_max_retries
        error_state = PowerState.ERROR.value  # an enum's .value is a descriptor call: once, not per node
        rows, to_maint, to_lift = [], [], []
        checked: list[int] = []  # only last_power_check moves
        changed: list[int] = []
        entries: list[history.Entry] = []
        for r in readings:
            node = r.node
            failures = 0 if r.error is None else node.power_failures + 1
            state = r.state.value if r.state is not None else (error_state if failures >= limit else node.power_state)
            if state == node.power_state and failures == node.power_failures and r.error == node.last_power_error:
                checked.append(node.id)  # a per-row update cost ~20 us a node on SQLite; this is one statement
                if node.maintenance_set_by != POWER_SYNC:
                    continue  # answered as before, no failure: no history, no change to tell (most nodes)
            else:
                rows.append({"b_id": node.id, "ps": state, "at": now, "f": failures, "err": r.error})
            entries.extend(_power_entries(node, state, failures, r.error))
            if state != node.power_state or (state == error_state or bool(failures)) != (
                node.power_state == error_state or bool(node.power_failures)
            ):
                # a power fault begins or ends (the scheduler is told), or the power state changed (the
                # views /metrics counts by power state stay current between resyncs)
                changed.append(node.id)
            if r.error is not None and failures >= limit and not node.maintenance:
                to_maint.append({"b_id": node.id, "reason": f"power failure: {r.error}"})
                log.error("node_power_failure_maintenance", node=node.id, failures=failures, error=r.error)
            elif r.error is None and node.maintenance and node.maintenance_set_by == POWER_SYNC:
                to_lift.append({"b_id": node.id})
                log.info("node_power_recovered", node=node.id)
        t = bm_nodes_table
        async with self.sessionmaker.begin() as session:
            # The checked rows keep their version: nothing a reader of versions looks at moved, so the passes
            # that read only the nodes whose version moved (report_driver_status, update_available_resource,
            # the scheduler's resync) are not made to read every node after each power sync.
            for i in range(0, len(checked), _CHUNK):
                await session.execute(
                    update(t)
                    .where(t.c.id.in_(checked[i : i + _CHUNK]))
                    .values(last_power_check=now, version=t.c.version)
                )
            if rows:
                await session.execute(
                    update(t)
                    .where(t.c.id == bindparam("b_id"))
                    .values(
                        power_state=bindparam("ps"),
                        last_power_check=bindparam("at"),
                        power_failures=bindparam("f"),
                        last_power_error=bindparam("err"),
                    ),
                    rows,
                )
            if to_maint:  # only where nobody put it in maintenance meanwhile
                to_maint = await _still(session, to_maint, t.c.maintenance.is_(False))
                await session.execute(
                    update(t)
                    .where(t.c.id == bindparam("b_id"), t.c.maintenance.is_(False))
                    .values(maintenance=True, maintenance_reason=bindparam("reason"), maintenance_set_by=POWER_SYNC),
                    to_maint,
                )
            if to_lift:  # only maintenance this loop set itself
                to_lift = await _still(session, to_lift, t.c.maintenance_set_by == POWER_SYNC)
                await session.execute(
                    update(t)
                    .where(t.c.id == bindparam("b_id"), t.c.maintenance_set_by == POWER_SYNC)
                    .values(maintenance=False, maintenance_reason=None, maintenance_set_by=None),
                    to_lift,
                )
            ids = {*changed, *(m["b_id"] for m in to_maint), *(m["b_id"] for m in to_lift)}
            if ids:
                await note_nodes(session, ids)
            entries += [history.maintenance(m["b_id"], True, m["reason"], POWER_SYNC) for m in to_maint]
            entries += [history.maintenance(m["b_id"], False, None, POWER_SYNC) for m in to_lift]
            await history.record(session, entries)
        self.last_pass = {
            "nodes": len(readings),
            "failed": sum(1 for r in readings if r.error is not None),
            "to_maintenance": len(to_maint),
            "recovered": len(to_lift),
        }


async def _each(items: list[T], workers: int, call: Callable[[T], Awaitable[None]]) -> None:
    """``call(item)`` for every item, by at most ``workers`` tasks that each take the next item in turn: a
    fixed number of tasks however many items (one task per node waiting on a semaphore costs seconds to
    create at 100,000 nodes and minutes to cancel, each cancelled waiter leaving the semaphore's queue)."""
    queue = iter(items)

    async def work() -> None:
        for item in queue:
            await call(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(workers, len(items))):
            group.create_task(work())


def _power_entries(node: Any, state: str | None, failures: int, error: str | None) -> list[history.Entry]:
    """What a reading adds to the node's history: a power state other than the one kept, the first failure
    of a run (not every failed pass), the first answer after failures."""
    entries = []
    if state != node.power_state:
        entries.append(history.Entry(node.id, history.Kind.POWER, "changed", node.power_state, state, actor=POWER_SYNC))
    if error is not None and not node.power_failures:
        entries.append(history.Entry(node.id, history.Kind.POWER, "failed", message=error, actor=POWER_SYNC))
    elif error is None and node.power_failures:
        entries.append(history.Entry(node.id, history.Kind.POWER, "recovered", actor=POWER_SYNC))
    return entries


async def _still(session: AsyncSession, rows: list[dict[str, Any]], condition: Any) -> list[dict[str, Any]]:
    """The rows whose node still meets ``condition`` in this transaction (so the history says only what the
    guarded update below really did)."""
    t = bm_nodes_table
    ids = {m["b_id"] for m in rows}
    keep = set((await session.scalars(select(t.c.id).where(t.c.id.in_(ids), condition))).all())
    return [m for m in rows if m["b_id"] in keep]
