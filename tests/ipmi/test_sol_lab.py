"""Serial over LAN between the lab BMCs (bmd.lab.sol) and two consoles: bmd's client and Debian's ipmitool.

The lab BMCs here have no machine behind them: their serial line is a SimSerial (it prints what the test
asks it to, echoes typing and answers a line with a "login:" prompt, and records what was typed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bmd.ipmi import ChassisControl, CompletionCodeError, IPMIClient, SolSettings
from bmd.ipmi.protocol import NetFn
from bmd.lab import Lab, LabSpec
from bmd.lab.console import ConsoleRelay
from tests.ipmi.helpers import (
    FAST,
    IPMICONSOLE,
    IPMITOOL,
    Pool,
    console_process,
    ended,
    eventually,
    ipmi_client,
    low_udp_port,
    needs_ipmiconsole,
    needs_ipmitool,
    running_lab,
    target,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
QUICK_SOL = SolSettings(ack_timeout=0.2, nack_pause=0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def solpool() -> AsyncIterator[Pool]:
    async with running_lab(LabSpec(count=6)) as lab:
        yield Pool(lab)


async def _typed(lab: Lab, name: str) -> str:
    return str((await lab.state(name))["sol"]["typed"])


async def test_native_client_suite_17(solpool: Pool) -> None:
    b = solpool.one()
    lab = solpool.lab
    async with ipmi_client(FAST) as client, client.sol(target(b), settings=QUICK_SOL) as console:
        assert console.session.suite is not None and console.session.suite.id == 17
        await lab.sol([b.name], print_text="bmd-lab-marker: hello from the serial line\n")
        seen = await console.read_until(b"hello from the serial line", within=5)
        assert b"bmd-lab-marker" in seen
        await console.write(b"root\r")
        await console.read_until(f"{b.name} login: ".encode(), within=5)  # echo, then the prompt
        assert await _typed(lab, b.name) == "root\r"
        await console.send_break()
        await eventually(lambda: lab.state(b.name), lambda s: s["sol"]["breaks"] == 1, 5)
        assert (await lab.state(b.name))["sol"]["active"]
    # leaving the block deactivated the payload
    assert not (await lab.state(b.name))["sol"]["active"]


async def test_lost_packets_are_retransmitted_both_ways(solpool: Pool) -> None:
    """Every third SOL packet is lost in each direction: all characters still arrive exactly once, in order."""
    b = solpool.one()
    lab = solpool.lab
    await lab.sol([b.name], drop_every=3)
    text = "".join(f"line {i:03d} of the lossy console\n" for i in range(40))
    async with ipmi_client(FAST) as client, client.sol(target(b), settings=QUICK_SOL) as console:
        await lab.sol([b.name], print_text=text)
        seen = await console.read_until(b"line 039 of the lossy console", within=20)
        assert seen.decode().replace("\r\n", "\n") == text
        typed = b"".join(b"word%03d " % i for i in range(120))  # several packets of console -> BMC
        await console.write(typed)
        assert await _typed(lab, b.name) == typed.decode()
        assert console.retransmissions > 0
        stats = (await lab.state(b.name))["sol"]["stats"]
        assert stats["retransmissions"] > 0 and stats["lost"] > 0 and stats["dropped"] == 0
    await lab.sol([b.name], drop_every=0)


async def test_one_console_at_a_time_and_take_over(solpool: Pool) -> None:
    b = solpool.one()
    lab = solpool.lab
    async with ipmi_client(FAST) as one, ipmi_client(FAST) as two:
        first = await one.open_sol(target(b), settings=QUICK_SOL)
        try:
            with pytest.raises(CompletionCodeError) as refused:
                await two.open_sol(target(b))
            assert refused.value.completion_code == 0x80
            async with two.sol(target(b), take_over=True, settings=QUICK_SOL) as second:
                # the first console is told that its payload was deactivated
                chunks = [c async for c in first.read()]
                assert chunks == []
                await lab.sol([b.name], print_text="for-the-second\n")
                await second.read_until(b"for-the-second", within=5)
        finally:
            await first.close()


async def test_payload_queries(solpool: Pool) -> None:
    """Get Payload Activation Status (24.4), Get Channel Payload Support and Version (24.8, 24.9): what
    FreeIPMI's ipmiconsole asks before activating."""
    b = solpool.one()
    async with ipmi_client(FAST) as client:
        t = target(b)
        assert await client.command(t, NetFn.APP, 0x4A, b"\x01") == b"\x01\x00\x00"  # one instance, inactive
        async with client.sol(t, settings=QUICK_SOL):
            assert await client.command(t, NetFn.APP, 0x4A, b"\x01") == b"\x01\x01\x00"  # instance 1 active
        assert await client.command(t, NetFn.APP, 0x4A, b"\x01") == b"\x01\x00\x00"
        support = await client.command(t, NetFn.APP, 0x4E, b"\x0e")
        assert support[0] == 0x03 and support[2] == 0x3F  # IPMI messages and SOL; open session, RAKP 1-4
        assert await client.command(t, NetFn.APP, 0x4F, b"\x0e\x01") == b"\x10"  # SOL 1.0
        with pytest.raises(CompletionCodeError) as refused:
            await client.command(t, NetFn.APP, 0x4A, b"\x02")  # an OEM payload: not served
        assert refused.value.completion_code == 0xCC


async def test_commands_beside_sol(solpool: Pool) -> None:
    b = solpool.one()
    client: IPMIClient
    async with ipmi_client(FAST) as client, client.sol(target(b), settings=QUICK_SOL):
        assert not await client.get_power_state(target(b))


