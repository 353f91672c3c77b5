"""A deploy-ramdisk "machine" on the host for the sh agent: the real ``bmd/agent/bmd-agent.sh`` run by
busybox sh, every command a busybox applet (a PATH of symlinks, as in the ramdisk), its kernel command line,
sysfs and /dev as files under a temporary directory, and regular files as its disks."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import pytest

AGENT_DIR = Path(str(files("bmd") / "agent"))
GIB = 1 << 30
# A wget that records its arguments (one per line, a blank line between calls) before running busybox's:
# the tests read the token from it (the one place it is meant to be) and look for it everywhere else.
WGET_SHIM = """#!{busybox} sh
for a in "$@"; do printf '%s\\n' "$a" >>"{argv_log}"; done
printf '\\n' >>"{argv_log}"
exec {busybox} wget "$@"
"""


def busybox_or_skip() -> str:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (Debian package busybox-static)")
    return busybox


@dataclass
class Disk:
    name: str
    gib: int
    model: str = ""
    vendor: str = ""
    serial: str = ""
    wwn: str = ""
    vpd_serial: str = ""  # only in the SCSI unit serial number VPD page (SATA/SAS disks behind sd)


@dataclass
class Machine:
    root: Path
    busybox: str
    disks: list[Disk] = field(default_factory=list)
    lib: Path | None = None
    output: str = ""

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True)
        listing = os.popen(f"{self.busybox} --list").read().split()
        for applet in listing:
            if applet != "wget":
                (self.bin / applet).symlink_to(self.busybox)
        self.argv_log = self.root / "wget-argv.log"
        shim = self.bin / "wget"
        shim.write_text(WGET_SHIM.format(busybox=self.busybox, argv_log=self.argv_log))
        shim.chmod(0o755)
        for sub in ("sys/block", "sys/class/net", "dev", "work"):
            (self.root / sub).mkdir(parents=True)

    @property
    def work(self) -> Path:
        return self.root / "work"

    def add_disk(self, disk: Disk) -> Path:
        block = self.root / "sys" / "block" / disk.name
        (block / "device").mkdir(parents=True)
        (block / "size").write_text(f"{disk.gib * GIB // 512}\n")
        for name, value in (("model", disk.model), ("vendor", disk.vendor)):
            if value:
                (block / "device" / name).write_text(f"{value}   \n")  # sysfs pads these
        if disk.serial:
            (block / "serial").write_text(disk.serial + "\n")
        if disk.wwn:
            (block / "wwid").write_text(disk.wwn + "\n")
        if disk.vpd_serial:  # page 0x80: peripheral byte, page code, 2-byte length, then the serial (padded)
            page = disk.vpd_serial.encode() + b"    "
            (block / "device" / "vpd_pg80").write_bytes(bytes((0, 0x80)) + len(page).to_bytes(2, "big") + page)
        dev = self.root / "dev" / disk.name
        dev.write_bytes(b"\xee" * 4096)  # what was there before: must be overwritten only by the image
        self.disks.append(disk)
        return dev

    def disk(self, name: str) -> bytes:
        return (self.root / "dev" / name).read_bytes()

    async def run(self, bmd_url: str, node_uuid: str, mac: str, limit: float = 60, **env: str) -> int:
        """Boot the agent: returns its exit status; ``output`` keeps what it printed (its console)."""
        cmdline = self.root / "cmdline"
        cmdline.write_text(
            f"console=ttyS0 bmd_node_uuid={node_uuid} bmd_url={bmd_url} BOOTIF=01-{mac.replace(':', '-')}\n"
        )
        environ = {
            "PATH": str(self.bin),
            "HOME": str(self.root),
            "BMD_AGENT_CMDLINE": str(cmdline),
            "BMD_AGENT_SYSFS": str(self.root / "sys"),
            "BMD_AGENT_DEVDIR": str(self.root / "dev"),
            "BMD_AGENT_WORK": str(self.work),
            "BMD_AGENT_LIB": str(self.lib or AGENT_DIR),
            "BMD_AGENT_NO_DHCP": "1",
            "BMD_AGENT_WGET": str(self.bin / "wget"),
            "BMD_AGENT_ADDRESS": "127.0.0.1",
            "BMD_AGENT_RETRY_DELAY": "0",
            "BMD_AGENT_DISK_WAIT": "0",
            "BMD_AGENT_TIMEOUT": "20",
            "BMD_AGENT_IMAGE_TIMEOUT": "30",
            **env,
        }
        script = (self.lib or AGENT_DIR) / "bmd-agent.sh"
        proc = await asyncio.create_subprocess_exec(
            self.busybox, "sh", str(script),
            env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            async with asyncio.timeout(limit):
                out, _ = await proc.communicate()
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        self.output = out.decode(errors="replace")
        assert proc.returncode is not None
        return proc.returncode

    def tokens_in_argv(self) -> set[str]:
        """The tokens the agent handed to wget (``X-Agent-Token: ...`` arguments)."""
        if not self.argv_log.exists():
            return set()
        prefix = "X-Agent-Token: "
        return {a[len(prefix) :] for a in self.argv_log.read_text().splitlines() if a.startswith(prefix)}


class CutProxy:
    """A loopback TCP proxy to bmd that cuts the first image download after ``cut_at`` response bytes, as
    a flaky network would; it records each request's first line and Range header."""

    def __init__(self, cut_at: int | None = None, lookup_extra: bytes = b"") -> None:
        self.cut_at = cut_at
        self.lookup_extra = lookup_extra  # appended to the lookup's text answer (keys bmd may add)
        self.upstream: tuple[str, int] | None = None
        self.requests: list[tuple[str, str | None]] = []
        self.cuts = 0
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self.upstream is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode(errors="replace").split("\r\n")
            rng = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("range:")), None)
            self.requests.append((lines[0], rng))
            cut = self.cut_at is not None and lines[0].startswith("GET ") and "/image" in lines[0] and self.cuts == 0
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(head)
            pump = asyncio.create_task(self._pump(reader, up_writer))
            if self.lookup_extra and lines[0].startswith("POST /v1/agent/lookup"):
                writer.write(self._amend(await up_reader.read()))  # wget said Connection: close
                await writer.drain()
                pump.cancel()
                return
            sent = 0
            while chunk := await up_reader.read(16384):
                if cut and self.cut_at is not None and sent + len(chunk) >= self.cut_at:
                    writer.write(chunk[: self.cut_at - sent])
                    await writer.drain()
                    self.cuts += 1
                    break
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            pump.cancel()
            up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    def _amend(self, response: bytes) -> bytes:
        head, _, body = response.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            return response
        body += self.lookup_extra
        lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"content-length:")]
        return b"\r\n".join([*lines, b"Content-Length: %d" % len(body)]) + b"\r\n\r\n" + body

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(16384):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
