"""A lab VM's serial console, served by the lab worker so that it outlives the VM's process.

QEMU connects its serial port to a Unix socket the relay listens on (``-chardev socket,path=...``); the
relay appends every byte to the machine's ``serial.log`` and copies it to every client of its TCP port
``(host, port)`` — the node's ``terminal_port``. Input from a client goes to the VM. A VM that restarts
(reset, power cycle) or powers off just reconnects or leaves: the TCP clients stay connected, so a recorder
sees the deploy ramdisk and the deployed image's first lines in one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

CLIENT_BUFFER_LIMIT = 1 << 20  # a client that lets more than this pile up is dropped


class ConsoleRelay:
    def __init__(self, name: str, host: str, port: int, log_path: Path, socket_path: Path) -> None:
        self.name = name
        self.host, self.port = host, port
        self.log_path = log_path
        self.socket_path = socket_path
        self.clients: set[asyncio.StreamWriter] = set()
        self.listeners: list[Callable[[bytes], None]] = []  # in-process readers: the BMC's SOL
        self.vm: asyncio.StreamWriter | None = None
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._servers.append(await asyncio.start_unix_server(self._vm_connected, path=str(self.socket_path)))
        self._servers.append(await asyncio.start_server(self._client_connected, self.host, self.port))

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _vm_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track()
        old, self.vm = self.vm, writer
        if old is not None:
            old.close()
        try:
            with open(self.log_path, "ab") as logfile:  # noqa: ASYNC230 - a local append, a few KiB at a time
                while chunk := await reader.read(65536):
                    logfile.write(chunk)
                    logfile.flush()
                    for listener in list(self.listeners):
                        listener(chunk)
                    for client in list(self.clients):
                        if client.transport.get_write_buffer_size() > CLIENT_BUFFER_LIMIT:
                            self._drop(client)
                        else:
                            client.write(chunk)
        except (OSError, ConnectionError):
            pass
        finally:
            if self.vm is writer:
                self.vm = None
            writer.close()

    async def _client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track()
        self.clients.add(writer)
        try:
            while data := await reader.read(4096):
                if self.vm is not None:
                    self.vm.write(data)  # typing on the console reaches the VM's serial port
        except (OSError, ConnectionError):
            pass
        finally:
            self._drop(writer)

    # -- the serial line, for the BMC's SOL (bmd.lab.serial.SerialLine) -----------------------------
    def listen(self, listener: Callable[[bytes], None]) -> None:
        self.listeners.append(listener)

    def unlisten(self, listener: Callable[[bytes], None]) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def write(self, data: bytes) -> None:
        if self.vm is not None:
            self.vm.write(data)

    def send_break(self) -> None:
        pass  # a plain socket chardev carries no break

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self.clients.discard(writer)
        writer.close()

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in [*self.clients, *([self.vm] if self.vm else [])]:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        self.clients.clear()
        with contextlib.suppress(OSError):
            self.socket_path.unlink()
