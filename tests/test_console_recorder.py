"""The console recorder against real TCP servers on 127.0.0.1 that the tests run: one that prints lines,
one that closes and comes back, one that floods, one that accepts and hangs, and none at all. What they
send lands in the node's console log (after a header naming the deploy), the recorder reconnects, the log
stays bounded, one peer never holds up another, and a recording stops when the deploy ends (a view on the
bus "nodes") or when bmd stops."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bmd.bus import Bus
from bmd.console_log import ConsoleLogs
from bmd.console_recorder import CHUNK, ConsoleRecorder, Recording
from bmd.drivers.base import NodeFacts
from bmd.drivers.console.tcp import TcpConsole, address_host
from bmd.drivers.factory import DriverFactory
from bmd.errors import ConfigError, InvalidInput
from bmd.node_events import TOPIC, NodeView
from bmd.secrets import load_secret_box
from tests.conftest import make_settings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(handler: Handler, port: int = 0) -> AsyncIterator[tuple[asyncio.Server, int]]:
    """A TCP server on 127.0.0.1 (bounded: closed, and its connections with it, at the end)."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", port, reuse_address=True)
    try:
        yield server, server.sockets[0].getsockname()[1]
    finally:
        for w in writers:
            w.close()
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


async def printer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for i in range(5):
        writer.write(f"console line {i}\n".encode())
        await writer.drain()
    await reader.read()  # then stay connected until the recorder goes


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()  # accept, say nothing, never close


async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    block = (b"y" * 79 + b"\n") * 820
    while True:
        writer.write(block)
        await writer.drain()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def facts(node_id: int, port: int) -> NodeFacts:
    return NodeFacts(id=node_id, pm_driver="fake", pm_address="127.0.0.1:623", terminal_port=port)


@pytest.fixture
async def recorder(tmp_path: Path) -> AsyncIterator[ConsoleRecorder]:
    settings = make_settings(tmp_path, console={"grace": 0.2, "retry_max": 0.3, "read_rate": 1 << 20})
    rec = ConsoleRecorder(ConsoleLogs(tmp_path / "console", max_bytes=65536), TcpConsole(1.0), Bus(), settings)
    try:
        yield rec
    finally:
        async with asyncio.timeout(10):
            await rec.close()


async def until(predicate: Callable[[], bool], deadline: float = 15.0) -> None:
    async with asyncio.timeout(deadline):
        while not predicate():  # noqa: ASYNC110 - polls what the recorder's tasks and the peers change
            await asyncio.sleep(0.02)


async def ended(rec: Recording, deadline: float = 10.0) -> None:
    async with asyncio.timeout(deadline):
        await rec.done.wait()


def start(recorder: ConsoleRecorder, node_id: int, port: int) -> tuple[Recording, str, str]:
    node_uuid, instance = str(uuid.uuid4()), str(uuid.uuid4())
    rec = recorder.start(facts(node_id, port), node_uuid, instance, version=5)
    assert rec is not None
    return rec, node_uuid, instance


def test_the_console_host_is_the_host_of_pm_address() -> None:
    assert address_host("127.1.0.3:623") == "127.1.0.3"
    assert address_host("127.1.0.3") == "127.1.0.3"
    assert address_host("[::1]:623") == "::1"
    assert address_host("fd00::5") == "fd00::5"
    assert address_host("https://bmc.example:8443/redfish/v1") == "bmc.example"
    assert address_host("") is None and address_host(None) is None
    console = TcpConsole()
    assert console.endpoint(facts(1, 4000)) == "tcp://127.0.0.1:4000"
    assert console.endpoint(NodeFacts(id=1, pm_driver="fake", pm_address="x")) is None  # no terminal_port


async def test_the_console_interface_is_chosen_by_config(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, driver={"console_interface": "tcp"})
    drivers = DriverFactory(settings, load_secret_box(settings.secrets.key_file))
    try:
        console = drivers.for_node(facts(1, 4000)).console
        assert isinstance(console, TcpConsole) and console.name == "tcp-serial"
        assert await console.start_console(facts(1, 4000)) == "tcp://127.0.0.1:4000"
        no_host = NodeFacts(id=2, pm_driver="fake", pm_address=" ", terminal_port=4000, interfaces=1)
        with pytest.raises(InvalidInput) as err:
            console.validate(no_host)
        assert err.value.field == "pm_address"
    finally:
        await drivers.close()
    bad = make_settings(tmp_path, driver={"console_interface": "serial-over-lan"})
    with pytest.raises(
        ConfigError, match=r"driver.console_interface: unknown name .*known console interfaces: none, tcp"
    ):
        DriverFactory(bad, load_secret_box(bad.secrets.key_file))


async def test_what_the_console_prints_lands_after_a_header(recorder: ConsoleRecorder) -> None:
    async with serve(printer) as (_, port):
        rec, node_uuid, instance = start(recorder, 1, port)
        await until(lambda: b"console line 4\n" in recorder.logs.read(node_uuid))
        recorder.end(1, grace=0)
        await ended(rec)
    text = recorder.logs.read(node_uuid)
    header, _, rest = text.partition(b"console line 0")
    assert f"deploy of instance {instance}".encode() in header and rest.startswith(b"\nconsole line 1\n")
    assert 1 not in recorder.recordings

    # A new deploy of the node: a new header below the old content.
    async with serve(printer) as (_, port):
        second = str(uuid.uuid4())
        again = recorder.start(facts(1, port), node_uuid, second, version=9)
        assert again is not None
        await until(lambda: recorder.logs.read(node_uuid).count(b"console line 4\n") == 2)
        recorder.end(1, grace=0)
        await ended(again)
    text = recorder.logs.read(node_uuid)
    assert text.index(instance.encode()) < text.index(b"console line 0") < text.index(second.encode())


