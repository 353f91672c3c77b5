"""A provisioning network for a test: a network namespace the test creates and removes (``pxe_netns``).

Inside it: ``lo`` up, a bridge ``br0`` with ``10.77.0.1/24``, a tap ``tap0`` on the bridge (for a QEMU VM
started with ``ip netns exec``). Helpers add veth ports (for ``busybox udhcpc`` as a second DHCP client),
wrap a binary so bmd runs it inside the namespace (``ip netns exec`` execs, so the PID bmd supervises is
the binary's own), and forward a TCP port of the bridge address to a TCP port on the host's loopback (socat
through a UNIX socket: the file system is shared, the network is not), so a bmd served on 127.0.0.1 is
reachable as ``http://10.77.0.1:<port>`` from inside.

For the tests that boot a QEMU VM on ``tap0``: :func:`qemu_argv` (BIOS or UEFI, PXE first) and
:func:`ramdisk_cloud`, an in-process bmd (``tests.cloud``) whose dnsmasq serves the bridge and whose PXE
boots hand out bmd's real ramdisk, its API reachable from inside as ``PUBLIC``.

Everything started here is killed by PID and the namespace is deleted at teardown, even on failure. Without
root/CAP_NET_ADMIN (``ip netns add`` refused) the test skips, saying why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bmd.config import Settings
from tests.cloud import Cloud, make_cloud
from tests.conftest import make_settings

BRIDGE_IP = "10.77.0.1"
PREFIX = 24
PUBLIC = f"http://{BRIDGE_IP}:8080"  # bmd's API as the namespace (the VM) reaches it: api.public_url
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def skip(reason: str) -> None:
    print(f"SKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None and not Path(tool).exists():
            skip(f"{tool} not installed")


def run(argv: Sequence[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def must(argv: Sequence[str]) -> str:
    done = run(argv)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns a true value (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class PxeNetns:
    name: str
    workdir: Path
    bridge: str = "br0"
    address: str = BRIDGE_IP
    prefix: int = PREFIX
    tap: str = "tap0"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def ip(self, *args: str) -> str:
        return must(self.argv("ip", *args))

    def spawn(self, argv: Sequence[str], log: Path | None = None, inside: bool = True) -> subprocess.Popen[bytes]:
        """A process (inside the namespace unless ``inside=False``), killed by PID at teardown."""
        with open(log or os.devnull, "ab") as out:  # the child keeps its own copy
            proc = subprocess.Popen(
                self.argv(*argv) if inside else list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def wrapper(self, binary: str) -> Path:
        """A script that runs ``binary`` inside the namespace with the same PID (``ip netns exec`` execs)."""
        path = self.workdir / f"netns-{Path(binary).name}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {binary} "$@"\n')
        path.chmod(0o755)
        return path

    def add_port(self, name: str, mac: str) -> str:
        """A veth pair in the namespace: ``name`` (with ``mac``) for a client, its peer on the bridge."""
        peer = f"{name}p"
        self.ip("link", "add", name, "type", "veth", "peer", "name", peer)
        self.ip("link", "set", name, "address", mac)
        self.ip("link", "set", peer, "master", self.bridge)
        self.ip("link", "set", peer, "up")
        self.ip("link", "set", name, "up")
        return name

    def advertise_ipv6(self) -> list[str]:
        """Give the bridge an IPv6 prefix and return the ``pxe.extra_options`` that make dnsmasq advertise it:
        iPXE then ends its IPv6 configuration at once instead of waiting ~12 s for a router advertisement
        (measured: boot.ipxe 18.4 -> 6.0 s after launch, BIOS; 30.2 -> 15.7 s, UEFI)."""
        self.ip("addr", "add", "fd77::1/64", "dev", self.bridge)
        return ["enable-ra", f"dhcp-range=::,constructor:{self.bridge},ra-stateless"]

    def forward(self, port: int, host_port: int) -> str:
        """``http://<bridge address>:<port>`` inside, forwarded to ``127.0.0.1:<host_port>`` on the host."""
        sock = self.workdir / f"fwd-{port}.sock"
        self.spawn(["socat", f"UNIX-LISTEN:{sock},fork", f"TCP:127.0.0.1:{host_port}"], inside=False)
        wait_for(sock.exists, 10, f"socat listening on {sock}")
        self.spawn(["socat", f"TCP-LISTEN:{port},bind={self.address},fork,reuseaddr", f"UNIX-CONNECT:{sock}"])
        wait_for(lambda: f"{self.address}:{port}" in must(self.argv("ss", "-ltnH")), 10, "socat listening inside")
        return f"http://{self.address}:{port}"

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


