"""The lab fleet: N simulated BMCs over loopback addresses, spread over worker processes.

From Python::

    spec = LabSpec(count=50, faults="dead=10%,flap=1:0", inventory_path=Path("lab.json"))
    async with Lab(spec) as lab:
        lab.bmcs            # [LabBMCInfo(name, host, port, username, password, fault), ...]
        await lab.set_fault(["lab-0003"], Fault("dead"))
        await lab.state("lab-0003")   # {"power": bool, "boot": {...}, "stats": {...}, ...}

or ``await run_lab(spec, stop_event, ready=callback)`` which serves until ``stop_event`` is set.

Machines behind the BMCs (``machines="sim"|"qemu"``, see :mod:`bmd.lab.machines`)::

    spec = LabSpec(count=1, machines="qemu", bmd_address="127.0.0.1:6385", machine_dir=tmp / "vms")
    async with Lab(spec) as lab:
        lab.machine("lab-0001")   # MachineInfo(serial_log, console, disk, boot_mode); pid via lab.state()
        await lab.connect(bmd_address="127.0.0.1:40123")   # late-bound: where the VMs reach bmd
Workers exit when the Lab stops, and also when the parent dies (their stdin reaches end of file).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

import bmd
from bmd.errors import BmdError, InvalidInput
from bmd.lab.faults import Fault, deal_faults
from bmd.lab.inventory import mac_address, node_entry, write_inventory
from bmd.lab.machines import sim_report

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
    # the machines behind the BMCs: "none" (the BMC alone), "sim" (an in-process agent), "qemu" (a VM each)
    machines: Literal["none", "sim", "qemu"] = "none"
    boot_url: str = ""  # sim: bmd's http_root URL (<bmd url>/images), or set later with Lab.connect
    bmd_address: str = ""  # qemu: host:port the VMs' 10.0.2.100:8080 is forwarded to (or Lab.connect)
    machine_dir: Path | None = None  # qemu: per-VM files (disk, serial log); None: a temporary directory
    boot_mode: Literal["bios", "uefi", "mixed"] = "bios"  # mixed: odd BMCs bios, even ones uefi
    memory_mb: int = 256  # qemu: guest memory
    disk_mb: int = 1024  # qemu: the qcow2 disk's size
    soft_off_seconds: float = 10.0  # qemu: a soft off (ACPI power button) the guest ignores ends in a kill

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
        if self.machines not in ("none", "sim", "qemu"):
            raise InvalidInput("machines must be none, sim or qemu", field="machines")
        if self.boot_mode not in ("bios", "uefi", "mixed"):
            raise InvalidInput("boot_mode must be bios, uefi or mixed", field="boot_mode")
        if self.boot_url and not self.boot_url.startswith(("http://", "https://")):
            raise InvalidInput(f"boot_url must be an http(s) URL, got {self.boot_url!r}", field="boot_url")
        if not 64 <= self.memory_mb <= 8192:
            raise InvalidInput("memory_mb must be between 64 and 8192", field="memory_mb")
        if not 16 <= self.disk_mb <= 1024 * 1024:
            raise InvalidInput("disk_mb must be between 16 and 1048576", field="disk_mb")

    def machine_boot_mode(self, index: int) -> str:
        if self.boot_mode == "mixed":
            return "bios" if index % 2 == 0 else "uefi"
        return self.boot_mode


@dataclass(frozen=True, slots=True)
class MachineInfo:
    """A lab machine's files and console, for tests and operators (the PID is in ``Lab.state(name)``)."""

    kind: str
    boot_mode: str
    serial_log: Path | None = None
    disk: Path | None = None
    console: tuple[str, int] | None = None  # TCP (host, port) serving the serial console: terminal_port


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


