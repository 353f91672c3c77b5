"""``bmd node console NODE``: attach the terminal to a node's serial console (the API's websocket).

Raw mode when stdin is a terminal (every key goes to the machine, Ctrl-C included); ``~.`` at the start
of a line detaches (``~~`` sends one ``~``). The console's bytes go to stdout as they are; bmd's notices
(role changes, errors, the end) go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import termios
import tty
from typing import Any
from urllib.parse import quote

import aiohttp

from bmd.cli.client import ApiError
from bmd.errors import BmdError

ESCAPE = ord("~")


class EscapeFilter:
    """Finds ``~.`` at the start of a line in what is typed; returns what to send."""

    def __init__(self) -> None:
        self.line_start = True
        self.held = False  # a '~' at line start, waiting for the next key
        self.detach = False

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self.held:
                self.held = False
                if b == ord("."):
                    self.detach = True
                    return bytes(out)
                if b == ESCAPE:  # "~~": one literal tilde
                    out.append(ESCAPE)
                    self.line_start = False
                    continue
                out.append(ESCAPE)
            if self.line_start and b == ESCAPE:
                self.held = True
                continue
            out.append(b)
            self.line_start = b in (0x0D, 0x0A)
        return bytes(out)


def _notice(text: str) -> None:
    sys.stderr.write(f"\r\n[bmd: {text}]\r\n")
    sys.stderr.flush()


async def attach(url: str, token: str | None, node: str, take_over: bool) -> int:
    """Run the console until ``~.``, end of input or the end of the console; the exit code."""
    path = f"{url.rstrip('/')}/v1/nodes/{quote(node, safe='')}/console" + ("?take_over=1" if take_over else "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    fd = sys.stdin.fileno()
    raw = os.isatty(fd)
    loop = asyncio.get_running_loop()
    typed: asyncio.Queue[bytes] = asyncio.Queue()
    out = sys.stdout.buffer
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(path, headers=headers, heartbeat=30.0)
        except aiohttp.WSServerHandshakeError as err:
            raise ApiError(err.status, {"message": f"cannot attach to the console of {node}: {err.message}"}) from err
        except aiohttp.ClientError as err:
            raise BmdError(f"cannot reach bmd at {url}: {err}") from err
        saved = termios.tcgetattr(fd) if raw else None
        try:
            if raw:
                tty.setraw(fd)
            loop.add_reader(fd, lambda: typed.put_nowait(os.read(fd, 4096)))
            return await _session(ws, typed, out, node)
        finally:
            loop.remove_reader(fd)
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            await ws.close()


async def _session(ws: aiohttp.ClientWebSocketResponse, typed: asyncio.Queue[bytes], out: Any, node: str) -> int:
    escape = EscapeFilter()
    result = 0

    async def keyboard() -> None:
        while True:
            data = await typed.get()
            if not data:  # end of input
                return
            send = escape.feed(data)
            if send:
                await ws.send_bytes(send)
            if escape.detach:
                return

    keys = asyncio.create_task(keyboard())
    receive = asyncio.create_task(_receive(ws, out, node))
    try:
        done, _ = await asyncio.wait((keys, receive), return_when=asyncio.FIRST_COMPLETED)
        if receive in done:
            result = receive.result()
        else:
            _notice("detached" if escape.detach else "end of input: detached")
    finally:
        for task in (keys, receive):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return result


async def _receive(ws: aiohttp.ClientWebSocketResponse, out: Any, node: str) -> int:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            out.write(msg.data)
            out.flush()
        elif msg.type == aiohttp.WSMsgType.TEXT:
            event: dict[str, Any] = json.loads(msg.data)
            kind = event.get("event")
            if kind == "attached":
                hint = "" if event.get("role") == "writer" else "; read-only: --take-over to type"
                _notice(f"attached to {node} as {event.get('role')}{hint}; ~. detaches")
            elif kind == "role":
                _notice(f"you are now the console's {event.get('role')}")
            elif kind == "error":
                _notice(str(event.get("message")))
            elif kind == "closed":
                _notice(f"console closed: {event.get('reason')}")
                return 1
    _notice("the connection to bmd closed")
    return 1


def run(app: Any) -> int:
    a = app.args
    client = app.client
    return asyncio.run(attach(client.url, client.token, a.node, a.take_over))
