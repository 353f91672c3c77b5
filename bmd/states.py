"""The provision state machine of a node: one table of allowed transitions, applied atomically in SQL.

    available --deploy--> deploying --wait--> wait_callback --done--> active
    active/error/wait_callback/deploying --delete--> deleting --cleaned--> available
    deploying/wait_callback/deleting --fail--> error        deploying --undo--> available

Every transition is one ``UPDATE ... WHERE id = :id AND provision_state IN (:sources)``: it is stored
before anything is acted on, and two actors can never both win the same transition. A refused transition
raises InvalidState naming the node's current state (the API's 409).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.db.models import BareMetalNode, utcnow
from bmd.errors import InvalidState, NotFound
from bmd.node_events import note_nodes


class ProvisionState(enum.StrEnum):
    AVAILABLE = "available"
    DEPLOYING = "deploying"
    WAIT_CALLBACK = "wait_callback"
    ACTIVE = "active"
    DELETING = "deleting"
    ERROR = "error"


class Event(enum.StrEnum):
    DEPLOY = "deploy"
    WAIT = "wait"
    DONE = "done"
    DELETE = "delete"
    CLEANED = "cleaned"
    FAIL = "fail"
    UNDO = "undo"


S, E = ProvisionState, Event

# (event, source) -> target. The only place transitions are defined.
TRANSITIONS: dict[tuple[Event, ProvisionState], ProvisionState] = {
    (E.DEPLOY, S.AVAILABLE): S.DEPLOYING,
    (E.WAIT, S.DEPLOYING): S.WAIT_CALLBACK,
    (E.DONE, S.WAIT_CALLBACK): S.ACTIVE,
    (E.DELETE, S.ACTIVE): S.DELETING,
    (E.DELETE, S.ERROR): S.DELETING,
    (E.DELETE, S.WAIT_CALLBACK): S.DELETING,
    (E.DELETE, S.DEPLOYING): S.DELETING,
    (E.DELETE, S.DELETING): S.DELETING,  # a second delete, or one resumed after a crash, finishes the job
    (E.CLEANED, S.DELETING): S.AVAILABLE,
    (E.FAIL, S.DEPLOYING): S.ERROR,
    (E.FAIL, S.WAIT_CALLBACK): S.ERROR,
    (E.FAIL, S.DELETING): S.ERROR,
    (E.UNDO, S.DEPLOYING): S.AVAILABLE,
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
        result = await session.execute(
            update(BareMetalNode).where(*conds).values(provision_state=new.value, provision_updated_at=now, **values)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            await note_nodes(session, [node_id])  # the scheduler's view of the node, once this commits
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


def deadline_after(seconds: float) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)
