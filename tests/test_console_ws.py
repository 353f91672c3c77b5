"""``GET /v1/nodes/{node}/console``: the node's serial console (IPMI SOL from a lab BMC) over a websocket of
the real app: operators only, one writer and many readers, take-over, and the console log gets the output."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from bmd.api.app import create_app
from bmd.cli.console import EscapeFilter
from bmd.context import AppContext
from bmd.db.tokens import create_token
from bmd.lab import Lab, LabSpec
from bmd.service import open_context
from tests.conftest import make_settings
from tests.ipmi.helpers import Pty, eventually

FAST = {
    "ipmi": {"timeout": 2.0, "retries": 2, "min_command_interval": 0.0},
    "driver": {"default_power_driver": "ipmi"},
}


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async with Lab(LabSpec(count=2)) as running:
        yield running


@pytest.fixture
async def env(tmp_path: Path, db_file: Path, lab: Lab) -> AsyncIterator[tuple[AppContext, TestClient[Any, Any]]]:
    async with open_context(make_settings(tmp_path, **FAST)) as ctx:
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            auth = {"Authorization": f"Bearer {ctx.api_token}"}
            resp = await client.post("/v1/nodes/import", json={"nodes": lab.inventory()}, headers=auth)
            assert resp.status == 201, await resp.text()
            yield ctx, client


class Peer:
    """One websocket client: collects the console bytes and the control events it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.data = bytearray()
        self.events: list[dict[str, Any]] = []
        self.used = 0

    async def until(self, accept: Any, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not accept(self):
                msg = await self.ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.data += msg.data
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self.events.append(json.loads(msg.data))
                else:
                    raise AssertionError(f"websocket ended: {msg.type} (events {self.events})")

    async def text(self, marker: bytes) -> None:
        await self.until(lambda p: marker in p.data)

    async def event(self, **match: Any) -> dict[str, Any]:
        """The next event (after those already returned) with these keys."""

        def index(p: Peer) -> int | None:
            for i in range(p.used, len(p.events)):
                if all(p.events[i].get(k) == v for k, v in match.items()):
                    return i
            return None

        await self.until(lambda p: index(p) is not None)
        i = index(self)
        assert i is not None
        self.used = i + 1
        return self.events[i]


async def test_console_websocket(env: tuple[AppContext, TestClient[Any, Any]], lab: Lab) -> None:
    ctx, client = env
    name = lab.bmcs[0].name
    url = f"/v1/nodes/{name}/console"
    auth = {"Authorization": f"Bearer {ctx.api_token}"}

    resp = await client.get(url)  # no token: refused before any upgrade
    assert resp.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(url)
    assert refused.value.status == 401

    async with client.ws_connect(url, headers=auth) as ws1, client.ws_connect(url, headers=auth) as ws2:
        one, two = Peer(ws1), Peer(ws2)
        assert (await one.event(event="attached"))["role"] == "writer"
        assert (await two.event(event="attached"))["role"] == "reader"
        # the machine prints: every client sees it
        await lab.sol([name], print_text="bmd-ws-marker: hello operators\n")
        await one.text(b"bmd-ws-marker: hello operators")
        await two.text(b"bmd-ws-marker: hello operators")
        # the writer types; the echo reaches both
        await ws1.send_bytes(b"whoami\r")
        await one.text(f"{name} login: ".encode())
        await two.text(f"{name} login: ".encode())
        # a reader's typing is refused and never reaches the machine
        await ws2.send_bytes(b"sneaky\r")
        assert "read-only" in (await two.event(event="error"))["message"]
        # the reader takes over: roles swap
        await ws2.send_str(json.dumps({"op": "take_over"}))
        await two.event(event="role", role="writer")
        await one.event(event="role", role="reader")
        await ws2.send_bytes(b"second\r")
        await two.text(b"second\r\n")
        await ws2.send_str(json.dumps({"op": "break"}))
        await ws2.send_str(json.dumps({"op": "nonsense"}))
        assert "take_over or break" in (await two.event(event="error"))["message"]
        state = (await lab.state(name))["sol"]
        assert state["active"] and state["typed"] == "whoami\rsecond\r"
        assert state["breaks"] == 1
    # the last client left: the SOL payload is deactivated
    await eventually(lambda: lab.state(name), lambda s: not s["sol"]["active"], 10)
    # the output went to the node's console log
    log = await client.get(f"/v1/nodes/{name}/console-log", headers=auth)
    text = await log.read()
    assert b"bmd-ws-marker: hello operators" in text and b"serial console attached" in text


async def test_console_refusals(env: tuple[AppContext, TestClient[Any, Any]], lab: Lab) -> None:
    ctx, client = env
    auth = {"Authorization": f"Bearer {ctx.api_token}"}
    resp = await client.get("/v1/nodes/no-such-node/console", headers=auth)
    assert resp.status == 404
    resp = await client.get(f"/v1/nodes/{lab.bmcs[1].name}/console?take_over=maybe", headers=auth)
    assert resp.status == 400 and (await resp.json())["field"] == "take_over"
    resp = await client.get(f"/v1/nodes/{lab.bmcs[1].name}/console", headers=auth)  # not an upgrade
    assert resp.status == 400


def _cli(client: TestClient[Any, Any], ctx: AppContext, *args: str) -> list[str]:
    url = str(client.make_url("")).rstrip("/")
    return [sys.executable, "-m", "bmd", "--url", url, "--token", ctx.api_token, "node", "console", *args]


async def test_cli_attaches_a_terminal_in_raw_mode(env: tuple[AppContext, TestClient[Any, Any]], lab: Lab) -> None:
    ctx, client = env
    name = lab.bmcs[0].name
    term = Pty()
    proc = await asyncio.create_subprocess_exec(
        *_cli(client, ctx, name), stdin=term.slave, stdout=term.slave, stderr=term.slave
    )
    try:
        await term.expect(b"as writer")
        assert not termios.tcgetattr(term.slave)[3] & termios.ECHO  # raw mode: no local echo
        await lab.sol([name], print_text="bmd-cli-marker\n")
        await term.expect(b"bmd-cli-marker")
        term.type(b"cli-typed\r")
        await term.expect(f"{name} login: ".encode())
        term.type(b"~.")
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
        assert termios.tcgetattr(term.slave)[3] & termios.ECHO  # the terminal is restored
        assert (await lab.state(name))["sol"]["typed"] == "cli-typed\r"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        term.close()


async def test_cli_from_a_pipe(env: tuple[AppContext, TestClient[Any, Any]], lab: Lab) -> None:
    ctx, client = env
    name = lab.bmcs[1].name
    proc = await asyncio.create_subprocess_exec(
        *_cli(client, ctx, name),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"~~piped\r")
    await proc.stdin.drain()
    async with asyncio.timeout(20):
        echoed = await proc.stdout.readuntil(f"{name} login: ".encode())  # the machine's echo and prompt
    assert echoed.endswith(b"~piped\r\n" + f"{name} login: ".encode())
    proc.stdin.write(b"~.ignored")
    await proc.stdin.drain()
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert b"detached" in err
    assert (await lab.state(name))["sol"]["typed"] == "~piped\r"
    # without a token: refused, exit 1 with the reason
    url = str(client.make_url("")).rstrip("/")
    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bmd",
        "--url",
        url,
        "--token",
        "wrong",
        "node",
        "console",
        name,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        _, err = await bad.communicate()
    assert bad.returncode == 1 and b"401" in err


def test_escape_filter() -> None:
    f = EscapeFilter()
    assert f.feed(b"a~.b") == b"a~.b"  # not at a line start
    assert f.feed(b"\r~") == b"\r" and not f.detach
    assert f.feed(b"x") == b"~x"
    assert f.feed(b"\n~~") == b"\n~"
    assert f.feed(b"\r~.rest") == b"\r" and f.detach


async def test_terminal_port(tmp_path: Path, db_file: Path, lab: Lab) -> None:
    """console.terminal_port: the same console on a plain TCP port of loopback (token and node first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with open_context(make_settings(tmp_path, console={"terminal_port": port}, **FAST)) as ctx:
        async with TestClient(TestServer(create_app(ctx), host="127.0.0.1", port=0)) as client:
            auth = {"Authorization": f"Bearer {ctx.api_token}"}
            resp = await client.post("/v1/nodes/import", json={"nodes": lab.inventory()}, headers=auth)
            assert resp.status == 201, await resp.text()
            name = lab.bmcs[0].name

            async with ctx.sessionmaker.begin() as session:  # named tokens: a reader's may not attach
                _, reader_token = await create_token(session, "viewer", "reader")
            for refused in ("wrong-token", reader_token):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(refused.encode() + b" " + name.encode() + b"\n")
                async with asyncio.timeout(10):
                    assert b"valid API token (role operator or above)" in await reader.read()  # refused, closed
                writer.close()
            async with ctx.sessionmaker.begin() as session:
                _, operator_token = await create_token(session, "night-shift", "operator")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"{operator_token} {name}\n".encode())
            async with asyncio.timeout(10):
                assert b"as writer" in await reader.readline()
            writer.close()
            await eventually(lambda: lab.state(name), lambda s: not s["sol"]["active"], 10)

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"{ctx.api_token} {name}\n".encode())
            async with asyncio.timeout(10):
                assert b"as writer" in await reader.readline()
            # a websocket client attaches to the same console as a reader
            async with client.ws_connect(f"/v1/nodes/{name}/console", headers=auth) as ws:
                peer = Peer(ws)
                assert (await peer.event(event="attached"))["role"] == "reader"
                writer.write(b"over-tcp\r")
                async with asyncio.timeout(10):
                    echoed = await reader.readuntil(f"{name} login: ".encode())
                assert echoed.endswith(b"over-tcp\r\n" + f"{name} login: ".encode())
                await peer.text(b"over-tcp\r\n")
            writer.close()
            await eventually(lambda: lab.state(name), lambda s: not s["sol"]["active"], 10)
            assert (await lab.state(name))["sol"]["typed"] == "over-tcp\r"


def test_terminal_host_must_be_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        make_settings(tmp_path, console={"terminal_port": 7000, "terminal_host": "0.0.0.0"})
    assert "terminal_host" in str(err.value)


async def test_an_outside_take_over_ends_the_websocket(env: tuple[AppContext, TestClient[Any, Any]], lab: Lab) -> None:
    """Another console (here bmd's own client, as ipmitool would) takes the SOL payload: clients are told."""
    from bmd.ipmi import BMCTarget, IPMIClient

    ctx, client = env
    b = lab.bmcs[1]
    auth = {"Authorization": f"Bearer {ctx.api_token}"}
    async with client.ws_connect(f"/v1/nodes/{b.name}/console", headers=auth) as ws:
        peer = Peer(ws)
        await peer.event(event="attached")
        outsider = IPMIClient()
        try:
            async with outsider.sol(BMCTarget(b.host, b.port, b.username, b.password), take_over=True):
                closed = await peer.event(event="closed")
                assert "deactivated" in closed["reason"]
        finally:
            await outsider.close()
    # the next attach opens the console again
    async with client.ws_connect(f"/v1/nodes/{b.name}/console", headers=auth) as ws:
        peer = Peer(ws)
        assert (await peer.event(event="attached"))["role"] == "writer"
