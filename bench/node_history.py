"""What a node's history (bmd/node_history.py) costs the writes it rides on, at fleet scale, on SQLite.

    .venv/bin/python bench/node_history.py [--nodes 100000] [--per-node 50] [--rounds 1000] [--bulk 10000]

Builds ``--nodes`` nodes with ``--per-node`` history entries each (the measured ones at the bound, KEEP),
then times, with the history written and with it switched off (the same code, ``record`` a no-op):
single transitions in their own write transaction as the conductor makes them (``inspect``: two allowed
sources, so the state it leaves is read first; ``inspected``: one), ``fail_many`` of ``--bulk`` nodes in
one transaction, and reading a page of 50 entries. Prints medians and p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd import node_history, states
from bmd.config import DatabaseSettings
from bmd.db.engine import make_engine, make_sessionmaker
from bmd.db.migrate import upgrade
from bmd.states import Event


def fill(path: Path, nodes: int, per_node: int, at_bound: int) -> None:
    """Nodes and their history straight through sqlite3 (set-up only: fast, not what is measured)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    con.executemany(
        "INSERT INTO bm_nodes (uuid, service_host, cpus, memory_mb, local_gb, pm_driver, registration_status,"
        " provision_state, maintenance, extra_specs, power_failures, boot_mode, version, created_at, updated_at)"
        " VALUES (?, 'bench', 8, 16384, 200, 'fake', 'done', 'available', 0, '{}', 0, 'bios', 1, ?, ?)",
        ((str(uuid.uuid4()), now, now) for _ in range(nodes)),
    )
    row = ("provision", "deploy", "available", "deploying", None, None, None)

    def entries() -> Any:
        for node in range(1, nodes + 1):
            for _ in range(node_history.KEEP if node <= at_bound else per_node):
                yield (node, now, *row)

    con.executemany(
        "INSERT INTO bm_node_events (bm_node_id, at, kind, event, from_state, to_state, message, instance_uuid,"
        " actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        entries(),
    )
    con.commit()
    con.close()


def summary(name: str, samples: Sequence[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name:<34} median {statistics.median(ms):8.3f} ms   p99 {p99:8.3f} ms   (n={len(ms)})"


async def timed(rounds: int, step: Callable[[int], Awaitable[None]]) -> list[float]:
    out = []
    for i in range(rounds):
        t0 = time.perf_counter()
        await step(i)
        out.append(time.perf_counter() - t0)
    return out


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bmd-bench-history-"))
    db = tmp / "bmd.db"
    engine = make_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{db}"))
    await upgrade(engine)
    t0 = time.perf_counter()
    fill(db, args.nodes, args.per_node, at_bound=max(args.bulk, 100))
    print(f"{args.nodes} nodes, {args.per_node} entries each (the first {max(args.bulk, 100)} at {node_history.KEEP})"
          f": built in {time.perf_counter() - t0:.1f} s, {db.stat().st_size / 2**20:.0f} MiB")  # fmt: skip
    sm = make_sessionmaker(engine)
    real_record = node_history.record

    async def no_record(session: Any, entries: Any) -> None:
        return None

    async def one_transition(i: int) -> None:
        node = 1 + (i // 2) % 100
        async with sm.begin() as session:
            if i % 2 == 0:
                await states.transition(session, node, Event.INSPECT, task_state="inspecting")
            else:
                await states.transition(session, node, Event.INSPECTED, task_state=None)

    for label, record in (("history on", real_record), ("history off", no_record), ("history on, again", real_record)):
        states.history.record = record  # type: ignore[assignment]
        samples = await timed(args.rounds * 2, one_transition)
        print(summary(f"transition ({label})", samples))
        bulk = list(range(1, args.bulk + 1))
        async with sm.begin() as session:
            await session.execute(
                states.update(states.BareMetalNode)
                .where(states.BareMetalNode.id.in_(bulk))
                .values(provision_state="deploying")
            )
        t0 = time.perf_counter()
        async with sm.begin() as session:
            failed = await states.fail_many(session, [(n, None) for n in bulk], "bench")
        took = time.perf_counter() - t0
        assert len(failed) == args.bulk
        print(f"{'fail_many ' + str(args.bulk) + ' (' + label + ')':<34} {took * 1000:8.1f} ms")
        async with sm.begin() as session:
            await session.execute(
                states.update(states.BareMetalNode)
                .where(states.BareMetalNode.id.in_(bulk))
                .values(provision_state="available")
            )
    states.history.record = real_record  # type: ignore[assignment]

    async def read_page(i: int) -> None:
        async with sm() as session:
            assert len(await node_history.list_events(session, 1 + i % 100, 51)) == 51

    print(summary("read a page of 50", await timed(args.rounds, read_page)))
    con = sqlite3.connect(db)
    over = con.execute(
        "SELECT count(*) FROM (SELECT bm_node_id FROM bm_node_events GROUP BY bm_node_id HAVING count(*) > ?)",
        (node_history.KEEP,),
    ).fetchone()[0]
    total = con.execute("SELECT count(*) FROM bm_node_events").fetchone()[0]
    con.close()
    print(f"entries: {total}, nodes over {node_history.KEEP}: {over}, database {db.stat().st_size / 2**20:.0f} MiB")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--per-node", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--bulk", type=int, default=10_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
