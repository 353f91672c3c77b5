"""The verbs of provisioning, each idempotent so a retried delete or a recovery after a crash can replay
them: wire VIFs, allocate the PXE IP, write the boot config, drive power; and their undos."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bmd import node_history as history
from bmd.config import Settings
from bmd.console_log import ConsoleLogs
from bmd.db.boot_devices import record_boot_device
from bmd.db.models import BareMetalNode, Deployment, Instance, Interface, PxeIp, utcnow
from bmd.drivers.base import DeployInterface, NodeDriver, NodeFacts
from bmd.drivers.deploy.configdrive import build_iso
from bmd.drivers.deploy.refs import open_refs
from bmd.drivers.deploy.spec import DeploySpec, ImageRef
from bmd.drivers.dhcp import DhcpProvider, NoDhcp
from bmd.drivers.factory import DriverFactory
from bmd.drivers.power.base import BootDevice, PowerState
from bmd.drivers.power.registry import PowerRegistry
from bmd.drivers.vif.base import VifDriver
from bmd.drivers.vif.binding import unplug_vifs
from bmd.errors import InvalidInput, NotFound
from bmd.node_events import note_nodes
from bmd.provision import records
from bmd.provision.precheck import deploy_refs
from bmd.provision.request import stored_request
from bmd.ramdisk import KERNEL_NAME, RAMDISK_NAME, ramdisk_dir

log = structlog.get_logger(__name__)

Undo = tuple[str, Callable[[], Awaitable[None]]]


@dataclass
class Job:
    """What a provisioning job works on, loaded once from the database."""

    node: BareMetalNode
    instance: Instance
    macs: list[str]


@dataclass
class Provisioner:
    """Holds the node drivers' factory and the database; the spawn/destroy/callback flows are built from its
    verbs. The deploy and vif interfaces are the factory's (``driver.deploy_driver``, ``driver.vif_driver``).

    ``public_url`` is how deploy agents reach bmd (``api.public_url``, or the address the API bound).
    ``console_logs`` is the service's one set of per-node console logs (``<service.state_dir>/console``).
    ``dhcp`` answers the node's MACs while its PXE boot files exist (``pxe.dhcp_provider``).
    """

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    drivers: DriverFactory
    public_url: str = ""
    console_logs: ConsoleLogs | None = None
    dhcp: DhcpProvider = field(default_factory=NoDhcp)

    @property
    def ramdisk_dir(self) -> Path:
        """Where ``bmd ramdisk build`` put the deploy kernel and ramdisk (empty ``deploy.*`` settings)."""
        return ramdisk_dir(self.settings.service.state_dir)

    @property
    def power(self) -> PowerRegistry:
        return self.drivers.power

    @property
    def deploy(self) -> DeployInterface:
        return self.drivers.deploy

    @property
    def vif(self) -> VifDriver:
        return self.drivers.vif

    @property
    def base_url(self) -> str:
        base = self.settings.api.public_url or self.public_url
        if not base:
            raise InvalidInput("api.public_url is unknown: deploy agents could not reach bmd", field="api.public_url")
        return base.rstrip("/")

    def validate(self, job: Job) -> NodeDriver:
        """The node's driver accepts the node (every interface's ``validate``, the check selection made):
        run before a spawn acts, so a node changed since it was selected fails before anything is done."""
        return self.drivers.validate(NodeFacts.of_node(job.node, len(job.macs)))

    async def load(self, node_id: int, instance_uuid: str | None = None) -> Job:
        async with self.sessionmaker() as session:
            node = await session.get(BareMetalNode, node_id)
            if node is None:
                raise NotFound(f"node {node_id} not found")
            uuid = instance_uuid or node.instance_uuid
            inst = await session.scalar(select(Instance).where(Instance.uuid == uuid)) if uuid else None
            if inst is None:
                raise NotFound(f"instance {uuid} not found")
            macs = list(
                (
                    await session.execute(
                        select(Interface.address).where(Interface.bm_node_id == node_id).order_by(Interface.id)
                    )
                ).scalars()
            )
        return Job(node, inst, macs)

    # -- spawn steps -------------------------------------------------------------------------------------

    async def allocate_pxe_ip(self, job: Job) -> str:
        async with self.sessionmaker.begin() as session:
            ip = await records.allocate_pxe_ip(session, job.node.id)
            return ip.address

    async def release_pxe_ip(self, node_id: int) -> None:
        async with self.sessionmaker.begin() as session:
            await records.release_pxe_ip(session, node_id)

    async def create_deployment(self, job: Job) -> Deployment:
        request = stored_request(job.instance)
        async with self.sessionmaker.begin() as session:
            return await records.create_deployment(
                session, job.node.id, job.instance.uuid, request.image_ref, request.root_mb, request.swap_mb
            )

    async def delete_deployment(self, node_id: int) -> None:
        async with self.sessionmaker.begin() as session:
            await records.delete_deployment(session, node_id)

    def callback_url(self, node_uuid: str) -> str:
        return f"{self.base_url}/v1/nodes/{node_uuid}/vendor_passthru/pass_deploy_info"

    def agent_urls(self, node_uuid: str) -> dict[str, str]:
        """Where the agent goes after its lookup; each call carries its token."""
        return {
            "image_url": f"{self.base_url}/v1/agent/nodes/{node_uuid}/image",
            "heartbeat_url": f"{self.base_url}/v1/agent/nodes/{node_uuid}/heartbeat",
            "callback_url": self.callback_url(node_uuid),
        }

    def inspection_url(self, node_uuid: str) -> str:
        """Where the inspect agent posts its report (with its token)."""
        return f"{self.base_url}/v1/agent/nodes/{node_uuid}/inspection"

    def config_drive_url(self, node_uuid: str) -> str:
        """Where the agent fetches the config drive (with its token), when the instance has one."""
        return f"{self.base_url}/v1/agent/nodes/{node_uuid}/configdrive"

    def deploy_spec(self, job: Job, dep: Deployment) -> DeploySpec:
        """The deploy as the image cache fetches it: refs that carry credentials are decrypted here (the
        instance row holds them redacted), and live only in this spec (whose repr redacts them)."""
        inst = job.instance
        clear = open_refs(inst.secret_refs, self.power.secret_box)  # the box of the BMC passwords too
        refs = deploy_refs(stored_request(inst).with_clear(clear), self.settings.deploy, self.ramdisk_dir)
        return DeploySpec(
            node_uuid=job.node.uuid,
            macs=job.macs,
            deployment_id=str(dep.id),
            bmd_url=self.base_url,
            deploy_kernel=refs["deploy_kernel"],
            deploy_ramdisk=refs["deploy_ramdisk"],
            kernel=refs.get("kernel"),  # neither: a whole-disk image
            ramdisk=refs.get("ramdisk"),
            image=refs["image"],
            boot_mode=job.node.boot_mode or "bios",
        )

    async def config_drive(self, job: Job) -> bytes | None:
        """The instance's config drive ISO, built now (in a thread), None when it has none."""
        clear = open_refs(job.instance.secret_refs, self.power.secret_box)  # the sealed user_data
        drive = stored_request(job.instance).with_clear(clear).config_drive(job.instance.uuid)
        if drive is None:
            return None
        return await asyncio.to_thread(build_iso, drive)

    async def write_boot_config(self, job: Job, dep: Deployment) -> None:
        spec = dataclasses.replace(self.deploy_spec(job, dep), config_drive=await self.config_drive(job))
        layout = await self.deploy.prepare(spec)
        async with self.sessionmaker.begin() as session:
            row = await session.get(Deployment, dep.id)
            if row is not None:
                row.pxe_config_path = str(layout.config_path)
                row.image_path = str(layout.image_path)
            pxe_ip = await session.scalar(select(PxeIp.address).where(PxeIp.bm_node_id == job.node.id))
        # After the files: a node answered by DHCP finds its boot files complete.
        await self.dhcp.add_node(job.node.uuid, job.macs, job.node.boot_mode, pxe_ip)

    def ramdisk_spec(self, node: BareMetalNode, macs: list[str], dep: Deployment) -> DeploySpec:
        """A clean or inspect boot: the deploy ramdisk (the configured one, as every deploy boots), no disk
        image, the same deploy label (nothing on the kernel command line says "clean" or "inspect": the
        lookup answer does)."""
        d = self.settings.deploy
        kernel = d.deploy_kernel or str(self.ramdisk_dir / KERNEL_NAME)
        ramdisk = d.deploy_ramdisk or str(self.ramdisk_dir / RAMDISK_NAME)
        return DeploySpec(
            node_uuid=node.uuid,
            macs=macs,
            deployment_id=str(dep.id),
            bmd_url=self.base_url,
            deploy_kernel=ImageRef(kernel),
            deploy_ramdisk=ImageRef(ramdisk),
            kernel=None,
            ramdisk=None,
            image=None,
            boot_mode=node.boot_mode or "bios",
        )

    async def write_ramdisk_config(self, node: BareMetalNode, macs: list[str], dep: Deployment) -> None:
        """The node's PXE files for its clean or inspect boot, and its DHCP entry (after the files, as for a
        deploy)."""
        layout = await self.deploy.prepare(self.ramdisk_spec(node, macs, dep))
        async with self.sessionmaker.begin() as session:
            row = await session.get(Deployment, dep.id)
            if row is not None:
                row.pxe_config_path = str(layout.config_path)
            pxe_ip = await session.scalar(select(PxeIp.address).where(PxeIp.bm_node_id == node.id))
        await self.dhcp.add_node(node.uuid, macs, node.boot_mode, pxe_ip)

    async def clean_boot_config(self, node_uuid: str) -> None:
        try:
            await self.dhcp.remove_node(node_uuid)  # before the files go: no answer points at missing files
        finally:
            await self.deploy.clean(node_uuid)

    async def power_on_for_boot(self, node: BareMetalNode, device: BootDevice, persistent: bool) -> None:
        """Set the boot device, then power on (reboot if it is already on)."""
        driver, access = self.power.for_node(node)
        await driver.set_boot_device(access, device, persistent)
        async with self.sessionmaker.begin() as session:  # the last known value anonymous readers are served
            await record_boot_device(session, node.id, device.value, persistent, utcnow())
        if await driver.get_power_state(access) == PowerState.ON:
            await driver.reboot(access)
            await self.record_power(node.id, PowerState.ON, "reboot")
        else:
            await driver.set_power_state(access, PowerState.ON)
            await self.record_power(node.id, PowerState.ON, "power on")

    async def power_off(self, node: BareMetalNode) -> None:
        driver, access = self.power.for_node(node)
        await driver.set_power_state(access, PowerState.OFF)
        await self.record_power(node.id, PowerState.OFF, "power off")

    async def record_power(self, node_id: int, state: PowerState, action: str, actor: str = "bmd") -> None:
        """What the BMC was just made to do (by bmd's provisioning, or by ``actor`` through the API) is the
        node's power state from now on (the next sync pass checks it): the scheduler, the dashboard and the
        node's history (even when the state is the same: a reboot) see it at once, not a sync interval later."""
        async with self.sessionmaker.begin() as session:
            node = await session.get(BareMetalNode, node_id, with_for_update=True)
            if node is None:
                raise NotFound(f"node {node_id} not found")
            before = node.power_state
            node.power_state, node.last_power_check = state.value, utcnow()
            entry = history.Entry(node_id, history.Kind.POWER, action, before, state.value, actor=actor)
            await history.record(session, [entry])
            await note_nodes(session, [node_id])

    async def unplug(self, node: BareMetalNode) -> None:
        await unplug_vifs(self.sessionmaker, self.vif, node.id, node.prov_vlan_id)

    async def teardown(self, node: BareMetalNode) -> list[str]:
        """Every undo of a spawn, each tried whatever the others do; returns the failures."""
        failures = []
        undos: list[Undo] = [
            ("clean_boot_config", lambda: self.clean_boot_config(node.uuid)),
            ("delete_deployment", lambda: self.delete_deployment(node.id)),
            ("release_pxe_ip", lambda: self.release_pxe_ip(node.id)),
            ("unplug_vifs", lambda: self.unplug(node)),
        ]
        for name, undo in undos:
            try:
                await undo()
            except Exception as err:  # noqa: BLE001 - every undo is attempted; failures are reported together
                log.warning("undo_failed", node=node.id, step=name, error=str(err))
                failures.append(f"{name}: {err}")
        return failures
