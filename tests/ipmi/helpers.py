"""Shared by the IPMI and lab tests: client settings, targets, ipmitool, polling with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import random
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest

from bmd.drivers.power.base import BMCAccess
from bmd.ipmi import BMCTarget, IPMIClient, IPMISettings
from bmd.lab import Lab, LabBMCInfo, LabSpec

T = TypeVar("T")

# Short timeouts: loopback answers in well under a millisecond, the lab in a few.
FAST = IPMISettings(timeout=2.0, attempt_timeout=0.2, retries=2)

IPMITOOL = shutil.which("ipmitool")
needs_ipmitool = pytest.mark.skipif(IPMITOOL is None, reason="Debian's ipmitool is not installed")
IPMICONSOLE = shutil.which("ipmiconsole") or shutil.which("ipmiconsole", path="/usr/sbin:/sbin")
needs_ipmiconsole = pytest.mark.skipif(
    IPMICONSOLE is None, reason="FreeIPMI's ipmiconsole is not installed (Debian freeipmi-tools)"
)


def low_udp_port(host: str) -> int:
    """A free UDP port below 32768 on ``host`` (a loopback address of the test's own).

    FreeIPMI 1.6.10's ipmiconsole turns the port of ``--hostname host:port`` into a signed 16-bit number
    before resolving it (port 55792 is looked up as service "-9744": "hostname invalid"), so a lab BMC
    it talks to must not sit on an ephemeral port (32768-60999 on Linux), which is what port 0 gives.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free UDP port below 32768 on {host}")


def target(b: LabBMCInfo, *, password: str | None = None, username: str | None = None) -> BMCTarget:
    return BMCTarget(
        b.host, b.port, b.username if username is None else username, b.password if password is None else password
    )


def access(b: LabBMCInfo, *, password: str | None = None, node_id: int = 1) -> BMCAccess:
    return BMCAccess(node_id, b.address, b.username, b.password if password is None else password)


class Pool:
    """Hands each test lab BMCs no other test of the module touched."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._next = 0

    def take(self, n: int = 1) -> list[LabBMCInfo]:
        bmcs = self.lab.bmcs[self._next : self._next + n]
        if len(bmcs) < n:
            raise RuntimeError("the module's lab is too small: raise its count")
        self._next += n
        return bmcs

    def one(self) -> LabBMCInfo:
        return self.take(1)[0]


@asynccontextmanager
async def running_lab(spec: LabSpec) -> AsyncIterator[Lab]:
    lab = Lab(spec)
    await lab.start()
    try:
        yield lab
    finally:
        await lab.stop()


@asynccontextmanager
async def ipmi_client(settings: IPMISettings = FAST) -> AsyncIterator[IPMIClient]:
    client = IPMIClient(settings)
    try:
        yield client
    finally:
        await client.close()


async def run_ipmitool(
    host: str,
    port: int,
    *args: str,
    user: str = "admin",
    password: str = "password",
    suite: int | None = None,
) -> tuple[int, str]:
    """Debian's ipmitool -I lanplus, a process per call; returns (exit code, stdout + stderr)."""
    assert IPMITOOL is not None
    cmd = [
        IPMITOOL,
        "-I",
        "lanplus",
        "-H",
        host,
        "-p",
        str(port),
        "-U",
        user,
        "-P",
        password,
        "-N",
        "1",
        "-R",
        "3",
    ]
    if suite is not None:
        cmd += ["-C", str(suite)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30.0)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], deadline: float = 10.0) -> T:
    """Call ``probe`` until ``accept`` takes its result (exceptions mean "not yet") within ``deadline``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: BaseException | None = None
    while loop.time() < end:
        try:
            value = await probe()
        except Exception as err:  # noqa: BLE001 - the probe's last error is reported at the deadline
            last = err
        else:
            if accept(value):
                return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {deadline}s (last error: {last!r})")


class Pty:
    """ipmitool's terminal: the master side of a pty, read from the event loop."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        os.set_blocking(self.master, False)
        self.out = bytearray()
        self.changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            return
        self.out += data
        self.changed.set()

    async def expect(self, marker: bytes, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while marker not in self.out:
                self.changed.clear()
                await self.changed.wait()

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@asynccontextmanager
async def console_process(argv: list[str]) -> AsyncIterator[tuple[Pty, asyncio.subprocess.Process]]:
    """A console program in a pty (both need a terminal), killed by PID if the test did not end it."""
    term = Pty()
    proc = await asyncio.create_subprocess_exec(*argv, stdin=term.slave, stdout=term.slave, stderr=term.slave)
    try:
        yield term, proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        term.close()


async def ended(proc: asyncio.subprocess.Process, term: Pty) -> None:
    """The console program exits by itself (its escape typed) with status 0; else its terminal says why."""
    async with asyncio.timeout(10):
        rc = await proc.wait()
    assert rc == 0, term.out.decode(errors="replace")