class AccessLog(logging.Handler):
    """The request lines bmd's aiohttp access log writes (``GET /images/boot.ipxe HTTP/1.1``...)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.seen: dict[str, float] = {}  # request line -> time.monotonic() it was logged

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        self.seen.setdefault(line.split('"')[1] if '"' in line else line, time.monotonic())

    def got(self, path: str) -> bool:
        return any(f'"GET {path} ' in line for line in self.lines)

    def when(self, path: str, method: str = "GET") -> float | None:
        """When the first ``method path`` request was logged (aiohttp logs a request once it is answered)."""
        return next((t for line, t in self.seen.items() if line.startswith(f"{method} {path} ")), None)


@pytest.fixture
def access_log() -> Iterator[AccessLog]:
    handler = AccessLog()
    logger = logging.getLogger("aiohttp.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _create(name: str) -> None:
    if os.geteuid() != 0:
        skip("network namespace tests need root (CAP_NET_ADMIN); running as uid " + str(os.geteuid()))
    need("ip")
    done = run(["ip", "netns", "add", name])
    if done.returncode != 0:
        skip(f"cannot create a network namespace: {done.stderr.strip()}")


@pytest.fixture
def pxe_netns(tmp_path: Path) -> Iterator[PxeNetns]:
    name = f"bmd-t-{secrets.token_hex(4)}"
    _create(name)
    ns = PxeNetns(name, tmp_path)
    try:
        ns.ip("link", "set", "lo", "up")
        ns.ip("link", "add", ns.bridge, "type", "bridge")
        ns.ip("addr", "add", f"{ns.address}/{ns.prefix}", "dev", ns.bridge)
        ns.ip("link", "set", ns.bridge, "up")
        ns.ip("tuntap", "add", "dev", ns.tap, "mode", "tap")
        ns.ip("link", "set", ns.tap, "master", ns.bridge)
        ns.ip("link", "set", ns.tap, "up")
        yield ns
    finally:
        ns.close()
        run(["ip", "netns", "del", name])


async def dhcp_client(
    ns: PxeNetns, port: str, tmp: Path, arch: str = "0000", expect: bool = True
) -> dict[str, str] | None:
    """One ``udhcpc`` exchange on ``port`` with client-arch ``arch``; the bound lease's variables or None.

    dnsmasq pings a new address for 3 s before offering it: a client expecting an answer waits 2 x 5 s; one
    expecting none 2 x 2 s (an ignored client is ignored at once, no ping)."""
    out = tmp / f"lease-{port}"
    out.unlink(missing_ok=True)
    script = tmp / "udhcpc.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {out}\nexit 0\n')
    script.chmod(0o755)
    argv = ns.argv("busybox", "udhcpc", "-i", port, "-f", "-q", "-n", "-t", "2", "-T", "5" if expect else "2")
    argv += ["-A", "1", "-s", str(script), "-x", f"0x5d:{arch}"]
    done = await asyncio.to_thread(run, argv, 30.0)
    if done.returncode != 0 or not out.exists():
        print(f"udhcpc on {port}: status {done.returncode}: {done.stdout} {done.stderr}")
        return None
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


# A DHCPv6 Information-Request (what iPXE sends once an RA says "stateless"), from a port inside the
# namespace: argv PORT MAC TIMEOUT_S; prints "reply" when the server answers, else "none".
DHCPV6_INFO = r"""
import os, socket, struct, sys
port, mac, wait = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), float(sys.argv[3])
index = socket.if_nametoindex(port)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, port.encode())
s.bind(("::", 546, 0, index))
xid, duid = os.urandom(3), struct.pack("!HH", 3, 1) + mac  # DUID-LL
s.sendto(b"\x0b" + xid + struct.pack("!HH", 1, len(duid)) + duid + struct.pack("!HHH", 8, 2, 0),
         ("ff02::1:2", 547, 0, index))
s.settimeout(wait)
try:
    while (data := s.recv(2048))[:4] != b"\x07" + xid:
        pass
    print("reply")
except TimeoutError:
    print("none")
"""


async def dhcpv6_info_request(ns: PxeNetns, port: str, mac: str, wait: float = 3.0) -> bool:
    """One DHCPv6 Information-Request from ``port`` (its link-local address usable first); True if answered."""

    def ready() -> bool:
        out = must(ns.argv("ip", "-6", "addr", "show", "dev", port, "scope", "link"))
        return "inet6" in out and "tentative" not in out

    def neighbour() -> bool:
        # dnsmasq learns a DHCPv6 client's MAC from the kernel's neighbour table, filled by the router
        # solicitation the port sends once its address is usable: before that the request is "ignored".
        return mac.lower() in must(ns.argv("ip", "-6", "neigh", "show", "dev", ns.bridge)).lower()

    await asyncio.to_thread(wait_for, ready, 10, f"{port}'s IPv6 link-local address")
    await asyncio.to_thread(wait_for, neighbour, 10, f"{port}'s MAC in {ns.bridge}'s IPv6 neighbour table")
    done = await asyncio.to_thread(run, ns.argv(sys.executable, "-c", DHCPV6_INFO, port, mac, str(wait)), wait + 10)
    assert done.returncode == 0 and done.stdout.strip() in ("reply", "none"), done.stderr
    return done.stdout.strip() == "reply"


def dnsmasq_settings(tmp: Path, ns: PxeNetns, **pxe: Any) -> Settings:
    """Settings with dnsmasq serving the namespace's bridge (run inside it through the wrapper)."""
    values: dict[str, Any] = {
        "dhcp_provider": "dnsmasq",
        "interface": ns.bridge,
        "dhcp_range_start": "10.77.0.100",
        "dhcp_range_end": "10.77.0.150",
        "dhcp_netmask": str(ns.prefix),
        "dhcp_lease_time": 600,
        "dnsmasq_path": str(ns.wrapper("/usr/sbin/dnsmasq")),
        "restart_backoff": 0.2,
        "restart_backoff_max": 1.0,
        **pxe,
    }
    return make_settings(tmp, pxe=values)


