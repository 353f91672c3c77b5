"""Put bare-metal switch ports on VLANs by programming an Open vSwitch bridge with OpenFlow flows.

bmd owns the flows it writes (all carry the cookie prefix ``0xb3d0``); other flows on the bridge, such as
the default ``priority=0 actions=NORMAL``, are left alone.

Cookie (64 bits): ``0xb3d0`` (16 bits, "bmd") | VLAN id (12 bits) | VIF key (36 bits of sha256(vif_uuid);
0 is reserved for the per-VLAN flows). ``detach(vif)`` finds its flows with the mask ``0xffff000fffffffff``.

Flow layout, for a VIF on node port P and VLAN V (``T0`` = ``ingress_table``, ``T1`` = ``vlan_table``):

* per VIF (cookie ``b3d0|V|key``):
  - ``T0 prio 200  in_port=P,vlan_tci=0x0000/0x1fff -> push_vlan, set vid V, resubmit(,T1)`` (ingress);
  - ``T0 prio 199  in_port=P -> drop`` (frames the node tags itself never hop VLANs);
* per VLAN (cookie ``b3d0|V|0``), rewritten whenever its membership changes:
  - ``T0 prio 100  dl_vlan=V -> resubmit(,T1)`` (tagged traffic from uplinks);
  - ``T1 prio 100  dl_vlan=V -> output:<uplinks>, pop_vlan, output:P1, output:P2 ...`` (egress: uplinks get
    the tagged frame, every member port the untagged one; OVS never sends a frame back to its in_port).

Traffic bmd does not match keeps whatever the bridge does (usually NORMAL). So that NORMAL never floods
other traffic into a node, an attached port is set ``no-flood`` (``ovs-ofctl mod-port``) and set back to
``flood`` when its last VIF leaves; NORMAL never learns node MACs, since node frames never reach it.

Several ports share one VLAN (an OpenFlow table applies one flow per packet, so the per-VLAN egress flow
lists all member ports). Membership is read back from the switch (the per-VIF ingress flows), never kept in
memory, so a restarted bmd sees what is programmed. Each change is one atomic OpenFlow 1.4 bundle.
One bmd process is assumed to own a bridge's ``0xb3d0`` flows (changes are serialized by a lock).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog

from bmd.errors import DriverError, InvalidInput

log = structlog.get_logger(__name__)

COOKIE_TAG = 0xB3D0 << 48
TAG_MASK = 0xFFFF << 48
VLAN_SHIFT = 36
KEY_MASK = (1 << VLAN_SHIFT) - 1
VIF_MASK = TAG_MASK | KEY_MASK
ALL_ONES = (1 << 64) - 1
INGRESS_PRIORITY = 200
GUARD_PRIORITY = 199
VLAN_PRIORITY = 100
MAX_PORT = 0xFEFF  # OpenFlow 1.0 OFPP_MAX is 0xff00; reserved ports above

_FLOW_RE = re.compile(r"cookie=(0x[0-9a-f]+).*?\bpriority=(\d+),in_port=(\d+),vlan_tci=0x0000/0x1fff")


def vif_key(vif_uuid: str) -> int:
    """The 36-bit key of a VIF in its flows' cookies (never 0)."""
    key = int.from_bytes(hashlib.sha256(vif_uuid.encode()).digest()[:8], "big") & KEY_MASK
    return key or 1


def vif_cookie(vif_uuid: str, vlan_id: int) -> int:
    return COOKIE_TAG | (vlan_id << VLAN_SHIFT) | vif_key(vif_uuid)


def vlan_cookie(vlan_id: int) -> int:
    return COOKIE_TAG | (vlan_id << VLAN_SHIFT)


@dataclass(frozen=True, slots=True)
class OVSSettings:
    """``uplink_ports``: OpenFlow port numbers of trunks that carry the VLANs out of this bridge (tagged).

    ``timeout`` bounds every ovs-vsctl/ovs-ofctl invocation. The tables must differ; ``vlan_table`` is
    reserved for bmd.
    """

    timeout: float = 10.0
    uplink_ports: tuple[int, ...] = ()
    ingress_table: int = 0
    vlan_table: int = 1
    vsctl: str = "ovs-vsctl"
    ofctl: str = "ovs-ofctl"

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise InvalidInput("ovs.timeout must be > 0", field="ovs.timeout")
        if not (0 <= self.ingress_table < 254 and 0 <= self.vlan_table < 254) or (
            self.ingress_table == self.vlan_table
        ):
            raise InvalidInput("ovs tables must be distinct numbers in 0..253", field="ovs.vlan_table")
        for port in self.uplink_ports:
            _check_port(port, "ovs.uplink_ports")


