"""Interactive serial consoles: one live console per node, shared by every client attached to it.

A node's console is its IPMI Serial-over-LAN payload (:meth:`bmd.ipmi.IPMIClient.sol`) when its power
driver is ``ipmi``. It is opened when the first client attaches and closed when the last one leaves.
Everything the machine prints is appended to the node's console log (:class:`~bmd.console_log.ConsoleLogs`)
and copied to every attached client. One client is the **writer** (the first one, or the one that took
over last); the others are **readers**: what they type is refused until they take over, which makes the
previous writer a reader.

Clients are the websocket of ``GET /v1/nodes/{node}/console`` (bmd/api/console.py) and, when
``console.terminal_port_base`` is set, a plain TCP port per node on loopback (:class:`TerminalPorts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from bmd.console_log import ConsoleLogs
from bmd.drivers.power.ipmi import IPMIPower
from bmd.drivers.power.metered import unwrap
from bmd.drivers.power.registry import PowerRegistry
from bmd.errors import BMCError, BmdError, UnsupportedOperation
from bmd.ipmi import SolConsole

log = structlog.get_logger(__name__)

CLIENT_QUEUE_LIMIT = 1 << 20  # bytes a slow client may have pending before it is dropped


@dataclass(eq=False)
class Attachment:
    """One client of a node's console."""

    console: NodeConsole
    label: str
    id: int = field(default_factory=itertools.count(1).__next__)
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    pending: int = 0
    on_role: Callable[[str], None] | None = None  # told "writer"/"reader" when the role changes

    @property
    def writer(self) -> bool:
        return self.console.writer is self

    def role(self) -> str:
        return "writer" if self.writer else "reader"

    async def chunks(self) -> Any:
        """The console's output for this client, until it detaches or the console ends."""
        while True:
            chunk = await self.queue.get()
            if chunk is None:
                return
            self.pending -= len(chunk)
            yield chunk

    async def write(self, data: bytes) -> None:
        if not self.writer:
            raise PermissionError("this client is read-only: take over the console to type")
        await self.console.write(data)

    async def send_break(self) -> None:
        if not self.writer:
            raise PermissionError("this client is read-only: take over the console to send a break")
        await self.console.sol.send_break()

    def take_over(self) -> None:
        self.console.set_writer(self)

    async def detach(self) -> None:
        await self.console.detach(self)


class NodeConsole:
    """The live console of one node and its clients."""

    def __init__(self, hub: ConsoleHub, node_uuid: str, label: str, sol: SolConsole) -> None:
        self.hub = hub
        self.node_uuid = node_uuid
        self.label = label
        self.sol = sol
        self.clients: list[Attachment] = []
        self.writer: Attachment | None = None
        self.ended: str | None = None
        self._pump = asyncio.get_running_loop().create_task(self._run(), name=f"console-{label}")

    async def _run(self) -> None:
        reason = "the console closed"
        try:
            async for chunk in self.sol.read():
                await self.hub.logs.aappend(self.node_uuid, chunk)
                for client in list(self.clients):
                    if client.pending + len(chunk) > CLIENT_QUEUE_LIMIT:
                        log.info("console_client_dropped", node=self.label, client=client.label, reason="slow")
                        self._remove(client)
                        continue
                    client.pending += len(chunk)
                    client.queue.put_nowait(chunk)
            reason = self.sol.end_reason or "the BMC ended the console"
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - the console ends; clients are told why
            reason = f"the console failed: {err}"
        self.ended = reason
        for client in list(self.clients):
            self._remove(client)
        self.hub.forget(self)

    def attach(self, label: str, take_over: bool, on_role: Callable[[str], None] | None) -> Attachment:
        client = Attachment(self, label, on_role=on_role)
        self.clients.append(client)
        if self.writer is None or take_over:
            self.set_writer(client)
        log.info("console_attached", node=self.label, client=label, role=client.role(), clients=len(self.clients))
        return client

    def set_writer(self, client: Attachment) -> None:
        old, self.writer = self.writer, client
        if old is client:
            return
        for c in (old, client):
            if c is not None and c.on_role is not None:
                c.on_role(c.role())

    async def write(self, data: bytes) -> None:
        await self.sol.write(data)

    def _remove(self, client: Attachment) -> None:
        if client in self.clients:
            self.clients.remove(client)
        client.queue.put_nowait(None)
        if self.writer is client:
            self.writer = None

    async def detach(self, client: Attachment) -> None:
        self._remove(client)
        log.info("console_detached", node=self.label, client=client.label, clients=len(self.clients))
        if not self.clients:
            await self.close()

    async def close(self) -> None:
        self.hub.forget(self)
        for client in list(self.clients):
            self._remove(client)
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._pump
        await self.sol.close()


