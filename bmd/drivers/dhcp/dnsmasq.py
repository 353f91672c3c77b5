"""``dhcp_provider = "dnsmasq"``: bmd writes dnsmasq's configuration and runs it as a supervised child.

Files, under ``pxe.state_dir`` (default ``<service.state_dir>/dnsmasq``)::

    dnsmasq.conf      written at every start from the settings (render_config); nothing else is read
    hosts/<uuid>      one per node being deployed: "<mac>,set:bmd,set:bmd-<boot_mode>" lines
    dnsmasq.log       dnsmasq's log (log-dhcp: every DHCP exchange, "ignored" for unknown MACs)
    dnsmasq.pid       written by dnsmasq once it serves (bmd's readiness check)
    dnsmasq.leases    its lease database

Only MACs in ``hosts/`` get an answer (``dhcp-ignore=tag:!known``; to DHCPv6, a host pinned to an IPv4
address is "known-othernet", which is answered too). dnsmasq reads a new or changed file in
``hosts/`` by itself (inotify), but keeps the records of a deleted or rewritten file until SIGHUP: bmd
sends SIGHUP whenever it removes or rewrites a node's file. Files are written under a dot-name and renamed
(dnsmasq ignores dot-files), so it never reads half a file.

Boot chain: a PXE ROM (no iPXE) gets ``undionly.kpxe`` (client-arch 0, BIOS) or ``snponly.efi``
(client-arch 7/9, UEFI x86-64) over TFTP from ``deploy.tftp_root`` (bmd copies both there from
``pxe.ipxe_dir`` at start); iPXE (option 175 or user-class "iPXE") gets the HTTP URL of bmd's static chain
script ``<public_url>/images/boot.ipxe``, which chains to the node's ``ipxe/01-<mac>.ipxe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import pwd
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from bmd.config import Settings
from bmd.config_pxe import PxeSettings
from bmd.drivers.deploy.fsutil import in_thread, make_public_dirs, write_atomic
from bmd.drivers.deploy.spec import check_node_uuid, normalize_mac
from bmd.drivers.dhcp.base import BOOT_MODES
from bmd.drivers.dhcp.supervisor import Supervisor
from bmd.errors import ConfigError, InvalidInput
from bmd.tasks.runner import PeriodicTask

log = structlog.get_logger(__name__)

BIOS_LOADER = "undionly.kpxe"
UEFI_LOADER = "snponly.efi"
LOADERS = (BIOS_LOADER, UEFI_LOADER)
TAG = "bmd"
STALE_STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class DnsmasqFiles:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "dnsmasq.conf"

    @property
    def hosts(self) -> Path:
        return self.root / "hosts"

    @property
    def log(self) -> Path:
        return self.root / "dnsmasq.log"

    @property
    def pid(self) -> Path:
        return self.root / "dnsmasq.pid"

    @property
    def leases(self) -> Path:
        return self.root / "dnsmasq.leases"


def state_root(settings: Settings) -> Path:
    return Path(settings.pxe.state_dir or Path(settings.service.state_dir, "dnsmasq")).resolve()


def boot_url(settings: Settings, public_url: str) -> str:
    """What iPXE is told to chain: ``pxe.ipxe_boot_url``, else bmd's static chain script."""
    if settings.pxe.ipxe_boot_url:
        return settings.pxe.ipxe_boot_url
    base = (settings.api.public_url or public_url).rstrip("/")
    if not base:
        raise ConfigError(
            "api.public_url: unknown, so dnsmasq cannot tell iPXE where boot.ipxe is; "
            "set api.public_url or pxe.ipxe_boot_url"
        )
    url = f"{base}/images/boot.ipxe"
    if any(c in url for c in " \t\n,'\"") or not url.startswith(("http://", "https://")):
        raise ConfigError(f"api.public_url: {base!r} cannot go into a DHCP boot file name")
    return url


