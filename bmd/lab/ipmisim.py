"""An OpenIPMI ``ipmi_sim`` BMC on loopback: an independent IPMI server to test bmd's client against.

The simulator's ``chassis_control`` hook is a small shell script that keeps the power state and the boot
device in files of the work directory (``power``: 0/1, ``boot``: none|pxe|default|bios|cdrom), and logs
every call to ``calls.log``. OpenIPMI 2.0.33's lanserv speaks cipher suites 0-3 only (SHA-1): a suite 17
proposal gets no answer at all.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

_CHASSIS_SCRIPT = """#!/bin/sh
# ipmi_sim chassis_control hook: ipmi_sim calls "<script> <device> get|set <param> [<value>] ...".
dir=$(dirname "$0")
shift
op=$1
shift
echo "$op $*" >> "$dir/calls.log"
case $op in
get)
    for p in "$@"; do
        case $p in
        power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)" ;;
        boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo none)" ;;
        *) echo "Invalid parameter: $p"; exit 1 ;;
        esac
    done ;;
set)
    while [ $# -gt 1 ]; do
        p=$1; v=$2; shift 2
        case $p in
        power) echo "$v" > "$dir/power" ;;
        boot) echo "$v" > "$dir/boot" ;;
        shutdown) echo 0 > "$dir/power" ;;
        reset) ;;
        identify) [ $# -gt 0 ] && shift ;;
        *) echo "Invalid parameter: $p"; exit 1 ;;
        esac
    done ;;
*) exit 1 ;;
esac
"""

_EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
mc_enable 0x20
"""


def available() -> bool:
    return shutil.which("ipmi_sim") is not None


def _lan_conf(workdir: Path, host: str, port: int, username: str, password: str, sol: str | None = None) -> str:
    auths = "none md2 md5 straight"
    # SOL (ipmi_lan(5)): a device path, or "tcp:HOST:PORT" which ipmi_sim connects to as the serial line.
    sol_line = f'  sol "{sol}" 115200\n' if sol else ""
    return f"""name "bmdsim"
set_working_mc 0x20
  startlan 1
    addr {host} {port}
    priv_limit admin
    allowed_auths_callback {auths}
    allowed_auths_user {auths}
    allowed_auths_operator {auths}
    allowed_auths_admin {auths}
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{workdir / "chassis_control"} 0x20"
  user 1 true "" "unused-anonymous" user 10 {auths}
  user 2 true "{username}" "{password}" admin 10 {auths}
{sol_line}"""


async def rmcp_ping(host: str, port: int, wait: float) -> bool:
    """ASF presence ping (RMCP class 6, 13.2.3): True when a pong comes back within ``wait`` seconds."""
    loop = asyncio.get_running_loop()
    pong: asyncio.Future[bool] = loop.create_future()

    class _Ping(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if len(data) >= 9 and data[3] == 0x06 and data[8] == 0x40 and not pong.done():
                pong.set_result(True)

    transport, _ = await loop.create_datagram_endpoint(_Ping, remote_addr=(host, port))
    try:
        transport.sendto(b"\x06\x00\xff\x06" + b"\x00\x00\x11\xbe" + b"\x80\x01\x00\x00")
        done, _ = await asyncio.wait((pong,), timeout=wait)
        return bool(done)
    finally:
        pong.cancel()
        transport.close()


class IpmiSim:
    """One ``ipmi_sim`` process serving one BMC on ``host``:``port`` (a free port when 0)."""

    def __init__(
        self,
        workdir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "admin",
        password: str = "password",
        sol: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.sol = sol
        self._proc: asyncio.subprocess.Process | None = None

    def _prepare(self, port: int) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "state").mkdir(exist_ok=True)
        script = self.workdir / "chassis_control"
        script.write_text(_CHASSIS_SCRIPT)
        script.chmod(0o755)
        (self.workdir / "sim.emu").write_text(_EMU)
        (self.workdir / "lan.conf").write_text(
            _lan_conf(self.workdir, self.host, port, self.username, self.password, self.sol)
        )

    async def start(self, deadline: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            port = self.port or _free_udp_port(self.host)
            await asyncio.to_thread(self._prepare, port)
            w = self.workdir
            self._proc = await asyncio.create_subprocess_exec(
                "ipmi_sim",
                "-c",
                str(w / "lan.conf"),
                "-f",
                str(w / "sim.emu"),
                "-n",
                "-s",
                str(w / "state"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            end = loop.time() + deadline
            while self._proc.returncode is None and loop.time() < end:
                if await rmcp_ping(self.host, port, 0.2):
                    self.port = port
                    log.debug("ipmi_sim_started", host=self.host, port=port, pid=self._proc.pid)
                    return
            await self.stop()
            if self.port:
                break
        raise RuntimeError(f"ipmi_sim did not answer on {self.host} (see {self.workdir})")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def __aenter__(self) -> IpmiSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the state the chassis_control hook keeps --------------------------------------------------
    def _read(self, name: str, default: str) -> str:
        try:
            return (self.workdir / name).read_text().strip()
        except FileNotFoundError:
            return default

    def power(self) -> bool:
        return self._read("power", "0") == "1"

    def boot(self) -> str:
        return self._read("boot", "none")

    def set_power(self, on: bool) -> None:
        (self.workdir / "power").write_text("1\n" if on else "0\n")

    def calls(self) -> list[str]:
        return self._read("calls.log", "").splitlines()


def _free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


__all__ = ["IpmiSim", "available", "rmcp_ping"]
