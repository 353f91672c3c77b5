"""The machines behind the lab BMCs, driven by the chassis commands a BMC receives.

A :class:`~bmd.lab.bmc.LabBmc` calls ``boot(selector)`` when the host (re)starts — power on from off, reset,
cycle — with the boot device the firmware uses for that boot (IPMI boot selector: 1 PXE, 2 disk, 0 none
set: the machine's default order, disk then network), ``power_off(soft)``, and ``running()`` whenever its
power state is read (``None``: the BMC's own flag is the truth).

- :class:`SimMachine` (``--machines sim``): booting from PXE does what iPXE and bmd's deploy ramdisk would:
  GET ``<boot_url>/ipxe/01-<mac>.ipxe`` from bmd; in deploy mode take ``bmd_node_uuid``/``bmd_url`` from the
  ``kernel`` line and run the agent protocol (:func:`bmd.drivers.deploy.agent_sim.run_deploy`: a deploy, or
  the clean after a delete when the lookup answers ``mode: clean``, the inspection when it answers ``mode:
  inspect``: the report :func:`sim_report` describes, LLDP included); no script
  (404) or boot mode: it "boots" the disk. Booting from disk touches no network.
- :class:`~bmd.lab.qemu.QemuMachine` (``--machines qemu``): a QEMU VM per BMC.

Machines live in the lab worker process, on its event loop; every task they start is kept and cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import aiohttp
import structlog

from bmd.drivers.deploy.agent_sim import BootArgs, fetch_boot_args, run_deploy
from bmd.lab.inventory import NODES_PER_RACK
from bmd.lab.serial import SerialLine, SimSerial

log = structlog.get_logger(__name__)

BOOT_DEFAULT, BOOT_PXE, BOOT_DISK = 0, 1, 2
# A lookup answered 409 invalid_state is retried for this long: bmd records the boot just after power-on.
LOOKUP_RETRY_SECONDS = 30.0
SIM_BOOT_SECONDS = 0.2  # firmware + iPXE, simulated: long enough that bmd has recorded the power-on


class Machine(Protocol):
    async def open(self) -> None: ...

    def boot(self, selector: int) -> None: ...

    def power_off(self, soft: bool) -> None: ...

    def running(self) -> bool | None: ...

    def connect(self, boot_url: str | None, bmd_address: str | None) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...

    def serial_line(self) -> SerialLine: ...

    def close(self) -> None: ...


def sim_report(index: int, mac: str, memory_mb: int, disk_mb: int, boot_mode: str) -> dict[str, Any]:
    """What lab machine ``index`` reports when inspected: what the lab enrolls it with (one CPU, the lab's
    memory and disk), and LLDP from its rack's switch — the same switch and port the lab's inventory gives
    its interface (bmd.lab.inventory)."""
    rack, port = index // NODES_PER_RACK, index % NODES_PER_RACK + 1
    return {
        "version": 1,
        "cpu": {"count": 1, "arch": "x86_64", "model": "bmd lab simulated CPU"},
        "memory": {"total_mib": memory_mb - 32, "physical_mib": memory_mb},
        "boot_mode": boot_mode,
        "system": {"vendor": "bmd", "product": "lab sim machine", "serial": f"SIM{index + 1:06d}"},
        "disks": [
            {
                "name": "sda",
                "size": max(1, disk_mb // 1024) << 30,
                "model": "bmd lab disk",
                "vendor": "bmd",
                "serial": f"SIMDISK{index + 1:06d}",
                "wwn": None,
                "rotational": False,
            }
        ],
        "nics": [
            {
                "name": "eth0",
                "mac": mac,
                "carrier": True,
                "speed_mbps": 10000,
                "lldp": {
                    "chassis_id": f"0x{0xB3D0000 + rack:016x}",
                    "chassis_id_subtype": 7,
                    "port_id": f"Ethernet{port}",
                    "port_id_subtype": 5,
                    "system_name": f"lab-rack-{rack + 1:02d}",
                    "port_description": None,
                },
            }
        ],
    }


class SimMachine:
    """A machine that PXE-boots bmd's deploy in-process (HTTP to bmd, the real agent protocol)."""

    def __init__(
        self,
        name: str,
        mac: str,
        boot_url: str = "",
        agent_address: str = "127.0.0.1",
        report: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.mac = mac
        self.boot_url = boot_url
        self.agent_address = agent_address
        self.report = report  # what it reports when inspected
        self.state = "off"
        self.boots = 0
        self.deploys = 0
        self.cleans = 0
        self.inspections = 0
        self.last: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self.serial = SimSerial(name)

    async def open(self) -> None:
        pass

    def serial_line(self) -> SerialLine:
        return self.serial

    def connect(self, boot_url: str | None, bmd_address: str | None) -> None:
        if boot_url:
            self.boot_url = boot_url

    def running(self) -> bool | None:
        return None  # the BMC's power flag is the truth: a simulated machine never powers itself off

    def _cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def boot(self, selector: int) -> None:
        self._cancel()
        self.boots += 1
        device = {BOOT_PXE: "network (PXE)", BOOT_DISK: "disk"}.get(selector, "the default order")
        self.serial.print(f"\nbmd lab sim machine {self.name} ({self.mac}): booting from {device}\n")
        if selector != BOOT_PXE:
            self.state = "disk"
            self.serial.print(f"{self.name}: booted from disk\n")
            return
        if not self.boot_url:
            self.state = "pxe_failed"
            self.last = {"error": "the lab was given no boot URL (--boot-url)"}
            log.warning("lab_machine_no_boot_url", machine=self.name)
            return
        self.state = "pxe"
        self._task = asyncio.get_running_loop().create_task(self._pxe(), name=f"sim-{self.name}")

    def power_off(self, soft: bool) -> None:
        self._cancel()
        self.state = "off"
        self.serial.print(f"{self.name}: power off{' (soft)' if soft else ''}\n")

    async def _pxe(self) -> None:
        try:
            await asyncio.sleep(SIM_BOOT_SECONDS)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                status, args = await fetch_boot_args(http, self.boot_url, self.mac)
                if args is None:  # no script (iPXE exits to the next device) or the instance's boot mode
                    self.state = "disk"
                    self.last = {"ipxe_status": status}
                    return
                self.state = "agent"
                self.deploys += 1
                self.serial.print(f"bmd-agent: node {args.node_uuid}: agent started against {args.bmd_url}\n")
                result = await self._deploy(http, args)
            self.last = {"status": result.status, "stage": result.stage, "error": result.error}
            ok = result.status == 202 and result.error is None
            if result.stage == "inspect":  # an inspect boot: the report's answer is 200
                ok = result.status == 200 and result.error is None
            cleaned = result.stage == "clean"  # a clean boot: the lookup answered mode=clean
            self.cleans += cleaned and ok
            self.inspections += result.stage == "inspect" and ok
            done = {"clean": "cleaned", "inspect": "inspected"}.get(result.stage, "deployed")
            self.state = done if ok else "agent_failed"
            self.serial.print(f"bmd-agent: {self.state} (stage {result.stage}, status {result.status})\n")
            log.info("lab_machine_deployed", machine=self.name, status=result.status, stage=result.stage)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a failed boot is the machine's state, never the worker's end
            self.state = "pxe_failed"
            self.last = {"error": f"{type(err).__name__}: {err}"}
            log.warning("lab_machine_boot_failed", machine=self.name, error=self.last["error"])

    async def _deploy(self, http: aiohttp.ClientSession, args: BootArgs) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOOKUP_RETRY_SECONDS
        delay = 0.1
        while True:
            result = await run_deploy(
                args, self.mac, address=self.agent_address, resume_at=None, session=http, report=self.report
            )
            if result.stage != "lookup" or result.status != 409 or "invalid_state" not in result.body:
                return result
            if loop.time() + delay > deadline:
                return result
            await asyncio.sleep(delay)  # a real agent retries its lookup too
            delay = min(delay * 2, 2.0)

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": "sim",
            "state": self.state,
            "boots": self.boots,
            "deploys": self.deploys,
            "cleans": self.cleans,
            "inspections": self.inspections,
            "last": self.last,
        }

    def close(self) -> None:
        self._cancel()


def make_machine(spec: dict[str, Any] | None) -> Machine | None:
    """The machine a worker's BMC entry describes (``{"kind": "sim"|"qemu", ...}``), or None."""
    if not spec:
        return None
    kind = spec.get("kind")
    if kind == "sim":
        return SimMachine(spec["name"], spec["mac"], spec.get("boot_url", ""), report=spec.get("report"))
    if kind == "qemu":
        from bmd.lab.qemu import QemuMachine, QemuSpec

        return QemuMachine(QemuSpec.from_json(spec))
    raise ValueError(f"unknown machine kind {kind!r}")