async def test_nothing_listening_is_retried_and_a_peer_that_closes_is_reconnected(
    recorder: ConsoleRecorder,
) -> None:
    port = free_port()
    rec, node_uuid, _ = start(recorder, 2, port)  # nothing listens yet: the recorder retries

    boots = iter(range(1000))

    async def one_boot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"boot %d\n" % next(boots))
        await writer.drain()
        writer.close()  # the machine powers off

    async with serve(one_boot, port):
        await until(lambda: rec.connections >= 2)  # it came back after the peer closed
    await until(lambda: b"boot 1\n" in recorder.logs.read(node_uuid))
    assert b"boot 0\nboot 1\n" in recorder.logs.read(node_uuid)
    count = rec.connections
    async with serve(printer, port):  # down for a while, then up again (the machine rebooted)
        await until(lambda: b"console line 4\n" in recorder.logs.read(node_uuid))
    assert rec.connections > count and not rec.done.is_set()
    recorder.end(2, grace=0)
    await ended(rec)


async def test_a_flood_is_bounded_and_a_hanging_peer_holds_up_no_one(tmp_path: Path) -> None:
    rate = 256 * 1024
    settings = make_settings(tmp_path, console={"grace": 0.2, "retry_max": 0.3, "read_rate": rate})
    logs = ConsoleLogs(tmp_path / "console", max_bytes=65536)
    recorder = ConsoleRecorder(logs, TcpConsole(1.0), Bus(), settings)
    loop = asyncio.get_running_loop()
    try:
        async with serve(flood) as (_, flood_port), serve(hang) as (_, hang_port), serve(printer) as (_, port):
            began = loop.time()
            flooded, flood_uuid, _ = start(recorder, 1, flood_port)
            hung, hung_uuid, _ = start(recorder, 2, hang_port)
            printed, printed_uuid, _ = start(recorder, 3, port)
            await until(lambda: b"console line 4\n" in logs.read(printed_uuid))
            await until(lambda: flooded.bytes_read > 4 * 65536)
            assert hung.connections == 1 and hung.bytes_read == 0 and not hung.done.is_set()
            size = len(logs.read(flood_uuid))
            assert size <= 65536 + CHUNK and logs.read(flood_uuid).startswith(b"[bmd: older console output dropped]")
            # read at most `rate` bytes a second (the 10 s window allows one chunk ahead)
            assert flooded.bytes_read <= rate * (loop.time() - began) + 2 * CHUNK
            for node_id in (1, 2, 3):
                recorder.end(node_id, grace=0)
            for rec in (flooded, hung, printed):
                await ended(rec)
        assert b"deploy of instance" in logs.read(hung_uuid) and recorder.recordings == {}
    finally:
        async with asyncio.timeout(10):
            await recorder.close()


async def test_a_recording_ends_when_the_bus_shows_the_deploy_over(recorder: ConsoleRecorder) -> None:
    async with serve(hang) as (_, port):
        rec, node_uuid, instance = start(recorder, 4, port)
        await until(lambda: rec.connections == 1)
        stale = NodeView(node_id=4, version=5, uuid=node_uuid, instance_uuid=instance, provision_state="active")
        recorder.observe([stale])  # a view older than the deploy: ignored
        recorder.observe([NodeView(4, 6, node_uuid, None, instance, "wait_callback")])  # still deploying
        recorder.observe([NodeView(5, 9, str(uuid.uuid4()), None, None, "available")])  # another node
        assert rec.end_at is None
        recorder.bus.publish(TOPIC, [NodeView(4, 7, node_uuid, None, instance, "active")])
        await ended(rec)  # after console.grace
    assert rec.end_at is not None


@pytest.mark.parametrize(("purpose", "ongoing", "header"), [("clean", "cleaning", "clean"),
                                                           ("inspect", "inspecting", "inspection")])  # fmt: skip
async def test_a_clean_or_an_inspection_is_recorded_until_the_node_leaves_it(
    recorder: ConsoleRecorder, purpose: Any, ongoing: str, header: str
) -> None:
    async with serve(hang) as (_, port):
        node_uuid = str(uuid.uuid4())
        rec = recorder.start(facts(4, port), node_uuid, None, version=5, purpose=purpose)
        assert rec is not None
        await until(lambda: rec.connections == 1)
        recorder.observe([NodeView(4, 6, node_uuid, None, None, ongoing)])  # its boot goes on
        assert rec.end_at is None
        recorder.observe([NodeView(4, 7, node_uuid, None, None, "wait_callback")])  # not this boot's state
        assert rec.end_at is not None
        await ended(rec)
    log = recorder.logs.read(node_uuid).decode()
    assert f"===== bmd: {header} on node {node_uuid}" in log


async def test_bmd_stopping_cancels_and_awaits_every_recording(recorder: ConsoleRecorder) -> None:
    async with serve(hang) as (_, hang_port):
        hung, _, _ = start(recorder, 1, hang_port)
        retrying, _, _ = start(recorder, 2, free_port())
        await until(lambda: hung.connections == 1)
        async with asyncio.timeout(10):
            await recorder.close()
        assert hung.task is not None and hung.task.done() and retrying.task is not None and retrying.task.done()
        assert recorder.start(facts(3, hang_port), str(uuid.uuid4()), str(uuid.uuid4())) is None