# -- Debian's ipmitool as the console ---------------------------------------------------------------
@needs_ipmitool
async def test_ipmitool_sol_activate_suite_17(solpool: Pool) -> None:
    b = solpool.one()
    lab = solpool.lab
    assert IPMITOOL is not None
    argv = [IPMITOOL, "-I", "lanplus", "-C", "17", "-H", b.host, "-p", str(b.port), "-U", b.username,
            "-P", b.password, "sol", "activate"]  # fmt: skip
    async with console_process(argv) as (term, proc):
        await term.expect(b"SOL Session operational")
        await lab.sol([b.name], print_text="bmd-lab-marker for ipmitool\n")
        await term.expect(b"bmd-lab-marker for ipmitool")
        term.type(b"typed-in-ipmitool\r")
        await term.expect(f"{b.name} login: ".encode())
        await eventually(lambda: _typed(lab, b.name), lambda t: t == "typed-in-ipmitool\r", 5)
        term.type(b"~.")  # ipmitool's escape (right after a newline): terminate the session
        await ended(proc, term)
        await eventually(lambda: lab.state(b.name), lambda s: not s["sol"]["active"], 5)


# -- FreeIPMI's ipmiconsole as the console ----------------------------------------------------------
@needs_ipmiconsole
@pytest.mark.parametrize("suite", [17, 3])
async def test_ipmiconsole(suite: int) -> None:
    """ipmiconsole asks Get Channel Payload Support and Get Payload Activation Status before it activates
    (ipmitool does not); its escape ``&.`` deactivates the payload and closes the session."""
    assert IPMICONSOLE is not None
    host = "127.1.98.1" if suite == 17 else "127.1.98.2"
    async with running_lab(LabSpec(count=1, first_address=host, port=low_udp_port(host))) as lab:
        b = lab.bmcs[0]
        argv = [IPMICONSOLE, "-h", f"{b.host}:{b.port}", "-u", b.username, "-p", b.password, "-I", str(suite)]
        async with console_process(argv) as (term, proc):
            await term.expect(b"[SOL established]")
            assert (await lab.state(b.name))["sol"]["active"]
            await lab.sol([b.name], print_text="bmd-lab-marker for ipmiconsole\n")
            await term.expect(b"bmd-lab-marker for ipmiconsole")
            term.type(b"typed-in-ipmiconsole\r")
            await term.expect(f"{b.name} login: ".encode())
            await eventually(lambda: _typed(lab, b.name), lambda t: t == "typed-in-ipmiconsole\r", 5)
            term.type(b"&.")  # ipmiconsole's escape: close the connection
            await ended(proc, term)
            assert b"[closing the connection]" in term.out
            state = await lab.state(b.name)
            assert not state["sol"]["active"] and state["stats"]["sol_deactivated"] == 1


@needs_ipmiconsole
async def test_ipmiconsole_takes_the_payload_from_bmds_console() -> None:
    """Without --dont-steal, ipmiconsole finds the payload active (activation status), deactivates it and
    activates its own: bmd's console is told the BMC deactivated it."""
    assert IPMICONSOLE is not None
    host = "127.1.98.3"
    async with (
        running_lab(LabSpec(count=1, first_address=host, port=low_udp_port(host))) as lab,
        ipmi_client(FAST) as client,
    ):
        b = lab.bmcs[0]
        console = await client.open_sol(target(b), settings=QUICK_SOL)
        argv = [IPMICONSOLE, "-h", f"{b.host}:{b.port}", "-u", b.username, "-p", b.password, "-I", "17"]
        async with console_process(argv) as (term, proc):
            await term.expect(b"[SOL established]")
            async with asyncio.timeout(5):
                assert [c async for c in console.read()] == []
            assert "deactivated" in (console.end_reason or "")
            await lab.sol([b.name], print_text="for-ipmiconsole\n")
            await term.expect(b"for-ipmiconsole")
            term.type(b"&.")
            await ended(proc, term)
            await console.close()
        assert (await lab.state(b.name))["stats"]["sol_activated"] == 2


async def test_sim_machine_prints_its_boot_on_sol() -> None:
    """A sim machine's serial line: the firmware banner at each boot reaches the SOL console."""
    async with running_lab(LabSpec(count=1, machines="sim")) as lab, ipmi_client(FAST) as client:
        b = lab.bmcs[0]
        async with client.sol(target(b), settings=QUICK_SOL) as console:
            await client.chassis_control(target(b), ChassisControl.POWER_ON)
            seen = await console.read_until(f"{b.name}: booted from disk".encode(), within=10)
            assert f"bmd lab sim machine {b.name}".encode() in seen


async def test_qemu_console_relay_is_a_serial_line(tmp_path: Path) -> None:
    """The QEMU machines' relay as the SOL line, with a real Unix socket client standing in for QEMU."""
    relay = ConsoleRelay("vm", "127.0.0.1", 0, tmp_path / "serial.log", tmp_path / "console.sock")
    await relay.open()
    try:
        heard: asyncio.Queue[bytes] = asyncio.Queue()
        relay.listen(heard.put_nowait)
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "console.sock"))
        writer.write(b"Linux version 6.1 (ttyS0)\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            assert await heard.get() == b"Linux version 6.1 (ttyS0)\r\n"
        assert relay.vm is not None  # set before the relay read the first chunk
        relay.write(b"typed over SOL\r")
        async with asyncio.timeout(5):
            assert await reader.readexactly(15) == b"typed over SOL\r"
        relay.unlisten(heard.put_nowait)
        writer.close()
    finally:
        relay.close()
