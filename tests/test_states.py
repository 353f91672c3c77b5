"""The provision state machine: the transition table, applied atomically, refusals name the state."""

from __future__ import annotations

import ast
import asyncio
import itertools
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bmd.context import AppContext
from bmd.db.models import BareMetalNode, Instance, utcnow
from bmd.errors import InvalidState, NotFound
from bmd.states import (
    TRANSITIONS,
    Event,
    ProvisionState,
    advance,
    claim,
    claimed_instance,
    fail,
    fail_many,
    release,
    transition,
)
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


# -- the verbs: node and instance written together, from one table --------------------------------------

INST = "inst-1"


async def placed(ctx: AppContext, state: ProvisionState, vm_state: str = "building", task: str | None = "t0") -> int:
    """A node in ``state`` holding instance INST (vm_state/task_state as given)."""
    (node,) = await add_nodes(ctx, 1)
    await set_state(ctx, node, state, INST)
    async with ctx.sessionmaker.begin() as session:
        session.add(
            Instance(uuid=INST, vm_state=vm_state, task_state=task, image_properties={}, hints={}, deploy_info={})
        )
    return node


async def outcome(ctx: AppContext, node: int) -> tuple[str, str | None, str | None, str, str | None, str | None]:
    """(node state, node task, node instance, instance vm_state, instance task, instance last_error)."""
    async with ctx.sessionmaker() as session:
        n = await session.get(BareMetalNode, node)
        i = await session.scalar(select(Instance).where(Instance.uuid == INST))
        assert n is not None and i is not None
        return n.provision_state, n.task_state, n.instance_uuid, i.vm_state, i.task_state, i.last_error


S = ProvisionState
ADVANCES = [  # event, source -> node (state, task, holds), instance (vm_state, task)
    (Event.WAIT, S.DEPLOYING, (S.WAIT_CALLBACK, "wait_callback", INST), ("building", "wait_callback")),
    (Event.CALLBACK, S.WAIT_CALLBACK, (S.WAIT_CALLBACK, "finishing_deploy", INST), ("building", "t0")),
    (Event.DONE, S.WAIT_CALLBACK, (S.ACTIVE, None, INST), ("active", None)),
    (Event.DELETE, S.ACTIVE, (S.DELETING, "deleting", INST), ("building", "deleting")),
    (Event.DELETE, S.ERROR, (S.DELETING, "deleting", INST), ("building", "deleting")),
    (Event.CLEANED, S.DELETING, (S.AVAILABLE, None, None), ("deleted", None)),
]


@pytest.mark.parametrize(
    ("event", "source", "node_after", "inst_after"), ADVANCES, ids=[f"{a[0]}-{a[1]}" for a in ADVANCES]
)
async def test_advance_writes_node_and_instance_together(
    ctx: AppContext,
    event: Event,
    source: S,
    node_after: tuple[S, str | None, str | None],
    inst_after: tuple[str, str | None],
) -> None:
    node = await placed(ctx, source)
    async with ctx.sessionmaker.begin() as session:
        assert await advance(session, node, INST, event) == node_after[0]
    assert await outcome(ctx, node) == (*node_after, *inst_after, None)


@pytest.mark.parametrize(
    ("free", "source", "after"),
    [
        (False, S.DEPLOYING, (S.ERROR, None, INST)),
        (False, S.WAIT_CALLBACK, (S.ERROR, None, INST)),
        (False, S.DELETING, (S.ERROR, None, INST)),
        (True, S.DEPLOYING, (S.AVAILABLE, None, None)),
    ],
)
async def test_fail_records_the_reason_on_both(
    ctx: AppContext, free: bool, source: S, after: tuple[S, None, str | None]
) -> None:
    node = await placed(ctx, source)
    async with ctx.sessionmaker.begin() as session:
        assert await fail(session, node, INST, "it broke", free=free) == after[0]
    assert await outcome(ctx, node) == (*after, "error", None, "it broke")
    async with ctx.sessionmaker() as session:
        row = await session.get(BareMetalNode, node)
        assert row is not None and row.last_error == "it broke" and row.deploy_deadline is None


ILLEGAL = [(e, s) for e, s in itertools.product(Event, S) if (e, s) not in TRANSITIONS and e is not Event.DEPLOY]


@pytest.mark.parametrize(("event", "source"), ILLEGAL, ids=[f"{e}-{s}" for e, s in ILLEGAL])
async def test_an_illegal_advance_is_refused_naming_the_state_and_writes_nothing(
    ctx: AppContext, event: Event, source: S
) -> None:
    node = await placed(ctx, source)
    before = await outcome(ctx, node)
    with pytest.raises(InvalidState, match=f"it is {source.value}") as refused:
        async with ctx.sessionmaker.begin() as session:
            await advance(session, node, INST, event)
    assert refused.value.http_status == 409
    assert await outcome(ctx, node) == before


