"""A QEMU VM behind a lab BMC (recipe: shared/notes/qemu-pxe.md, TCG only).

Power on starts ``qemu-system-x86_64``; power off kills it by PID (soft off presses the ACPI power button
over QMP, ``system_powerdown``, and kills the VM if it still runs ``soft_off_seconds`` later); reset and
cycle restart the process, so the boot order of the new boot is the one the BMC's boot device asks for;
the power state is the process's state (a guest that powers itself off reads as off). Per VM, in its own
directory: ``disk.qcow2`` (created once with ``qemu-img``, kept across power cycles), ``serial.log`` (the
serial console, appended), the UEFI variable store ``OVMF_VARS.fd`` (a copy of Debian's), ``qemu.stderr``;
its Unix sockets (console, QMP) there too, or in a temporary directory when that path is too long.

Networking is user-mode, ``restrict=on``: the guest reaches nothing but QEMU's own TFTP (``boot.ipxe``,
chaining to bmd over HTTP) and ``10.0.2.100:8080``, forwarded by ``socat`` to bmd (``bmd_address``), so bmd's
``api.public_url`` for these machines is ``http://10.0.2.100:8080``. The serial console is also served on
TCP ``(console_host, console_port)`` (the node's ``terminal_port``) by the lab worker
(:class:`~bmd.lab.console.ConsoleRelay`), so a client stays connected while the VM restarts.

Every VM dies with the lab worker: killed in :meth:`QemuMachine.close`, and ``PR_SET_PDEATHSIG`` kills it if
the worker itself is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from bmd.errors import BmdError
from bmd.lab.console import ConsoleRelay

log = structlog.get_logger(__name__)

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
FIRMWARE_PATHS = ("/usr/share/seabios", "/usr/lib/ipxe/qemu")
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
GUEST_BMD = "10.0.2.100:8080"  # where the guest reaches bmd (guestfwd); api.public_url = http://<this>
PUBLIC_URL = f"http://{GUEST_BMD}"
BOOT_PXE, BOOT_DISK = 1, 2
_PR_SET_PDEATHSIG = 1


class QemuMissing(BmdError):
    code = "qemu_missing"


def qemu_missing(boot_modes: set[str]) -> str | None:
    """Why QEMU machines cannot run here (None when they can): names the Debian package to install."""
    for tool, package in ((QEMU, "qemu-system-x86"), (QEMU_IMG, "qemu-utils"), ("socat", "socat")):
        if shutil.which(tool) is None:
            return f"{tool} not found: install the Debian package {package}"
    if not Path(FIRMWARE_PATHS[1], "pxe-virtio.rom").is_file():
        return "iPXE ROMs for QEMU not found in /usr/lib/ipxe/qemu: install the Debian package ipxe-qemu"
    if "uefi" in boot_modes and not (Path(OVMF_CODE).is_file() and Path(OVMF_VARS).is_file()):
        return f"{OVMF_CODE} not found: install the Debian package ovmf"
    return None


def boot_script(public_url: str = PUBLIC_URL) -> str:
    """What QEMU's TFTP hands iPXE: chain to the node's script bmd serves (or exit to the next device)."""
    return f"#!ipxe\nchain {public_url}/images/ipxe/01-${{mac:hexhyp}}.ipxe || exit\n"


@dataclass(frozen=True, slots=True)
class QemuSpec:
    name: str
    mac: str
    workdir: str
    tftp_dir: str  # holds boot.ipxe
    console_host: str
    console_port: int
    boot_mode: str = "bios"  # "bios" (SeaBIOS) | "uefi" (OVMF)
    memory_mb: int = 256
    disk_mb: int = 1024
    bmd_address: str = ""  # host:port the guest's 10.0.2.100:8080 is forwarded to
    soft_off_seconds: float = 10.0

    def to_json(self) -> dict[str, Any]:
        return {"kind": "qemu", **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QemuSpec:
        return cls(**{k: v for k, v in data.items() if k != "kind"})


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _no_comma(value: str, what: str) -> str:
    if "," in value:
        raise BmdError(f"{what} {value!r} must not contain a comma (QEMU option syntax)")
    return value


class QemuMachine:
    def __init__(self, spec: QemuSpec) -> None:
        self.spec = spec
        self.dir = Path(spec.workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk = self.dir / "disk.qcow2"
        self.serial_log = self.dir / "serial.log"
        self.vars = self.dir / "OVMF_VARS.fd"
        # Unix socket paths are limited to 107 bytes: beside the disk when that is short enough
        self._own_sock_dir = len(str(self.dir)) > 90
        self.sock_dir = Path(tempfile.mkdtemp(prefix="bmd-vm-")) if self._own_sock_dir else self.dir
        self.qmp_path = self.sock_dir / "qmp.sock"
        self.console = ConsoleRelay(
            spec.name, spec.console_host, spec.console_port, self.serial_log, self.sock_dir / "console.sock"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.boots = 0
        self.last_exit: int | None = None
        self.last_selector = 0
        self._kill_at: float | None = None
        self.bmd_address = spec.bmd_address
        if not self.disk.exists():
            done = subprocess.run(
                [QEMU_IMG, "create", "-q", "-f", "qcow2", str(self.disk), f"{spec.disk_mb}M"],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise BmdError(f"qemu-img create {self.disk}: {done.stderr.decode(errors='replace').strip()}")
        if spec.boot_mode == "uefi" and not self.vars.exists():
            shutil.copyfile(OVMF_VARS, self.vars)

    # -- the BMC's verbs ------------------------------------------------------------------------------
    async def open(self) -> None:
        await self.console.open()

    def serial_line(self) -> ConsoleRelay:
        return self.console

    def connect(self, boot_url: str | None, bmd_address: str | None) -> None:
        if bmd_address:
            self.bmd_address = bmd_address

    def running(self) -> bool | None:
        proc = self.proc
        if proc is None:
            return False
        code = proc.poll()
        if code is None and self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill()  # soft off not honoured in time: pull the plug
            return False
        if code is not None:
            self.last_exit, self.proc, self._kill_at = code, None, None
            return False
        return True

    def boot(self, selector: int) -> None:
        self._kill()
        self.boots += 1
        self.last_selector = selector
        argv = self.argv(selector)
        stderr = open(self.dir / "qemu.stderr", "ab")
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent,
                cwd=self.dir,
            )
        except OSError as err:  # the machine stays off; the BMC still answers
            log.error("lab_vm_start_failed", machine=self.spec.name, error=str(err))
            return
        finally:
            stderr.close()
        log.info("lab_vm_started", machine=self.spec.name, pid=self.proc.pid, boot=selector)

    def power_off(self, soft: bool) -> None:
        if soft and self.running():
            # The ACPI power button (best effort: a VM still starting has no QMP socket yet); the guest gets
            # soft_off_seconds to power itself off, then it is killed.
            self._qmp("system_powerdown")
            self._kill_at = time.monotonic() + self.spec.soft_off_seconds
            with contextlib.suppress(RuntimeError):  # no running loop: the next power read enforces the bound
                asyncio.get_running_loop().call_later(self.spec.soft_off_seconds + 0.1, self.running)
            return
        self._kill()

    def close(self) -> None:
        self._kill()
        self.console.close()
        if self._own_sock_dir:
            shutil.rmtree(self.sock_dir, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running() and self.proc is not None else None

    def _kill(self) -> None:
        proc, self.proc, self._kill_at = self.proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.last_exit = proc.wait(10)
        log.info("lab_vm_stopped", machine=self.spec.name, pid=proc.pid, code=self.last_exit)

    def _qmp(self, command: str) -> bool:
        """One QMP command over the VM's monitor socket; False when it could not be sent."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(str(self.qmp_path))
                stream = sock.makefile("rwb")
                stream.readline()  # greeting
                for cmd in ("qmp_capabilities", command):
                    stream.write(json.dumps({"execute": cmd}).encode() + b"\n")
                    stream.flush()
                    while True:  # skip asynchronous events until the command's answer
                        reply = json.loads(stream.readline() or b"{}")
                        if "return" in reply or "error" in reply or not reply:
                            break
                return "return" in reply
        except (OSError, ValueError):
            return False

    def argv(self, selector: int) -> list[str]:
        s = self.spec
        if not self.bmd_address:
            raise BmdError(f"lab machine {s.name}: no bmd address to forward {GUEST_BMD} to")
        host, _, port = self.bmd_address.rpartition(":")
        workdir, tftp = _no_comma(str(self.dir), "workdir"), _no_comma(s.tftp_dir, "tftp_dir")
        netdev = (
            f"user,id=n0,restrict=on,tftp={tftp},bootfile=boot.ipxe,"
            f"guestfwd=tcp:{GUEST_BMD}-cmd:socat - TCP:{host.strip('[]')}:{int(port)}"
        )
        argv = [QEMU, "-machine", "pc,accel=tcg", "-smp", "1", "-m", str(s.memory_mb), "-name", s.name]
        for path in FIRMWARE_PATHS:
            argv += ["-L", path]
        argv += ["-display", "none", "-monitor", "none", "-nodefaults", "-no-user-config"]
        sockets = _no_comma(str(self.sock_dir), "socket directory")
        argv += ["-qmp", f"unix:{sockets}/qmp.sock,server=on,wait=off"]
        argv += [
            "-chardev",
            f"socket,id=s0,path={sockets}/console.sock",  # the relay serves it on (console_host, console_port)
            "-serial",
            "chardev:s0",
            "-drive",
            f"file={workdir}/disk.qcow2,if=none,id=d0,format=qcow2",
            "-netdev",
            netdev,
        ]
        pxe_first = selector == BOOT_PXE
        disk_index, net_index = (2, 1) if pxe_first else (1, 2)
        net = f"virtio-net-pci,netdev=n0,mac={s.mac}"
        if s.boot_mode == "uefi":
            argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}"]
            argv += ["-drive", f"if=pflash,format=raw,file={workdir}/OVMF_VARS.fd"]
        if selector == BOOT_DISK:  # the disk only: no network boot at all
            argv += ["-device", "virtio-blk-pci,drive=d0,bootindex=1", "-device", f"{net},romfile="]
        else:  # PXE: network then disk; no override: disk then network
            argv += ["-device", f"virtio-blk-pci,drive=d0,bootindex={disk_index}"]
            argv += ["-device", f"{net},bootindex={net_index}"]
        return argv

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": "qemu",
            "pid": self.pid,
            "running": self.running(),
            "boots": self.boots,
            "last_boot": self.last_selector,
            "last_exit": self.last_exit,
            "boot_mode": self.spec.boot_mode,
            "serial_log": str(self.serial_log),
            "disk": str(self.disk),
            "console": [self.spec.console_host, self.spec.console_port],
        }
