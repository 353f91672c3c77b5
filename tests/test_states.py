"""The provision state machine: the transition table, applied atomically, refusals name the state."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from sqlalchemy import select, update

from bmd.context import AppContext
from bmd.db.models import BareMetalNode
from bmd.errors import InvalidState, NotFound
from bmd.states import TRANSITIONS, Event, ProvisionState, transition
from tests.test_capabilities import add_nodes

ALL = list(itertools.product(Event, ProvisionState))


async def set_state(ctx: AppContext, node: int, state: ProvisionState, instance: str | None = None) -> None:
    async with ctx.sessionmaker.begin() as session:
        await session.execute(
            update(BareMetalNode).where(BareMetalNode.id == node).values(provision_state=state, instance_uuid=instance)
        )


async def state_of(ctx: AppContext, node: int) -> str:
    async with ctx.sessionmaker() as session:
        return str(await session.scalar(select(BareMetalNode.provision_state).where(BareMetalNode.id == node)))


@pytest.mark.parametrize(("event", "source"), ALL, ids=[f"{e}-{s}" for e, s in ALL])
async def test_every_event_from_every_state(ctx: AppContext, event: Event, source: ProvisionState) -> None:
    (node,) = await add_nodes(ctx, 1)
    await set_state(ctx, node, source)
    expected = TRANSITIONS.get((event, source))
    async with ctx.sessionmaker.begin() as session:
        if expected is None:
            with pytest.raises(InvalidState, match=f"it is {source.value}"):
                await transition(session, node, event, expect=source)
        else:
            assert await transition(session, node, event, expect=source) == expected
    assert await state_of(ctx, node) == (expected or source).value


async def test_instance_guard(ctx: AppContext) -> None:
    (node,) = await add_nodes(ctx, 1)
    await set_state(ctx, node, ProvisionState.WAIT_CALLBACK, "inst-1")
    async with ctx.sessionmaker.begin() as session:
        with pytest.raises(InvalidState, match="no longer holds instance inst-2"):
            await transition(session, node, Event.DONE, holding="inst-2")
    async with ctx.sessionmaker.begin() as session:
        assert await transition(session, node, Event.DONE, holding="inst-1") == ProvisionState.ACTIVE


async def test_unknown_node(ctx: AppContext) -> None:
    async with ctx.sessionmaker.begin() as session:
        with pytest.raises(NotFound):
            await transition(session, 424242, Event.DEPLOY)


async def test_concurrent_transitions_have_one_winner(ctx: AppContext) -> None:
    (node,) = await add_nodes(ctx, 1)

    async def try_deploy() -> bool:
        try:
            async with ctx.sessionmaker.begin() as session:
                await transition(session, node, Event.DEPLOY)
        except InvalidState:
            return False
        return True

    results = await asyncio.gather(*(try_deploy() for _ in range(20)))
    assert results.count(True) == 1
    assert await state_of(ctx, node) == "deploying"