@dataclass(frozen=True, slots=True)
class Attachment:
    """One VIF's ingress flow as read back from the switch."""

    key: int
    vlan_id: int
    port_no: int


def _check_port(port_no: int, field: str = "port_no") -> None:
    if isinstance(port_no, bool) or not isinstance(port_no, int) or not 1 <= port_no <= MAX_PORT:
        raise InvalidInput(f"{field} must be an OpenFlow port number in 1..{MAX_PORT}, got {port_no!r}", field)


class OVSBridge:
    """One Open vSwitch bridge, driven through ovs-vsctl/ovs-ofctl subprocesses.

    ``db_sock_path`` selects the OVSDB socket for ovs-vsctl (default: the system one); ``run_dir`` is
    exported as OVS_RUNDIR so ovs-ofctl finds ``<run_dir>/<bridge>.mgmt`` (a private OVS instance).
    """

    def __init__(
        self,
        bridge: str,
        db_sock_path: str | None = None,
        settings: OVSSettings | None = None,
        run_dir: str | None = None,
    ) -> None:
        if not bridge or not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", bridge):
            raise InvalidInput(f"bridge name {bridge!r} is not a valid OVS bridge name", field="bridge")
        self.bridge = bridge
        self.settings = settings or OVSSettings()
        self._db = [f"--db=unix:{db_sock_path}"] if db_sock_path else []
        self._env = dict(os.environ, OVS_RUNDIR=run_dir) if run_dir else None
        self._lock = asyncio.Lock()

    async def check(self) -> None:
        """DriverError unless the bridge exists and answers OpenFlow."""
        await self._vsctl("br-exists", self.bridge)
        await self._ofctl("show", self.bridge)

    async def ofport(self, interface: str) -> int:
        """The OpenFlow port number OVS assigned to ``interface``."""
        out = await self._vsctl("get", "Interface", interface, "ofport")
        port = int(out.strip())
        if port < 1:
            raise DriverError(f"interface {interface} on bridge {self.bridge} has no OpenFlow port ({port})")
        return port

    async def attach(self, port_no: int, vlan_id: int, vif_uuid: str) -> None:
        """Put switch port ``port_no`` on VLAN ``vlan_id`` for ``vif_uuid``. Idempotent.

        A VIF attached elsewhere is moved; a port that carried another VIF is taken over (logged): the
        database, not the switch, says which VIF owns a port.
        """
        _check_port(port_no)
        if isinstance(vlan_id, bool) or not isinstance(vlan_id, int) or not 1 <= vlan_id <= 4094:
            raise InvalidInput(f"vlan_id must be in 1..4094, got {vlan_id!r}", field="vlan_id")
        if not vif_uuid:
            raise InvalidInput("vif_uuid must not be empty", field="vif_uuid")
        key = vif_key(vif_uuid)
        async with self._lock:
            current = await self.attachments()
            stale = [a for a in current if a.key != key and a.port_no == port_no]
            for other in stale:
                log.warning("ovs_port_taken_over", bridge=self.bridge, port_no=port_no, vlan_id=other.vlan_id)
            removed = [a for a in current if a.key == key] + stale
            kept = [a for a in current if a not in removed]
            wanted = Attachment(key, vlan_id, port_no)
            commands = [f"delete cookie={_hex(COOKIE_TAG | a.key)}/{_hex(VIF_MASK)}" for a in removed]
            commands += self._vif_flows(wanted, vif_cookie(vif_uuid, vlan_id))
            vlans = {a.vlan_id for a in removed} | {vlan_id}
            commands += self._vlan_flows(vlans, [*kept, wanted])
            await self._mod_port(port_no, "no-flood")
            await self._bundle(commands)
            await self._release_ports({a.port_no for a in removed}, [*kept, wanted])
        log.info("ovs_vif_attached", bridge=self.bridge, vif_uuid=vif_uuid, port_no=port_no, vlan_id=vlan_id)

    async def detach(self, vif_uuid: str) -> None:
        """Remove ``vif_uuid``'s flows (and its port from its VLAN). Nothing attached: nothing to do."""
        key = vif_key(vif_uuid)
        async with self._lock:
            current = await self.attachments()
            removed = [a for a in current if a.key == key]
            if not removed:
                log.debug("ovs_vif_not_attached", bridge=self.bridge, vif_uuid=vif_uuid)
                return
            kept = [a for a in current if a.key != key]
            commands = [f"delete cookie={_hex(COOKIE_TAG | key)}/{_hex(VIF_MASK)}"]
            commands += self._vlan_flows({a.vlan_id for a in removed}, kept)
            await self._bundle(commands)
            await self._release_ports({a.port_no for a in removed}, kept)
        log.info("ovs_vif_detached", bridge=self.bridge, vif_uuid=vif_uuid)

    async def attachments(self) -> list[Attachment]:
        """What the switch has programmed: one entry per VIF ingress flow carrying bmd's cookie."""
        match = f"table={self.settings.ingress_table},cookie={_hex(COOKIE_TAG)}/{_hex(TAG_MASK)}"
        out = await self._ofctl("--no-stats", "--no-names", "dump-flows", self.bridge, match)
        found: list[Attachment] = []
        for line in out.splitlines():
            m = _FLOW_RE.search(line)
            if m is None or int(m.group(2)) != INGRESS_PRIORITY:
                continue
            cookie = int(m.group(1), 16)
            vlan_id = (cookie >> VLAN_SHIFT) & 0xFFF
            found.append(Attachment(cookie & KEY_MASK, vlan_id, int(m.group(3))))
        return found

    # -- flows ------------------------------------------------------------------------------------------
    def _vif_flows(self, a: Attachment, cookie: int) -> list[str]:
        t0, t1 = self.settings.ingress_table, self.settings.vlan_table
        return [
            f"add cookie={_hex(cookie)},table={t0},priority={INGRESS_PRIORITY},in_port={a.port_no},"
            f"vlan_tci=0x0000/0x1fff,actions=push_vlan:0x8100,set_field:{a.vlan_id | 0x1000}->vlan_vid,"
            f"resubmit(,{t1})",
            f"add cookie={_hex(cookie)},table={t0},priority={GUARD_PRIORITY},in_port={a.port_no},actions=drop",
        ]

    def _vlan_flows(self, vlans: Iterable[int], members: Sequence[Attachment]) -> list[str]:
        """Rewrite the per-VLAN flows of ``vlans`` for ``members`` (deleted when a VLAN has none left)."""
        t0, t1 = self.settings.ingress_table, self.settings.vlan_table
        commands: list[str] = []
        for vlan_id in sorted(set(vlans)):
            cookie = _hex(vlan_cookie(vlan_id))
            commands.append(f"delete cookie={cookie}/{_hex(ALL_ONES)}")
            ports = sorted({a.port_no for a in members if a.vlan_id == vlan_id})
            if not ports:
                continue
            outputs = [f"output:{u}" for u in self.settings.uplink_ports]
            outputs += ["pop_vlan", *(f"output:{p}" for p in ports)]
            commands.append(
                f"add cookie={cookie},table={t0},priority={VLAN_PRIORITY},dl_vlan={vlan_id},actions=resubmit(,{t1})"
            )
            commands.append(
                f"add cookie={cookie},table={t1},priority={VLAN_PRIORITY},dl_vlan={vlan_id},actions={','.join(outputs)}"
            )
        return commands

    async def _release_ports(self, ports: Iterable[int], members: Sequence[Attachment]) -> None:
        """Give ports that no longer carry any VIF back to NORMAL's flooding."""
        for port_no in sorted(set(ports) - {a.port_no for a in members}):
            await self._mod_port(port_no, "flood")

    # -- subprocesses -----------------------------------------------------------------------------------
    async def _mod_port(self, port_no: int, action: str) -> None:
        # NO_FLOOD is an OpenFlow 1.0 port flag.
        await self._ofctl("mod-port", self.bridge, str(port_no), action, protocol="OpenFlow10")

    async def _bundle(self, commands: Sequence[str]) -> None:
        text = "\n".join(commands) + "\n"
        await self._ofctl("--bundle", "add-flows", self.bridge, "-", stdin=text.encode())

    async def _vsctl(self, *args: str) -> str:
        timeout = max(1, int(self.settings.timeout))
        return await self._run([self.settings.vsctl, *self._db, f"--timeout={timeout}", *args])

    async def _ofctl(self, *args: str, stdin: bytes | None = None, protocol: str = "OpenFlow14") -> str:
        return await self._run([self.settings.ofctl, "-O", protocol, *args], stdin)

    async def _run(self, argv: list[str], stdin: bytes | None = None) -> str:
        command = " ".join(argv[:2] + [a for a in argv[2:] if not a.startswith("--db=")])
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
            )
        except OSError as err:
            raise DriverError(f"cannot run {argv[0]}: {err}") from err
        try:
            async with asyncio.timeout(self.settings.timeout):
                out, err_out = await proc.communicate(stdin)
        except BaseException as exc:  # timeout or cancellation: never leave the child behind
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if isinstance(exc, TimeoutError):
                raise DriverError(f"{command} timed out after {self.settings.timeout:.1f}s") from exc
            raise
        if proc.returncode != 0:
            detail = err_out.decode(errors="replace").strip() or out.decode(errors="replace").strip()
            raise DriverError(f"{command} failed (exit {proc.returncode}): {detail}")
        return out.decode(errors="replace")


def _hex(value: int) -> str:
    return f"{value:#x}"
