"""The UDP endpoint all sessions share: one socket per address family, datagrams routed by session ID."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import TYPE_CHECKING, Any, cast

import structlog

from bmd.errors import BMCUnreachable
from bmd.ipmi.protocol import AUTH_TYPE_RMCP_PLUS, PAYLOAD_TYPE_MASK, PayloadType

if TYPE_CHECKING:
    from bmd.ipmi.session import ClientStats, Session

log = structlog.get_logger(__name__)

# Pre-session answers carry session ID 0 in the header and the console's session ID at payload offset 4.
_PRE_SESSION = frozenset({PayloadType.OPEN_SESSION_RESPONSE, PayloadType.RAKP2, PayloadType.RAKP4})


class Endpoint(asyncio.DatagramProtocol):
    def __init__(self, stats: ClientStats) -> None:
        self._stats = stats
        self._routes: dict[int, Session] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._closed.done():
            self._closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) < 16 or data[4] != AUTH_TYPE_RMCP_PLUS:
            self._stats.dropped_datagrams += 1
            return
        (session_id,) = struct.unpack_from("<I", data, 6)
        if session_id == 0 and data[5] & PAYLOAD_TYPE_MASK in _PRE_SESSION and len(data) >= 24:
            (session_id,) = struct.unpack_from("<I", data, 20)
        session = self._routes.get(session_id)
        if session is None:
            self._stats.dropped_datagrams += 1
            return
        session.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("ipmi_socket_error", error=str(exc))

    def in_use(self, console_id: int) -> bool:
        return console_id in self._routes

    def register(self, session: Session) -> None:
        self._routes[session.console_id] = session

    def unregister(self, console_id: int, session: Session) -> None:
        if self._routes.get(console_id) is session:
            del self._routes[console_id]

    def send(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._transport is None:
            raise BMCUnreachable("the IPMI client is closed")
        self._transport.sendto(data, addr)

    async def close(self) -> None:
        """Close the socket and wait until it is released."""
        if self._transport is not None:
            self._transport.close()
            await self._closed


async def open_endpoint(family: int, bind: tuple[str, int], receive_buffer: int, stats: ClientStats) -> Endpoint:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        sock.bind(bind)
        _, protocol = await loop.create_datagram_endpoint(lambda: Endpoint(stats), sock=sock)
    except BaseException:
        sock.close()
        raise
    log.debug(
        "ipmi_endpoint_opened",
        local=sock.getsockname()[:2],
        receive_buffer=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )
    return protocol