async def test_a_node_that_no_longer_holds_the_instance_is_refused(ctx: AppContext) -> None:
    node = await placed(ctx, S.WAIT_CALLBACK)
    before = await outcome(ctx, node)
    for verb in (
        lambda s: advance(s, node, "inst-2", Event.DONE),
        lambda s: fail(s, node, "inst-2", "late"),
        lambda s: release(s, node, "inst-2"),
    ):
        with pytest.raises(InvalidState, match="no longer holds instance inst-2"):
            async with ctx.sessionmaker.begin() as session:
                await verb(session)
    assert await outcome(ctx, node) == before


async def test_claim_takes_only_a_free_node_and_writes_its_instance_state(ctx: AppContext) -> None:
    free, taken = await add_nodes(ctx, 2)
    await set_state(ctx, taken, S.ACTIVE, "someone")
    async with ctx.sessionmaker.begin() as session:
        assert await claim(session, [(free, INST), (taken, "inst-2")], utcnow()) == 1
    async with ctx.sessionmaker() as session:
        row = await session.get(BareMetalNode, free)
        assert row is not None and (row.provision_state, row.task_state, row.instance_uuid) == (
            "deploying",
            "spawning",
            INST,
        )
    assert claimed_instance() == {"vm_state": "building", "task_state": "spawning"}


async def test_fail_many_fails_only_the_nodes_that_may_fail(ctx: AppContext) -> None:
    nodes = await add_nodes(ctx, 3)
    for node, state in zip(nodes, (S.WAIT_CALLBACK, S.DEPLOYING, S.ACTIVE), strict=True):
        await set_state(ctx, node, state, f"i-{node}")
    async with ctx.sessionmaker.begin() as session:
        for node in nodes:
            session.add(Instance(uuid=f"i-{node}", vm_state="building", image_properties={}, hints={}, deploy_info={}))
    async with ctx.sessionmaker.begin() as session:
        failed = await fail_many(session, [(n, f"i-{n}") for n in nodes], "timed out")
        assert sorted(failed) == nodes[:2]
    async with ctx.sessionmaker() as session:
        rows = {i.uuid: (i.vm_state, i.last_error) for i in (await session.execute(select(Instance))).scalars()}
    assert rows == {
        f"i-{nodes[0]}": ("error", "timed out"),
        f"i-{nodes[1]}": ("error", "timed out"),
        f"i-{nodes[2]}": ("building", None),
    }
    assert [await state_of(ctx, n) for n in nodes] == ["error", "error", "active"]


@pytest.mark.parametrize(("failure", "after"), [(None, "available"), ("cleanup failed", "error")])
async def test_release_gives_an_orphan_node_back(ctx: AppContext, failure: str | None, after: str) -> None:
    (node,) = await add_nodes(ctx, 1)
    await set_state(ctx, node, S.ACTIVE, "gone")
    async with ctx.sessionmaker.begin() as session:
        await release(session, node, "gone", failure=failure)
    async with ctx.sessionmaker() as session:
        row = await session.get(BareMetalNode, node)
        assert row is not None and (row.provision_state, row.instance_uuid, row.last_error) == (after, None, failure)


# -- the states module is the only writer ------------------------------------------------------------

STATE_COLUMNS = {"provision_state", "vm_state", "task_state"}
BMD = Path(__file__).resolve().parents[1] / "bmd"
READS = {"bmd/db/nodes.py"}  # FREE_WHEN: the definition of a free node, a predicate, not a write
ANSWERS = ("bmd/api/", "bmd/cli/")  # their dict literals are JSON answers and displays, not rows


def state_writes(path: Path, rows: bool = True) -> list[str]:
    """Where the module writes a state column: an attribute assignment, ``.values(...)`` or a model's
    constructor keyword, or (``rows``) a dict literal's key (rows and ``**values``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [
                f"{t.attr} = (line {node.lineno})"
                for t in targets
                if isinstance(t, ast.Attribute) and t.attr in STATE_COLUMNS
            ]
        elif isinstance(node, ast.Call):
            func = node.func
            writer = (isinstance(func, ast.Attribute) and func.attr == "values") or (
                isinstance(func, ast.Name) and func.id in {"BareMetalNode", "Instance"}
            )
            if writer:
                found += [f"{k.arg}= (line {node.lineno})" for k in node.keywords if k.arg in STATE_COLUMNS]
        elif isinstance(node, ast.Dict) and rows:
            found += [
                f"{k.value!r}: (line {node.lineno})"
                for k in node.keys
                if isinstance(k, ast.Constant) and k.value in STATE_COLUMNS
            ]
    return found


def test_no_module_outside_the_states_module_writes_provisioning_state() -> None:
    writers = {}
    for path in sorted(BMD.rglob("*.py")):
        rel = str(path.relative_to(BMD.parent))
        if rel == "bmd/states.py" or rel in READS or "/migrations/" in rel:
            continue
        if found := state_writes(path, rows=not rel.startswith(ANSWERS)):
            writers[rel] = found
    assert writers == {}
    assert state_writes(BMD / "states.py")  # the check sees writes where they are