class ConsoleHub:
    """Every live node console of the service."""

    def __init__(self, power: PowerRegistry, logs: ConsoleLogs) -> None:
        self.power = power
        self.logs = logs
        self.consoles: dict[str, NodeConsole] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    async def attach(
        self, node: Any, label: str, *, take_over: bool = False, on_role: Callable[[str], None] | None = None
    ) -> Attachment:
        """Attach a client to ``node``'s console, opening it first when no one else has it open."""
        lock = self._opening.setdefault(node.uuid, asyncio.Lock())
        async with lock:
            console = self.consoles.get(node.uuid)
            if console is None or console.ended:
                console = await self._open(node)
                self.consoles[node.uuid] = console
            return console.attach(label, take_over, on_role)

    async def _open(self, node: Any) -> NodeConsole:
        metered, access = self.power.for_node(node)
        driver = unwrap(metered)  # SOL is the IPMI client's own session, not a timed power verb
        if not isinstance(driver, IPMIPower):
            raise UnsupportedOperation(
                f"node {node.name or node.uuid}: power driver {node.pm_driver!r} has no serial console "
                "(Serial over LAN needs the ipmi driver)"
            )
        label = node.name or node.uuid
        # take_over: bmd is the node's console server; a stale payload (an earlier bmd, a crashed client)
        # must not lock the operators out.
        sol = await driver.client.open_sol(driver.target(access), take_over=True)
        log.info("console_opened", node=label, bmc=sol.label)
        await self.logs.aappend(node.uuid, f"\n[bmd: serial console attached at {sol.label}]\n")
        return NodeConsole(self, node.uuid, label, sol)

    def forget(self, console: NodeConsole) -> None:
        if self.consoles.get(console.node_uuid) is console:
            del self.consoles[console.node_uuid]

    async def close(self) -> None:
        for console in list(self.consoles.values()):
            await console.close()


def describe(err: BaseException) -> str:
    if isinstance(err, BmdError | BMCError):
        return str(err)
    return f"{type(err).__name__}: {err}"


class TerminalServer:
    """``console.terminal_port``: the same consoles on a plain TCP port of a loopback address.

    A client's first line is ``<API token> <node> [take-over]`` (the node by id, uuid or name); bmd answers
    with one notice line, then the connection carries the console's raw bytes both ways until either side
    closes it. What a reader types is dropped (it is told once).
    """

    FIRST_LINE_LIMIT = 1024
    FIRST_LINE_TIMEOUT = 10.0

    def __init__(
        self, hub: ConsoleHub, sessionmaker: Any, authorize: Callable[[str], Awaitable[bool]], host: str, port: int
    ) -> None:
        self.hub = hub
        self.sessionmaker = sessionmaker
        self.authorize = authorize  # token -> may it attach (an operator's, as the websocket asks)
        self.host, self.port = host, port
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connected, self.host, self.port, limit=self.FIRST_LINE_LIMIT)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("console_terminal_listening", host=self.host, port=self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.server is not None:
            await self.server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        peer = writer.get_extra_info("peername")
        label = f"tcp:{peer[0]}:{peer[1]}" if peer else "tcp"
        try:
            await self._serve(reader, writer, label)
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str) -> None:

        from bmd.db import nodes as q

        def say(text: str) -> None:
            writer.write(f"[bmd: {text}]\r\n".encode())

        try:
            async with asyncio.timeout(self.FIRST_LINE_TIMEOUT):
                first = await reader.readline()
        except (TimeoutError, ValueError):
            say("expected a first line: <API token> <node> [take-over]")
            return
        words = first.decode(errors="replace").split()
        if len(words) not in (2, 3) or (len(words) == 3 and words[2] != "take-over"):
            say("expected a first line: <API token> <node> [take-over]")
            return
        if not await self.authorize(words[0]):
            log.info("console_terminal_refused", client=label, reason="bad token")
            say("a valid API token (role operator or above) is required")
            return
        roles: asyncio.Queue[str] = asyncio.Queue()
        try:
            async with self.sessionmaker() as session:
                node = await q.get_node(session, words[1])
            client = await self.hub.attach(node, label, take_over=len(words) == 3, on_role=roles.put_nowait)
        except BmdError as err:
            say(str(err))
            return
        try:
            say(f"attached to {client.console.label} as {client.role()}")
            await writer.drain()
            while not roles.empty():
                roles.get_nowait()  # the role at attach time was just told

            async def output() -> None:
                async for chunk in client.chunks():
                    writer.write(chunk)
                    await writer.drain()
                say(client.console.ended or "detached")

            async def typing() -> None:
                told = False
                while data := await reader.read(4096):
                    if not roles.empty():
                        say(f"you are now the console's {roles.get_nowait()}")
                    try:
                        await client.write(data)
                    except PermissionError as err:
                        if not told:
                            say(str(err))
                            told = True

            tasks = [asyncio.create_task(output()), asyncio.create_task(typing())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        finally:
            await client.detach()
