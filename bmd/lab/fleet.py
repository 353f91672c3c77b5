"""The lab fleet: N simulated BMCs over loopback addresses, spread over worker processes.

From Python::

    spec = LabSpec(count=50, faults="dead=10%,flap=1:0", inventory_path=Path("lab.json"))
    async with Lab(spec) as lab:
        lab.bmcs            # [LabBMCInfo(name, host, port, username, password, fault), ...]
        await lab.set_fault(["lab-0003"], Fault("dead"))
        await lab.state("lab-0003")   # {"power": bool, "boot": {...}, "stats": {...}, ...}

or ``await run_lab(spec, stop_event, ready=callback)`` which serves until ``stop_event`` is set.
Workers exit when the Lab stops, and also when the parent dies (their stdin reaches end of file).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

import bmd
from bmd.errors import BmdError, InvalidInput
from bmd.lab.faults import Fault, deal_faults
from bmd.lab.inventory import node_entry, write_inventory

log = structlog.get_logger(__name__)
# Where the ``bmd`` package lives, for the workers' PYTHONPATH.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bmd.__file__)))


class LabError(BmdError):
    code = "lab_error"


@dataclass(frozen=True, slots=True)
class LabSpec:
    count: int = 8
    faults: str = ""  # see bmd.lab.faults for the grammar
    seed: int = 0  # which BMCs get which fault
    layout: Literal["addresses", "ports"] = "addresses"  # one port on N addresses, or N ports on one
    first_address: str = "127.1.0.1"
    port: int = 0  # 0: a free port is chosen (addresses layout) / one per BMC (ports layout)
    username: str = "admin"
    password: str = "password"
    cipher_suites: tuple[int, ...] = (17, 3)
    per_process: int = 500  # BMCs per worker process (select() caps a process at ~1000 sockets)
    name_prefix: str = "lab-"
    pm_driver: str = "ipmi"
    inventory_path: Path | None = None
    start_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 60000:
            raise InvalidInput("count must be between 1 and 60000", field="count")
        if self.per_process < 1:
            raise InvalidInput("per_process must be >= 1", field="per_process")
        try:
            first = ipaddress.ip_address(self.first_address)
        except ValueError:
            raise InvalidInput(f"{self.first_address!r} is not an IP address", field="first_address") from None
        if not first.is_loopback:
            raise InvalidInput("the lab binds loopback addresses only", field="first_address")
        if not 0 <= self.port < 65536:
            raise InvalidInput("port out of range", field="port")
        deal_faults(self.faults, self.count, self.seed)  # raises InvalidInput naming the bad item


@dataclass(frozen=True, slots=True)
class LabBMCInfo:
    index: int
    name: str
    host: str
    port: int
    username: str
    password: str = field(repr=False)  # the inventory's; a badpass BMC is configured with another one
    fault: Fault | None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def lab_hosts(first: str, count: int, layout: str) -> list[str]:
    """Loopback addresses, skipping .0 and .255 (IPv4) so that every host looks ordinary."""
    if layout == "ports":
        return [first] * count
    start = ipaddress.ip_address(first)
    hosts: list[str] = []
    n = int(start)
    while len(hosts) < count:
        addr = ipaddress.ip_address(n)
        if not addr.is_loopback:
            raise InvalidInput(f"{count} BMCs do not fit in loopback from {first}", field="count")
        if addr.version == 6 or (n & 0xFF) not in (0, 255):
            hosts.append(str(addr))
        n += 1
    return hosts


def _free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _WorkerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lock = asyncio.Lock()
        self.next_id = 0

    async def read(self, seconds: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), seconds)
        if not line:
            raise LabError(f"lab worker {self.proc.pid} exited (code {await self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def write(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")

    async def request(self, op: str, **fields: Any) -> Any:
        async with self.lock:
            self.next_id += 1
            self.write({"id": self.next_id, "op": op, **fields})
            reply = await self.read(30.0)
        if not reply.get("ok"):
            raise LabError(f"lab worker refused {op}: {reply.get('error')}")
        return reply.get("result")

    async def stop(self) -> None:
        proc = self.proc
        if proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class Lab:
    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.bmcs: list[LabBMCInfo] = []
        self._workers: list[_WorkerProcess] = []
        self._owner: dict[str, _WorkerProcess] = {}

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- start / stop ------------------------------------------------------------------------------
    async def start(self) -> None:
        spec = self.spec
        faults = deal_faults(spec.faults, spec.count, spec.seed)
        hosts = lab_hosts(spec.first_address, spec.count, spec.layout)
        for attempt in range(5):
            port = spec.port
            if spec.layout == "addresses" and port == 0:
                port = _free_udp_port(hosts[0])
            bmcs = [
                {
                    "index": i,
                    "name": f"{spec.name_prefix}{i + 1:04d}",
                    "host": hosts[i],
                    "port": port,
                    "username": spec.username,
                    "password": spec.password,
                    "power": False,
                    "fault": faults[i].to_json() if i in faults else None,
                }
                for i in range(spec.count)
            ]
            try:
                await self._spawn(bmcs)
                break
            except _PortTaken:
                await self.stop()
                if spec.port or attempt == 4:
                    raise LabError(f"port {port} is taken on the lab addresses") from None
            except BaseException:
                await asyncio.shield(self.stop())
                raise
        if spec.inventory_path is not None:
            await asyncio.to_thread(write_inventory, spec.inventory_path, self.inventory())
        log.info("lab_started", bmcs=len(self.bmcs), workers=len(self._workers))

    async def _spawn(self, bmcs: list[dict[str, Any]]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])])
        chunks = [bmcs[i : i + self.spec.per_process] for i in range(0, len(bmcs), self.spec.per_process)]
        for chunk in chunks:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bmd.lab.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            worker = _WorkerProcess(proc)
            self._workers.append(worker)
            worker.write({"suites": list(self.spec.cipher_suites), "bmcs": chunk})
        replies = await asyncio.gather(*(w.read(self.spec.start_timeout) for w in self._workers))
        for worker, chunk, reply in zip(self._workers, chunks, replies, strict=True):
            if reply.get("event") != "ready":
                if reply.get("errno") == 98:  # EADDRINUSE
                    raise _PortTaken
                raise LabError(f"lab worker failed to start: {reply.get('message')}")
            for spec, bound in zip(chunk, reply["bmcs"], strict=True):
                fault = Fault.from_json(spec["fault"]) if spec["fault"] else None
                info = LabBMCInfo(
                    spec["index"],
                    spec["name"],
                    bound["host"],
                    bound["port"],
                    spec["username"],
                    spec["password"],
                    fault,
                )
                self.bmcs.append(info)
                self._owner[info.name] = worker

    async def stop(self) -> None:
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.stop() for w in workers))
        self._owner.clear()
        self.bmcs = []

    @property
    def pids(self) -> list[int]:
        """Process IDs of the workers (for supervision and tests)."""
        return [w.proc.pid for w in self._workers]

    # -- inventory ---------------------------------------------------------------------------------
    def inventory(self) -> list[dict[str, Any]]:
        return [
            node_entry(b.index, b.name, b.host, b.port, b.username, b.password, self.spec.pm_driver) for b in self.bmcs
        ]

    def bmc(self, name: str) -> LabBMCInfo:
        for b in self.bmcs:
            if b.name == name:
                return b
        raise KeyError(name)

    # -- control -----------------------------------------------------------------------------------
    async def _each(self, op: str, names: list[str] | None, **fields: Any) -> dict[str, Any]:
        groups: dict[_WorkerProcess, list[str] | None] = {}
        if names is None:
            groups = {w: None for w in self._workers}
        else:
            for name in names:
                if name not in self._owner:
                    raise KeyError(name)
                group = groups.setdefault(self._owner[name], [])
                assert group is not None
                group.append(name)
        results = await asyncio.gather(*(w.request(op, names=n, **fields) for w, n in groups.items()))
        merged: dict[str, Any] = {}
        for result in results:
            if isinstance(result, dict):
                merged.update(result)
        return merged

    async def set_fault(self, names: list[str] | None, fault: Fault | None) -> None:
        """Inject ``fault`` (None clears) into the named BMCs (None: all)."""
        await self._each("fault", names, fault=fault.to_json() if fault else None)

    async def flap_step(self, names: list[str] | None = None) -> None:
        """Move flapping BMCs to their next phase (dead <-> alive)."""
        await self._each("flap_step", names)

    async def expire_sessions(self, names: list[str] | None = None) -> None:
        """Make BMCs forget their sessions, as after a BMC reset or an idle timeout."""
        await self._each("expire", names)

    async def set_kg(self, names: list[str] | None, kg: str | None) -> None:
        """Set the BMC key Kg (two-key login) of the named BMCs; None goes back to one-key login."""
        await self._each("kg", names, kg=kg)

    async def demote_sessions(self, names: list[str] | None = None) -> None:
        """Drop the BMCs' sessions to User privilege: changes then get completion code 0xD4."""
        await self._each("demote", names)

    async def set_state(
        self, names: list[str] | None, power: bool | None = None, boot: dict[str, Any] | None = None
    ) -> None:
        """Set power and/or boot flags ({"selector", "persistent", "valid"}) behind the clients' back."""
        await self._each("set_state", names, power=power, boot=boot)

    async def reset_stats(self, names: list[str] | None = None) -> None:
        await self._each("reset_stats", names)

    async def states(self, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        return await self._each("state", names)

    async def state(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = (await self.states([name]))[name]
        return result


class _PortTaken(Exception):
    pass


async def run_lab(
    spec: LabSpec, stop: asyncio.Event, ready: Callable[[Lab], Awaitable[None] | None] | None = None
) -> None:
    """Serve the lab until ``stop`` is set; ``ready(lab)`` is called once every BMC answers."""
    async with Lab(spec) as lab:
        if ready is not None:
            result = ready(lab)
            if inspect.isawaitable(result):
                await result
        await stop.wait()
