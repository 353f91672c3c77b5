"""The provision state machine of a node, and the only writer of provisioning state.

One table of allowed transitions (``TRANSITIONS``), applied atomically in SQL, and one table of what each
event writes besides the state (``OUTCOMES``: the node's ``task_state`` and the instance's
``vm_state``/``task_state`` in lockstep). Callers use the verbs below (``claim``, ``advance``,
``fail``, ``fail_many``, ``release``, ``forget``, ``lose_instances``) and pass events and reasons, never
column values; no other module writes ``provision_state``, ``vm_state`` or ``task_state``
(tests/test_states.py checks it). Every node write is published to the scheduler (``note_nodes``), and every
transition is added to the node's history (``bmd.node_history``) in its transaction.

The link between an instance and its node is ``bm_nodes.instance_uuid``: a node holds an instance, and
whatever decides something reads that. ``instances.bm_node_id``, ``instances.node``, ``instances.host``
and ``bm_deployments.instance_uuid`` are the seed's copies, written once with the claim (or the deployment)
and read only for display.

    available --deploy--> deploying --wait--> wait_callback --callback--> wait_callback --done--> active
    active/error/wait_callback/deploying --delete--> deleting --cleaned--> available   (automated_clean off)
    deleting --clean--> cleaning --clean_callback--> cleaning --cleaned--> available
    cleaning --clean_fail--> clean failed (and maintenance, with the reason)
    deploying/wait_callback/deleting --fail--> error        deploying --undo--> available
    available/inspect failed --inspect--> inspecting --inspect_callback--> inspecting --inspected--> available
    inspecting --inspect_fail--> inspect failed

Cleaning (docs/cleaning.md) frees the instance at once, as Ironic does: ``clean`` takes the instance off the
node and marks it deleted, then the node boots the ramdisk in clean mode holding no instance. The verbs
for a node that holds none are ``start_clean``, ``clean_callback``, ``finish_clean`` and ``fail_clean``.

Every transition is one ``UPDATE ... WHERE id = :id AND provision_state IN (:sources)``: it is stored
before anything is acted on, and two actors can never both win the same transition. A refused transition
raises InvalidState naming the node's current state (the API's 409).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from bmd import node_history as history
from bmd.db.models import BareMetalNode, Instance, bm_nodes_table, utcnow
from bmd.db.nodes import FREE
from bmd.errors import InvalidState, NotFound
from bmd.node_events import note_nodes


class ProvisionState(enum.StrEnum):
    AVAILABLE = "available"
    DEPLOYING = "deploying"
    WAIT_CALLBACK = "wait_callback"
    ACTIVE = "active"
    DELETING = "deleting"
    ERROR = "error"
    CLEANING = "cleaning"  # the instance is gone; the node boots the ramdisk to erase its disks
    CLEAN_FAILED = "clean failed"  # and the node is in maintenance, the reason in maintenance_reason
    INSPECTING = "inspecting"  # the node boots the ramdisk to report what it is
    INSPECT_FAILED = "inspect failed"  # the reason in last_error; `bmd node inspect` retries


class Event(enum.StrEnum):
    DEPLOY = "deploy"
    WAIT = "wait"
    CALLBACK = "callback"  # the agent reported success: the finish (disk boot, reboot) is under way
    DONE = "done"
    DELETE = "delete"
    CLEANED = "cleaned"
    FAIL = "fail"
    UNDO = "undo"
    CLEAN = "clean"  # the delete's teardown is done: the instance is freed, the node goes cleaning
    CLEAN_CALLBACK = "clean_callback"  # the clean agent reported success: power off and tidy up under way
    CLEAN_FAIL = "clean_fail"
    INSPECT = "inspect"
    INSPECT_CALLBACK = "inspect_callback"  # the report is stored: power off and tidy up under way
    INSPECTED = "inspected"
    INSPECT_FAIL = "inspect_fail"


S, E = ProvisionState, Event

# (event, source) -> target. The only place transitions are defined.
TRANSITIONS: dict[tuple[Event, ProvisionState], ProvisionState] = {
    (E.DEPLOY, S.AVAILABLE): S.DEPLOYING,
    (E.WAIT, S.DEPLOYING): S.WAIT_CALLBACK,
    (E.CALLBACK, S.WAIT_CALLBACK): S.WAIT_CALLBACK,
    (E.DONE, S.WAIT_CALLBACK): S.ACTIVE,
    (E.DELETE, S.ACTIVE): S.DELETING,
    (E.DELETE, S.ERROR): S.DELETING,
    (E.DELETE, S.WAIT_CALLBACK): S.DELETING,
    (E.DELETE, S.DEPLOYING): S.DELETING,
    (E.DELETE, S.DELETING): S.DELETING,  # a second delete, or one resumed after a crash, finishes the job
    (E.CLEANED, S.DELETING): S.AVAILABLE,
    (E.CLEANED, S.CLEANING): S.AVAILABLE,
    (E.CLEAN, S.DELETING): S.CLEANING,
    (E.CLEAN, S.CLEAN_FAILED): S.CLEANING,  # an operator's retry (`bmd node clean`)
    (E.CLEAN_CALLBACK, S.CLEANING): S.CLEANING,
    (E.CLEAN_FAIL, S.CLEANING): S.CLEAN_FAILED,
    (E.FAIL, S.DEPLOYING): S.ERROR,
    (E.FAIL, S.WAIT_CALLBACK): S.ERROR,
    (E.FAIL, S.DELETING): S.ERROR,
    (E.UNDO, S.DEPLOYING): S.AVAILABLE,
    (E.INSPECT, S.AVAILABLE): S.INSPECTING,
    (E.INSPECT, S.INSPECT_FAILED): S.INSPECTING,  # a retry
    (E.INSPECT_CALLBACK, S.INSPECTING): S.INSPECTING,
    (E.INSPECTED, S.INSPECTING): S.AVAILABLE,
    (E.INSPECT_FAIL, S.INSPECTING): S.INSPECT_FAILED,
}


# Each event leads to one state, so the target of an atomic transition is known before it is applied.
assert all(len({t for (e, _), t in TRANSITIONS.items() if e == ev}) == 1 for ev in Event)


def sources(event: Event) -> list[ProvisionState]:
    return [src for (ev, src) in TRANSITIONS if ev == event]


def target(event: Event, source: ProvisionState | str) -> ProvisionState:
    try:
        return TRANSITIONS[(event, ProvisionState(source))]
    except (KeyError, ValueError) as err:
        raise InvalidState(f"cannot {event} a node that is {source}") from err


async def transition(
    session: AsyncSession,
    node_id: int,
    event: Event,
    *,
    expect: ProvisionState | None = None,
    holding: str | None = None,
    **values: Any,
) -> ProvisionState:
    """Apply ``event`` to the node atomically; extra column ``values`` are written in the same statement.

    ``expect`` narrows the allowed source to one state; ``holding`` makes the transition apply only while
    the node still holds that instance. Returns the new state; raises InvalidState (409) otherwise.
    """
    allowed = [s for s in ([expect] if expect is not None else sources(event)) if (event, s) in TRANSITIONS]
    new = TRANSITIONS[(event, sources(event)[0])]
    now = utcnow()
    conds = [BareMetalNode.id == node_id, BareMetalNode.provision_state.in_([s.value for s in allowed])]
    if holding is not None:
        conds.append(BareMetalNode.instance_uuid == holding)
    if allowed:
        # The state it leaves, for its history: known when one source is allowed, else read (and on
        # PostgreSQL locked) in this transaction first; SQLite's write transaction holds the lock already.
        before = allowed[0].value if len(allowed) == 1 else await _state_of(session, node_id)
        result = await session.execute(
            update(BareMetalNode).where(*conds).values(provision_state=new.value, provision_updated_at=now, **values)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            await note_nodes(session, [node_id])  # the scheduler's view of the node, once this commits
            await history.record(session, _entries(node_id, event, before, new, holding, values))
            return new
    row = (
        await session.execute(
            select(BareMetalNode.provision_state, BareMetalNode.instance_uuid).where(BareMetalNode.id == node_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"node {node_id} not found")
    if holding is not None and row.instance_uuid != holding:
        raise InvalidState(f"node {node_id} no longer holds instance {holding} (it is {row.provision_state})")
    raise InvalidState(f"cannot {event} node {node_id}: it is {row.provision_state}")


async def _state_of(session: AsyncSession, node_id: int) -> str | None:
    stmt = select(BareMetalNode.provision_state).where(BareMetalNode.id == node_id).with_for_update()
    return await session.scalar(stmt)


def _entries(
    node_id: int,
    event: Event,
    before: str | None,
    new: ProvisionState,
    instance_uuid: str | None,
    values: Mapping[str, Any],
) -> list[history.Entry]:
    """A transition's history: the transition with its reason, and maintenance when the event sets or lifts
    it (a failed clean; an operator's retry of one)."""
    reason = values.get("last_error")
    entries = [
        history.Entry(
            node_id, history.Kind.PROVISION, event.value, before, new.value, message=reason, instance_uuid=instance_uuid
        )
    ]
    if "maintenance" in values:
        on = bool(values["maintenance"])
        entries.append(history.maintenance(node_id, on, values.get("maintenance_reason"), "bmd" if on else "operator"))
    return entries


def deadline_after(seconds: float) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


# -- what each event writes besides the state -----------------------------------------------------------


class _Reason:
    """Placeholder in OUTCOMES: the reason the caller gives (``last_error``)."""


class _Now:
    """Placeholder in OUTCOMES: the time of the write."""


REASON, NOW = _Reason(), _Now()


def _frozen(**values: Any) -> Mapping[str, Any]:
    return MappingProxyType(values)


# event -> (node columns, instance columns), written with the transition, in its transaction.
OUTCOMES: Mapping[Event, tuple[Mapping[str, Any], Mapping[str, Any]]] = MappingProxyType(
    {
        E.DEPLOY: (
            _frozen(task_state="spawning", last_error=None),
            _frozen(vm_state="building", task_state="spawning"),
        ),
        E.WAIT: (_frozen(task_state="wait_callback"), _frozen(task_state="wait_callback")),
        # Taking the deadline away is the atomic hand-over: the timeout check no longer sees this node.
        E.CALLBACK: (_frozen(task_state="finishing_deploy", deploy_deadline=None), _frozen()),
        E.DONE: (
            _frozen(task_state=None, last_error=None),
            _frozen(vm_state="active", task_state=None, last_error=None),
        ),
        E.DELETE: (_frozen(task_state="deleting"), _frozen(task_state="deleting")),
        E.CLEANED: (
            _frozen(instance_uuid=None, task_state=None, deploy_deadline=None, last_error=None),
            _frozen(vm_state="deleted", task_state=None, deleted_at=NOW),
        ),
        E.FAIL: (
            _frozen(task_state=None, deploy_deadline=None, last_error=REASON),
            _frozen(vm_state="error", task_state=None, last_error=REASON),
        ),
        E.CLEAN: (  # the instance is freed now (Ironic's order): the node cleans holding none
            _frozen(instance_uuid=None, task_state="cleaning", last_error=None),
            _frozen(vm_state="deleted", task_state=None, deleted_at=NOW),
        ),
        E.CLEAN_CALLBACK: (_frozen(task_state="finishing_clean", deploy_deadline=None), _frozen()),
        E.CLEAN_FAIL: (
            _frozen(
                task_state=None,
                deploy_deadline=None,
                last_error=REASON,
                maintenance=True,
                maintenance_reason=REASON,
                maintenance_set_by="bmd",
            ),
            _frozen(),
        ),
        E.INSPECT: (_frozen(task_state="inspecting", last_error=None), _frozen()),
        E.INSPECT_CALLBACK: (_frozen(task_state="finishing_inspect", deploy_deadline=None), _frozen()),
        E.INSPECTED: (_frozen(task_state=None, deploy_deadline=None), _frozen()),
        E.INSPECT_FAIL: (_frozen(task_state=None, deploy_deadline=None, last_error=REASON), _frozen()),
        E.UNDO: (  # a spawn undone: the node is free again, the instance shows why
            _frozen(instance_uuid=None, task_state=None, deploy_deadline=None, last_error=REASON),
            _frozen(vm_state="error", task_state=None, last_error=REASON),
        ),
    }
)
assert set(OUTCOMES) == set(Event)


def _fill(values: Mapping[str, Any], reason: str | None, now: dt.datetime) -> dict[str, Any]:
    return {k: reason if v is REASON else now if v is NOW else v for k, v in values.items()}


def node_values(event: Event, reason: str | None = None, now: dt.datetime | None = None) -> dict[str, Any]:
    return _fill(OUTCOMES[event][0], reason, now or utcnow())


def instance_values(event: Event, reason: str | None = None, now: dt.datetime | None = None) -> dict[str, Any]:
    return _fill(OUTCOMES[event][1], reason, now or utcnow())


async def _write_instances(session: AsyncSession, uuids: Sequence[str], values: Mapping[str, Any]) -> None:
    if uuids and values:
        await session.execute(
            update(Instance).where(Instance.uuid.in_(list(uuids))).values(updated_at=utcnow(), **values)
        )


# -- the verbs ----------------------------------------------------------------------------------------


async def claim(session: AsyncSession, claims: Sequence[tuple[int, str]], now: dt.datetime) -> int:
    """The scheduler's claim of nodes, (node id, instance uuid) each: a free node (``bmd.db.nodes.FREE``)
    takes its instance and is deploying; a node that is not free is left as it is. Returns how many were
    claimed. Its instance rows are inserted with ``claimed_instance()`` in the same transaction.

    On PostgreSQL one statement over two arrays: an executemany runs its updates one at a time there, about
    0.4 ms each, where this takes about 3 ms for a hundred nodes, and its text is the same whatever their
    number (one cached, prepared statement). On SQLite an executemany, a loop in C that is as fast."""
    t = bm_nodes_table
    values = {
        "provision_state": target(E.DEPLOY, S.AVAILABLE).value,
        "provision_updated_at": now,
        "updated_at": now,
        **node_values(E.DEPLOY),
    }
    if session.get_bind().dialect.name == "postgresql":
        pairs = (
            func.unnest(bindparam("b_ids", type_=ARRAY(Integer)), bindparam("b_uuids", type_=ARRAY(String)))
            .table_valued("id", "uuid")
            .render_derived(name="claim")
        )
        stmt = update(t).where(t.c.id == pairs.c.id, FREE).values(instance_uuid=pairs.c.uuid, **values)
        result = await session.execute(stmt, {"b_ids": [n for n, _ in claims], "b_uuids": [u for _, u in claims]})
    else:
        stmt = update(t).where(t.c.id == bindparam("b_id"), FREE).values(instance_uuid=bindparam("b_uuid"), **values)
        result = await session.execute(stmt, [{"b_id": n, "b_uuid": u} for n, u in claims])
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def claimed_instance() -> dict[str, Any]:
    """The state columns of an instance row inserted with its claim."""
    return instance_values(E.DEPLOY)


async def record_claims(session: AsyncSession, claims: Sequence[tuple[int, str]]) -> None:
    """The history of claims written with ``claim`` in this transaction: (node id, instance)."""
    to = target(E.DEPLOY, S.AVAILABLE).value
    entries = [
        history.Entry(n, history.Kind.PROVISION, E.DEPLOY.value, S.AVAILABLE.value, to, instance_uuid=u)
        for n, u in claims
    ]
    await history.record(session, entries)


async def advance(
    session: AsyncSession,
    node_id: int,
    instance_uuid: str,
    event: Event,
    *,
    deadline: dt.datetime | None = None,
) -> ProvisionState:
    """Apply ``event`` to the node while it holds the instance, and write both sides' outcome (OUTCOMES).
    ``deadline``: the callback deadline a WAIT sets."""
    extra: dict[str, Any] = {"deploy_deadline": deadline} if event is E.WAIT else {}
    new = await transition(session, node_id, event, holding=instance_uuid, **node_values(event), **extra)
    await _write_instances(session, [instance_uuid], instance_values(event))
    return new


async def fail(
    session: AsyncSession, node_id: int | None, instance_uuid: str, reason: str, *, free: bool = False
) -> ProvisionState | None:
    """The node goes to error (``free``: back to available, the spawn undone) with the reason; the instance
    shows the error. ``node_id`` None: the instance never reached a node, only it is marked."""
    event = E.UNDO if free else E.FAIL
    new = None
    if node_id is not None:
        new = await transition(session, node_id, event, holding=instance_uuid, **node_values(event, reason))
    await _write_instances(session, [instance_uuid], instance_values(event, reason))
    return new


async def fail_many(
    session: AsyncSession,
    nodes: Sequence[tuple[int, str | None]],
    reason: str,
    *,
    where: ColumnElement[bool] | None = None,
) -> list[int]:
    """Fail many (node, instance) pairs in constant SQL: each node that may fail (and matches ``where``,
    rechecked in the statement) goes to error, and its instance too. Returns the nodes that failed."""
    if not nodes:
        return []
    ids = [n for n, _ in nodes]
    conds: list[ColumnElement[bool]] = [
        BareMetalNode.id.in_(ids),
        BareMetalNode.provision_state.in_([s.value for s in sources(E.FAIL)]),
    ]
    if where is not None:
        conds.append(where)
    now = utcnow()
    states_now = select(BareMetalNode.id, BareMetalNode.provision_state).where(*conds).with_for_update()
    before: dict[int, str] = {r.id: r.provision_state for r in await session.execute(states_now)}  # they leave
    failed = [
        row.id
        for row in await session.execute(
            update(BareMetalNode)
            .where(*conds)
            .values(
                provision_state=target(E.FAIL, S.DEPLOYING).value,
                provision_updated_at=now,
                **node_values(E.FAIL, reason, now),
            )
            .returning(BareMetalNode.id)
        )
    ]
    await note_nodes(session, failed)
    holders = dict(nodes)
    to = target(E.FAIL, S.DEPLOYING).value
    await history.record(
        session,
        [history.Entry(n, history.Kind.PROVISION, E.FAIL, before.get(n), to, reason, holders.get(n)) for n in failed],
    )
    await _write_instances(session, [u for n in failed if (u := holders.get(n))], instance_values(E.FAIL, reason, now))
    return failed


async def release(session: AsyncSession, node_id: int, instance_uuid: str, *, failure: str | None = None) -> None:
    """Give back a node whose instance is gone (an orphan): a delete and its end, in this transaction:
    available, or error with ``failure`` when its cleanup failed. The instance (gone) is not written."""
    await transition(session, node_id, E.DELETE, holding=instance_uuid, **node_values(E.DELETE))
    if failure is None:
        await transition(session, node_id, E.CLEANED, holding=instance_uuid, **node_values(E.CLEANED))
    else:
        values = node_values(E.FAIL, failure) | {"instance_uuid": None}
        await transition(session, node_id, E.FAIL, holding=instance_uuid, **values)


async def start_clean(
    session: AsyncSession, node_id: int, instance_uuid: str | None, deadline: dt.datetime
) -> ProvisionState:
    """The node goes cleaning with the agent's ``deadline``. From ``deleting`` (``instance_uuid`` given): it
    lets go of the instance, which is deleted now. From ``clean failed`` (None): an operator's retry, the
    node leaves maintenance."""
    values = node_values(E.CLEAN) | {"deploy_deadline": deadline}
    if instance_uuid is None:
        values |= {"maintenance": False, "maintenance_reason": None, "maintenance_set_by": None}
        return await transition(session, node_id, E.CLEAN, expect=S.CLEAN_FAILED, **values)
    new = await transition(session, node_id, E.CLEAN, expect=S.DELETING, holding=instance_uuid, **values)
    await _write_instances(session, [instance_uuid], instance_values(E.CLEAN))
    return new


async def clean_callback(session: AsyncSession, node_id: int) -> ProvisionState:
    """The clean agent reported success: its deadline goes (the timeout check no longer sees the node)."""
    return await transition(session, node_id, E.CLEAN_CALLBACK, **node_values(E.CLEAN_CALLBACK))


async def finish_clean(session: AsyncSession, node_id: int) -> ProvisionState:
    """Cleaned, powered off, boot files gone: the node is available."""
    return await transition(session, node_id, E.CLEANED, expect=S.CLEANING, holding=None, **node_values(E.CLEANED))


async def _fail_boot(
    session: AsyncSession, node_id: int, event: Event, reason: str, where: ColumnElement[bool] | None
) -> bool:
    """A ramdisk boot of a node holding no instance fails (``event`` from its one source state), with the
    reason; ``where`` rechecked in the statement. False when the node was not in that state."""
    (source,) = sources(event)
    conds: list[ColumnElement[bool]] = [BareMetalNode.id == node_id, BareMetalNode.provision_state == source.value]
    if where is not None:
        conds.append(where)
    result = await session.execute(
        update(BareMetalNode)
        .where(*conds)
        .values(
            provision_state=target(event, source).value, provision_updated_at=utcnow(), **node_values(event, reason)
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    await note_nodes(session, [node_id])
    new = target(event, source)
    await history.record(session, _entries(node_id, event, source.value, new, None, node_values(event, reason)))
    return True


async def fail_clean(
    session: AsyncSession, node_id: int, reason: str, *, where: ColumnElement[bool] | None = None
) -> bool:
    """The node goes ``clean failed`` and into maintenance with the reason (``where`` rechecked in the
    statement, for the timeout check). False when it was not cleaning (or ``where`` no longer holds)."""
    return await _fail_boot(session, node_id, E.CLEAN_FAIL, reason, where)


async def start_inspect(session: AsyncSession, node_id: int, deadline: dt.datetime) -> ProvisionState:
    """The node (``available`` or ``inspect failed``, holding no instance) goes inspecting with the
    agent's ``deadline``."""
    values = node_values(E.INSPECT) | {"deploy_deadline": deadline}
    node = await session.get(BareMetalNode, node_id)
    if node is not None and node.instance_uuid is not None:
        raise InvalidState(f"node {node_id} holds instance {node.instance_uuid}; it cannot be inspected")
    return await transition(session, node_id, E.INSPECT, **values)


async def inspect_callback(session: AsyncSession, node_id: int) -> ProvisionState:
    """The inspection report is stored: the agent's deadline goes (the timeout check no longer sees it)."""
    return await transition(session, node_id, E.INSPECT_CALLBACK, **node_values(E.INSPECT_CALLBACK))


async def finish_inspect(session: AsyncSession, node_id: int) -> ProvisionState:
    """Inspected, powered off, boot files gone: the node is available (in maintenance if a rule said so)."""
    return await transition(session, node_id, E.INSPECTED, **node_values(E.INSPECTED))


async def fail_inspect(
    session: AsyncSession, node_id: int, reason: str, *, where: ColumnElement[bool] | None = None
) -> bool:
    """The node goes ``inspect failed`` with the reason (``where`` rechecked in the statement, for the
    timeout check). False when it was not inspecting (or ``where`` no longer holds)."""
    return await _fail_boot(session, node_id, E.INSPECT_FAIL, reason, where)


async def forget(session: AsyncSession, instance_uuid: str) -> None:
    """An instance no node holds (never placed, or given back already) is deleted."""
    await _write_instances(session, [instance_uuid], instance_values(E.CLEANED))


async def lose_instances(session: AsyncSession, host: str, reason: str) -> int:
    """Instances of ``host`` that believe they are placed (building, active) but no node holds: error."""
    held = select(BareMetalNode.instance_uuid).where(BareMetalNode.instance_uuid.is_not(None))
    result = await session.execute(
        update(Instance)
        .where(Instance.vm_state.in_(("building", "active")), Instance.host == host, Instance.uuid.not_in(held))
        .values(updated_at=utcnow(), **instance_values(E.FAIL, reason))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
