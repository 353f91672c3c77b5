"""``tcp`` console interface ("tcp-serial"): the node's serial console is a TCP stream at
``(host of its pm_address, terminal_port)``.

That is how the lab's QEMU machines serve their serial port (``-chardev socket,server=on,wait=off`` on
the lab BMC's own address), and how a terminal server or a ``socat`` in front of a BMC's serial port can
serve one. A node without a ``terminal_port`` has no console here: bmd records nothing for it (not an
error: the console is never needed to deploy).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import TYPE_CHECKING

from bmd.drivers.base import ConsoleInterface, NodeFacts
from bmd.errors import InvalidInput

if TYPE_CHECKING:
    from bmd.config import Settings


def address_host(pm_address: str | None) -> str | None:
    """The host part of a pm_address: ``host``, ``host:port``, ``[v6]:port``, a bare IPv6 literal or a URL
    (Redfish). None when there is none. Cheap, no I/O."""
    text = (pm_address or "").strip()
    if not text:
        return None
    if "://" in text:
        return urllib.parse.urlsplit(text).hostname or None
    if text.startswith("["):
        host, bracket, _ = text[1:].partition("]")
        return host or None if bracket else None
    if text.count(":") == 1:
        return text.partition(":")[0] or None
    return text


class TcpConsole(ConsoleInterface):
    name = "tcp-serial"

    def __init__(self, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> TcpConsole:
        return cls(connect_timeout=settings.console.connect_timeout)

    def validate(self, node: NodeFacts) -> None:
        if node.terminal_port is not None and address_host(node.pm_address) is None:
            raise InvalidInput(
                f"node {node.id}: terminal_port is set but pm_address names no host to reach the console at",
                field="pm_address",
            )

    def target(self, node: NodeFacts) -> tuple[str, int] | None:
        host = address_host(node.pm_address)
        if node.terminal_port is None or host is None:
            return None
        return host, node.terminal_port

    def endpoint(self, node: NodeFacts) -> str | None:
        target = self.target(node)
        if target is None:
            return None
        host, port = target
        return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"

    async def start_console(self, node: NodeFacts) -> str:
        endpoint = self.endpoint(node)
        if endpoint is None:
            raise InvalidInput(f"node {node.id} has no terminal_port: no serial console to attach to", "terminal_port")
        return endpoint

    async def stop_console(self, node: NodeFacts) -> None:
        return None  # nothing is held between connections

    async def connect(self, node: NodeFacts) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        target = self.target(node)
        if target is None:
            raise InvalidInput(f"node {node.id} has no terminal_port: no serial console to read", "terminal_port")
        async with asyncio.timeout(self.connect_timeout):
            return await asyncio.open_connection(*target, limit=1 << 16)