def render_config(pxe: PxeSettings, files: DnsmasqFiles, tftp_root: Path, url: str, user: str) -> str:
    """dnsmasq.conf for the settings: DHCP + TFTP on the provisioning interface only, no DNS."""
    lines = [
        "# Written by bmd at every start from [pxe]. Do not edit: bmd rewrites it.",
        "port=0",  # no DNS
        "no-resolv",
        "no-hosts",
        f"interface={pxe.interface}",
        "bind-dynamic",
        f"user={user}",
        f"pid-file={files.pid}",
        f"log-facility={files.log}",
        "log-dhcp",
        f"dhcp-leasefile={files.leases}",
        f"dhcp-range={pxe.dhcp_range_start},{pxe.dhcp_range_end},{pxe.dhcp_netmask},{pxe.dhcp_lease_time}",
        f"dhcp-hostsdir={files.hosts}",
        # Only the MACs of nodes being deployed (a dhcp-host in hosts/ makes a client "known"). A DHCPv6
        # request (with an IPv6 RA in pxe.extra_options, iPXE's stateless information-request) matches a
        # host pinned to an IPv4 PXE IP only as "known-othernet": answered too, or iPXE waits ~13 s for it.
        "dhcp-ignore=tag:!known,tag:!dhcpv6",
        "dhcp-ignore=tag:!known,tag:!known-othernet,tag:dhcpv6",
    ]
    # Unset: dnsmasq's defaults (router: its own address on the interface; DNS: none, as port=0). An empty
    # "dhcp-option=3" would send a zero-length option, which DHCP clients (busybox udhcpc) reject whole.
    if pxe.dhcp_router:
        lines.append(f"dhcp-option=option:router,{pxe.dhcp_router}")
    if pxe.dns_servers:
        lines.append(f"dhcp-option=option:dns-server,{','.join(pxe.dns_servers)}")
    if pxe.listen_address:
        lines.append(f"listen-address={pxe.listen_address}")
    lines += [
        "enable-tftp",
        f"tftp-root={tftp_root}",
        # Which firmware asks: iPXE itself, else the PXE ROM's client architecture (RFC 4578 option 93).
        "dhcp-match=set:ipxe,175",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:bios,option:client-arch,0",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        f"dhcp-boot=tag:{TAG},tag:ipxe,{url}",
        f"dhcp-boot=tag:{TAG},tag:!ipxe,tag:bios,{BIOS_LOADER}",
        f"dhcp-boot=tag:{TAG},tag:!ipxe,tag:efi64,{UEFI_LOADER}",
    ]
    if pxe.extra_options:
        lines.append("# pxe.extra_options")
        lines += pxe.extra_options
    return "\n".join(lines) + "\n"


def hosts_text(node_uuid: str, macs: Sequence[str], boot_mode: str, address: str | None = None) -> str:
    """One line per MAC; with ``address``, one line naming every MAC and the address (dnsmasq gives it to
    whichever of them asks: one NIC boots at a time)."""
    tags = f"set:{TAG},set:{TAG}-{boot_mode}"
    if address:
        body = f"{','.join(macs)},{tags},{address}\n"
    else:
        body = "".join(f"{mac},{tags}\n" for mac in macs)
    return f"# bmd: node {node_uuid} (boot_mode {boot_mode}), being deployed\n{body}"


def served_network(pxe: PxeSettings) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{pxe.dhcp_range_start}/{pxe.dhcp_netmask}", strict=False)


class HostsDir:
    """One file per node under ``hosts/``; every write is atomic. Blocking: call through ``in_thread``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def count(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            return sum(1 for p in self.path.iterdir() if not p.name.startswith("."))
        return 0

    def write(self, node_uuid: str, text: str) -> bool:
        """Write the node's file; True when an earlier, different file was replaced (needs SIGHUP)."""
        path = self.path / node_uuid
        try:
            old: str | None = path.read_text()
        except FileNotFoundError:
            old = None
        if old == text:
            return False
        write_atomic(path, text)
        return old is not None

    def remove(self, node_uuid: str) -> bool:
        try:
            (self.path / node_uuid).unlink()
        except FileNotFoundError:
            return False
        return True