def _free_tcp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
        self.machines: dict[str, MachineInfo] = {}
        self._machine_specs: dict[int, dict[str, Any]] = {}
        self._tmpdir: Path | None = None

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
        self._plan_machines(hosts)
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
                    "machine": self._machine_specs.get(i),
                }
                for i in range(spec.count)
            ]
            try:
                await self._spawn(bmcs)
                break
            except _PortTaken:
                await self._stop_workers()
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

    def _plan_machines(self, hosts: list[str]) -> None:
        """Each BMC's machine description for its worker (qemu: its directory and console port)."""
        spec = self.spec
        self._machine_specs, self.machines = {}, {}
        if spec.machines == "none":
            return
        names = [f"{spec.name_prefix}{i + 1:04d}" for i in range(spec.count)]
        if spec.machines == "sim":
            for i, name in enumerate(names):
                mac, boot_mode = mac_address(i), spec.machine_boot_mode(i)
                report = sim_report(i, mac, spec.memory_mb, spec.disk_mb, boot_mode)
                self._machine_specs[i] = {
                    "kind": "sim",
                    "name": name,
                    "mac": mac,
                    "boot_url": spec.boot_url,
                    "report": report,
                }
                self.machines[name] = MachineInfo("sim", spec.machine_boot_mode(i))
            return
        from bmd.lab.qemu import QemuMissing, QemuSpec, boot_script, qemu_missing

        missing = qemu_missing({spec.machine_boot_mode(i) for i in range(spec.count)})
        if missing:
            raise QemuMissing(f"lab machines need QEMU: {missing}")
        root = spec.machine_dir
        if root is None:
            root = self._tmpdir = Path(tempfile.mkdtemp(prefix="bmd-lab-vms-"))
        root = root.resolve()
        tftp = root / "tftp"
        tftp.mkdir(parents=True, exist_ok=True)
        (tftp / "boot.ipxe").write_text(boot_script())
        for i, name in enumerate(names):
            workdir = root / name
            q = QemuSpec(
                name=name,
                mac=mac_address(i),
                workdir=str(workdir),
                tftp_dir=str(tftp),
                console_host=hosts[i],
                console_port=_free_tcp_port(hosts[i]),
                boot_mode=spec.machine_boot_mode(i),
                memory_mb=spec.memory_mb,
                disk_mb=spec.disk_mb,
                bmd_address=spec.bmd_address,
                soft_off_seconds=spec.soft_off_seconds,
            )
            self._machine_specs[i] = q.to_json()
            self.machines[name] = MachineInfo(
                "qemu", q.boot_mode, workdir / "serial.log", workdir / "disk.qcow2", (hosts[i], q.console_port)
            )

    async def _stop_workers(self) -> None:
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.stop() for w in workers))
        self._owner.clear()
        self.bmcs = []

    async def stop(self) -> None:
        """Stop the workers (they kill their VMs by PID) and remove the temporary machine directory."""
        await self._stop_workers()
        if self._tmpdir is not None:
            await asyncio.to_thread(shutil.rmtree, self._tmpdir, True)
            self._tmpdir = None

    @property
    def pids(self) -> list[int]:
        """Process IDs of the workers (for supervision and tests)."""
        return [w.proc.pid for w in self._workers]

    # -- inventory ---------------------------------------------------------------------------------
    def inventory(self) -> list[dict[str, Any]]:
        nodes = [
            node_entry(b.index, b.name, b.host, b.port, b.username, b.password, self.spec.pm_driver) for b in self.bmcs
        ]
        for node in nodes:
            info = self.machines.get(node["name"])
            if info is None:
                continue
            node["boot_mode"] = info.boot_mode
            # what a VM has (a simulated machine the same): every lab machine takes the flavor "lab"
            node.update(cpus=1, memory_mb=self.spec.memory_mb, local_gb=max(1, self.spec.disk_mb // 1024))
            if info.console is not None:  # a VM's serial console is the node's terminal port
                node["terminal_port"] = info.console[1]
        return nodes

    def machine(self, name: str) -> MachineInfo:
        return self.machines[name]

    async def machine_pids(self) -> dict[str, int | None]:
        """Each QEMU machine's process ID while its VM runs (None: powered off)."""
        states = await self.states([n for n, m in self.machines.items() if m.kind == "qemu"])
        return {name: state["machine"]["pid"] for name, state in states.items()}

    async def connect(self, boot_url: str | None = None, bmd_address: str | None = None) -> None:
        """Tell the machines where bmd is, once it is bound: ``boot_url`` (sim: ``<bmd url>/images``),
        ``bmd_address`` (qemu: ``host:port`` for the guests' ``10.0.2.100:8080``)."""
        await self._each("connect", None, boot_url=boot_url, bmd_address=bmd_address)

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

    async def sol(self, names: list[str] | None, *, drop_every: int | None = None, print_text: str = "") -> None:
        """Serial over LAN knobs: lose every Nth SOL data packet the BMCs send (0: none), and/or make
        their simulated machines print ``print_text`` on the serial line."""
        await self._each("sol", names, drop_every=drop_every, print=print_text)

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
