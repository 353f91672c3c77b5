"""bmd's SOL client (bmd.ipmi.sol) against OpenIPMI's ipmi_sim, a SOL server nobody here wrote.

ipmi_sim's serial line is ``sol "tcp:127.0.0.1:PORT"``: it connects to a TCP server this test runs, so
the test plays the machine's serial port: what it sends must come out of ``console.read()``, what the
console writes must arrive at it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bmd.ipmi import BMCTarget, CompletionCodeError, IPMIClient
from bmd.lab.ipmisim import IpmiSim, available
from tests.ipmi.helpers import FAST, ipmi_client

pytestmark = pytest.mark.asyncio(loop_scope="module")
SUITE3 = dataclasses.replace(FAST, cipher_suites=(3,))


class SerialPort:
    """The TCP end ipmi_sim connects to: the 'machine' side of the serial line (its latest connection)."""

    def __init__(self) -> None:
        self.port = 0
        self.line: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.changed = asyncio.Event()

    def connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.line = (reader, writer)
        self.changed.set()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def serial() -> AsyncIterator[SerialPort]:
    port = SerialPort()
    server = await asyncio.start_server(port.connected, "127.0.0.1", 0)
    port.port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        if port.line is not None:
            port.line[1].close()
        server.close()
        await server.wait_closed()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def solsim(tmp_path_factory: pytest.TempPathFactory, serial: SerialPort) -> AsyncIterator[IpmiSim]:
    if not available():
        pytest.skip("OpenIPMI's ipmi_sim is not installed")
    workdir: Path = tmp_path_factory.mktemp("ipmi_sim_sol")
    async with IpmiSim(workdir, sol=f"tcp:127.0.0.1:{serial.port}") as server:
        yield server


async def _line(serial: SerialPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(10):
        await serial.changed.wait()
    assert serial.line is not None
    return serial.line


async def _read_exactly(reader: asyncio.StreamReader, data: bytes) -> bytes:
    got = b""
    async with asyncio.timeout(10):
        while data not in got:
            chunk = await reader.read(4096)
            assert chunk, f"serial line closed; got {got!r}"
            got += chunk
    return got


async def test_sol_both_ways(solsim: IpmiSim, serial: SerialPort) -> None:
    t = BMCTarget(solsim.host, solsim.port, "admin", "password")
    async with ipmi_client(SUITE3) as client, client.sol(t) as console:
        reader, writer = await _line(serial)
        # machine → console, in several writes that the BMC may pack or split as it likes
        for part in (b"bmd-sol-marker ", b"login: ", b"x" * 600, b" end-of-burst\r\n"):
            writer.write(part)
            await writer.drain()
        seen = await console.read_until(b"end-of-burst", within=10)
        assert seen.startswith(b"bmd-sol-marker login: ")
        assert seen.count(b"x") == 600  # nothing lost, nothing delivered twice
        # console → machine: small writes accumulate; a large one is split into packets and all arrive
        for ch in b"root\r":
            console.write_nowait(bytes((ch,)))
        await console.drain()
        await console.write(b"y" * 700 + b"|typed-end")
        got = await _read_exactly(reader, b"|typed-end")
        assert got == b"root\r" + b"y" * 700 + b"|typed-end"
        await console.send_break()  # acknowledged by the BMC


async def test_second_console_is_refused_then_takes_over(solsim: IpmiSim, serial: SerialPort) -> None:
    t = BMCTarget(solsim.host, solsim.port, "admin", "password")
    async with ipmi_client(SUITE3) as first_client, ipmi_client(SUITE3) as second_client:
        first = await first_client.open_sol(t)
        try:
            _, writer = await _line(serial)
            with pytest.raises(CompletionCodeError) as refused:
                await second_client.open_sol(t)
            assert refused.value.completion_code == 0x80
            async with second_client.sol(t, take_over=True) as second:
                writer.write(b"after-take-over\r\n")
                await writer.drain()
                await second.read_until(b"after-take-over", within=10)
        finally:
            await first.close()


async def test_commands_still_work_next_to_sol(solsim: IpmiSim, serial: SerialPort) -> None:
    """The console's own session does not disturb the client's cached command session."""
    t = BMCTarget(solsim.host, solsim.port, "admin", "password")
    client: IPMIClient
    async with ipmi_client(SUITE3) as client, client.sol(t) as console:
        assert not console.closed
        assert (await client.get_device_id(t)).manufacturer_id >= 0