@pytest.fixture
def dnsmasq_installed() -> None:
    need("/usr/sbin/dnsmasq")
    for name in ("undionly.kpxe", "snponly.efi"):
        if not Path("/usr/lib/ipxe", name).is_file():
            skip(f"/usr/lib/ipxe/{name} not installed (Debian ipxe)")


def qemu_argv(ns: PxeNetns, tmp: Path, boot_mode: str, mac: str, *, memory_mb: int = 128, cpus: int = 1) -> list[str]:
    """A TCG VM whose one NIC (``mac``) is the namespace's tap, booting from the network first; its serial
    console goes to ``tmp/serial.log``."""
    argv = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", str(memory_mb), "-smp", str(cpus)]
    argv += ["-display", "none", "-monitor", "none", "-serial", f"file:{tmp / 'serial.log'}", "-boot", "order=n"]
    argv += ["-netdev", f"tap,id=n0,ifname={ns.tap},script=no,downscript=no"]
    if boot_mode == "uefi":
        vars_copy = tmp / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}"]
        argv += ["-drive", f"if=pflash,format=raw,file={vars_copy}"]
        # No option ROM: OVMF's own virtio-net driver and PXE client (client-arch 7, not iPXE) boot first.
        argv += ["-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile="]
    else:
        argv += ["-L", "/usr/share/seabios", "-L", "/usr/lib/ipxe/qemu"]
        argv += ["-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
    return argv


async def qemu_disk(path: Path, size: str) -> Path:
    """An empty qcow2 disk (sparse: its size costs nothing until written)."""
    create = ["qemu-img", "create", "-q", "-f", "qcow2", str(path), size]
    await asyncio.to_thread(subprocess.run, create, check=True, timeout=30)
    return path


@asynccontextmanager
async def ramdisk_cloud(tmp: Path, ns: PxeNetns, ramdisk: Path, **sections: dict[str, Any]) -> AsyncIterator[Cloud]:
    """bmd in-process (``tests.cloud``) for a VM on ``ns``: dnsmasq serves the bridge (an IPv6 RA, else iPXE
    waits ~12 s for one; no ping before an offer), PXE boots hand out ``ramdisk`` (a ``bmd ramdisk build``,
    its kernel's console on the serial port: the ``vm_ramdisk`` fixture), and the API is reachable from
    inside as ``PUBLIC``. ``sections`` override settings; ``deploy`` keys are merged with the ramdisk's."""
    extra = ns.advertise_ipv6()
    pxe = dnsmasq_settings(tmp, ns, extra_options=[*extra, "no-ping"]).pxe.model_dump()
    deploy = {
        "deploy_kernel": str(ramdisk / "deploy_kernel"),
        "deploy_ramdisk": str(ramdisk / "deploy_ramdisk"),
        "allowed_image_roots": [str(tmp / "images-src"), str(ramdisk)],
        "append_params": "console=ttyS0",
        **sections.pop("deploy", {}),
    }
    api = {"public_url": PUBLIC, **sections.pop("api", {})}
    async with make_cloud(tmp, pxe=pxe, api=api, deploy=deploy, **sections) as cloud:
        assert cloud.client.port is not None
        ns.forward(8080, cloud.client.port)
        yield cloud


@pytest.fixture
def vm_ramdisk(pxe_netns: PxeNetns, dnsmasq_installed: None, request: pytest.FixtureRequest) -> Path:
    """``deploy_ramdisk``, asked for only once the namespace and dnsmasq are there. Named as an argument,
    the session fixture is set up first (wider scope), so without root the ramdisk (~40 s, Debian
    downloads) was built for a test that then skipped. The VM's tools are checked first for the same reason."""
    need("qemu-system-x86_64", "qemu-img", "socat", "busybox")
    ramdisk: Path = request.getfixturevalue("deploy_ramdisk")
    return ramdisk