def install_loaders(ipxe_dir: Path, tftp_root: Path) -> None:
    """Copy iPXE's BIOS and UEFI loaders into ``tftp_root`` (when missing or different). Blocking."""
    make_public_dirs(tftp_root)
    for name in LOADERS:
        src, dst = ipxe_dir / name, tftp_root / name
        if not src.is_file():
            raise ConfigError(f"pxe.ipxe_dir: {src} does not exist (install Debian's ipxe package)")
        data = src.read_bytes()
        if dst.is_file() and dst.read_bytes() == data:
            continue
        tmp = dst.with_name(f".tmp-{name}")
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)


def _alive(pid: int) -> bool:
    """Running (a zombie holds no socket any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def kill_stale(files: DnsmasqFiles) -> None:
    """A dnsmasq left running on our config by a bmd that died is stopped (it holds the DHCP socket)."""
    try:
        pid = int(files.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if f"--conf-file={files.conf}".encode() not in cmdline.split(b"\0"):
        return
    log.warning("dnsmasq_stale_stopped", pid=pid)
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STALE_STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # in a worker thread: the old dnsmasq must release the DHCP socket first
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class DnsmasqLogRotation:
    """A periodic loop: when ``dnsmasq.log`` (every DHCP exchange, ignored ones too) passes
    ``pxe.log_max_bytes`` it becomes ``dnsmasq.log.1`` (the previous one goes) and dnsmasq reopens its log
    on SIGUSR2. So the log takes at most about twice the bound."""

    name = "dnsmasq_log_rotation"

    def __init__(self, provider: DnsmasqProvider, interval: float = 60.0) -> None:
        self.provider = provider
        self.interval = interval

    def _rotate(self) -> bool:
        log_file = self.provider.files.log
        try:
            if log_file.stat().st_size <= self.provider.pxe.log_max_bytes:
                return False
        except FileNotFoundError:
            return False
        os.replace(log_file, log_file.with_name(log_file.name + ".1"))
        return True

    async def run_once(self) -> None:
        if await in_thread(self._rotate):
            self.provider.supervisor.send_signal(signal.SIGUSR2)
            log.info("dnsmasq_log_rotated", path=str(self.provider.files.log))


class DnsmasqProvider:
    name = "dnsmasq"

    def __init__(self, settings: Settings, files: DnsmasqFiles, url: str) -> None:
        self.settings = settings
        self.pxe = settings.pxe
        self.files = files
        self.url = url
        self.tftp_root = Path(settings.deploy.tftp_root).resolve()
        self.hosts = HostsDir(files.hosts)
        self._reload_lock = asyncio.Lock()
        self._reload_wanted = False
        self.reloads = 0
        self.host_count = 0
        self.supervisor = Supervisor(
            "dnsmasq",
            [self.pxe.dnsmasq_path, "--keep-in-foreground", f"--conf-file={files.conf}"],
            is_ready=self._ready,
            backoff=self.pxe.restart_backoff,
            backoff_max=self.pxe.restart_backoff_max,
            start_timeout=self.pxe.start_timeout,
        )

    @classmethod
    def from_settings(cls, settings: Settings, public_url: str = "") -> DnsmasqProvider:
        return cls(settings, DnsmasqFiles(state_root(settings)), boot_url(settings, public_url))

    def config_text(self) -> str:
        user = self.pxe.dnsmasq_user or pwd.getpwuid(os.geteuid()).pw_name
        return render_config(self.pxe, self.files, self.tftp_root, self.url, user)

    def _ready(self, pid: int) -> bool:
        try:
            return self.files.pid.read_text().strip() == str(pid)
        except OSError:
            return False

    def _prepare_files(self) -> None:
        binary = Path(self.pxe.dnsmasq_path)
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise ConfigError(f"pxe.dnsmasq_path: {binary} is not an executable (install Debian's dnsmasq-base)")
        install_loaders(Path(self.pxe.ipxe_dir), self.tftp_root)
        self.files.root.mkdir(parents=True, exist_ok=True)
        self.files.hosts.mkdir(exist_ok=True)
        kill_stale(self.files)
        self.files.pid.unlink(missing_ok=True)
        write_atomic(self.files.conf, self.config_text())
        self.host_count = self.hosts.count()

    async def start(self) -> None:
        await in_thread(self._prepare_files)
        await self.supervisor.start()
        log.info("dhcp_started", provider=self.name, interface=self.pxe.interface, hosts=self.host_count)

    async def stop(self) -> None:
        await self.supervisor.stop()

    def pinned(self, node_uuid: str, address: str | None) -> str | None:
        """``address`` if dnsmasq can hand it out here (a host address of the served subnet), else None: a
        dhcp-host for another subnet would make the node "known-othernet", i.e. ignored."""
        if not address:
            return None
        net = served_network(self.pxe)
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            ip = None
        if ip is None or ip not in net or ip in (net.network_address, net.broadcast_address):
            log.info("dhcp_pxe_ip_not_served", node_uuid=node_uuid, address=address, network=str(net))
            return None
        return str(ip)

    async def reload(self) -> None:
        """Make dnsmasq forget hostsdir records that were removed or replaced: it adds records on inotify but
        drops them only when it re-reads everything. SIGHUP would do that, but dnsmasq 2.90 aborts (SIGABRT)
        on a SIGHUP after a PXE client's lease (seen with a VM here: tests/dhcp/test_pxe_vm.py), so bmd
        restarts it instead (~0.1 s without DHCP; clients retransmit). Reloads asked for while one runs are
        coalesced into one more."""
        self._reload_wanted = True
        async with self._reload_lock:
            if not self._reload_wanted or not self.supervisor.started:
                return  # nothing runs: the next start reads the hosts dir afresh
            self._reload_wanted = False
            await self.supervisor.stop()
            await self.supervisor.start()
            self.reloads += 1

    async def add_node(self, node_uuid: str, macs: Sequence[str], boot_mode: str, address: str | None = None) -> None:
        node_uuid = check_node_uuid(node_uuid)
        if boot_mode not in BOOT_MODES:
            raise InvalidInput(f"boot_mode must be one of {', '.join(BOOT_MODES)}, got {boot_mode!r}", "boot_mode")
        clean = sorted({normalize_mac(m) for m in macs})
        if not clean:
            raise InvalidInput("a node needs a MAC to get DHCP answers", field="macs")
        text = hosts_text(node_uuid, clean, boot_mode, self.pinned(node_uuid, address))
        replaced = await in_thread(self.hosts.write, node_uuid, text)
        if replaced:
            await self.reload()  # drop the file's earlier records
        self.host_count = await in_thread(self.hosts.count)
        log.info("dhcp_host_added", node_uuid=node_uuid, macs=clean, boot_mode=boot_mode)

    async def remove_node(self, node_uuid: str) -> None:
        node_uuid = check_node_uuid(node_uuid)
        if await in_thread(self.hosts.remove, node_uuid):
            await self.reload()
            log.info("dhcp_host_removed", node_uuid=node_uuid)
        self.host_count = await in_thread(self.hosts.count)

    def periodic(self) -> list[PeriodicTask]:
        """The loops the service runs for this provider."""
        return [DnsmasqLogRotation(self)]

    def health(self) -> dict[str, Any]:
        st = self.supervisor.status
        return {
            "provider": self.name,
            "status": "ok" if st.running else "failing",
            **st.as_dict(),
            "hosts": self.host_count,
            "reloads": self.reloads,
        }
