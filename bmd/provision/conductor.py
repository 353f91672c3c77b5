"""The conductor: runs spawn and destroy jobs (one per node at a time), cleans a node after its delete
(docs/cleaning.md), answers the deploy agent (token lookup, callback), fails deploys that never call back,
and recovers what a crash left behind. Every state change is stored (through bmd.states) before it is
acted on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bmd import states
from bmd.db.models import BareMetalNode, Deployment, Instance, InstanceTypeExtraSpec, Interface, PxeIp, utcnow
from bmd.db.nodes import get_node
from bmd.drivers.base import NodeFacts
from bmd.drivers.deploy.refs import scrub_urls
from bmd.drivers.deploy.spec import normalize_mac
from bmd.drivers.deploy.templates import CONFIG_DRIVE
from bmd.drivers.power.base import BootDevice
from bmd.drivers.vif.binding import plug_vifs
from bmd.errors import Conflict, InvalidInput, InvalidState, NotFound
from bmd.inspection.apply import apply_report
from bmd.inspection.rules import compile_rules
from bmd.metrics import DeployMeter
from bmd.provision import records
from bmd.provision.agent import (
    AgentLookupRefused,
    AgentTokenAlreadyIssued,
    authenticate,
    new_token,
    same_address,
    token_digest,
    waits_for_agent,
)
from bmd.provision.reservations import Reservations
from bmd.provision.steps import Provisioner
from bmd.states import Event, ProvisionState, deadline_after

if TYPE_CHECKING:
    from bmd.console_recorder import ConsoleRecorder, Purpose

log = structlog.get_logger(__name__)

# The boot a waiting node's agent is told to do, by the node's state (a deploy otherwise).
MODES: dict[str, Purpose] = {ProvisionState.CLEANING: "clean", ProvisionState.INSPECTING: "inspect"}

CLEAN_ERASE_SPEC = "bmd:clean_erase"  # a flavor's extra spec: "full" zeroes every byte of every disk
CLEAN_ERASE_NODE_SPEC = "clean_erase"  # the same in a node's extra specs (capability keys have no ':')
ERASE_MODES = ("metadata", "full")


def describe(err: BaseException) -> str:
    """The error as recorded in last_error (which anonymous readers see): any URL in it redacted."""
    return f"{type(err).__name__}: {scrub_urls(str(err))}" if str(err) else type(err).__name__


T = TypeVar("T")


async def _after(previous: asyncio.Task[Any], coro: Coroutine[Any, Any, T]) -> T:
    try:
        await asyncio.wait([previous])
    except BaseException:
        coro.close()
        raise
    return await coro


async def _file_size(path: str | None) -> int | None:
    """The size of the image the agent will download (None when nothing is prepared)."""
    if not path:
        return None
    try:
        return (await asyncio.to_thread(os.stat, path)).st_size
    except OSError:
        return None


def config_drive_path(dep: Deployment) -> Path | None:
    """Where ``prepare`` put the config drive: next to the disk image (``<image_root>/<node>/``)."""
    return Path(dep.image_path).with_name(CONFIG_DRIVE) if dep.image_path else None


class Conductor:
    def __init__(
        self, provisioner: Provisioner, console: ConsoleRecorder | None = None, reservations: Reservations | None = None
    ) -> None:
        self.p = provisioner
        self.console = console  # records the node's serial console during its deploys
        self.jobs: dict[int, asyncio.Task[Any]] = {}
        self._closing = False
        self.deploys = DeployMeter()  # outcomes and durations, for /metrics
        # several services on one database: each job also holds the node's reservation (the lock between them)
        self.reservations = reservations

    # -- the per-node lock: every job is created here and cancelled/awaited in close() -------------------
    #
    # A node runs one action at a time (a spawn, a destroy, the finish of a deploy, a power or boot device
    # call): ``jobs`` holds it. Taking the lock is checking ``jobs`` and storing the new task with no await
    # in between, so two callers can never both get it.

    def running(self, node_id: int) -> str | None:
        """The name of the action the node runs now, or None."""
        task = self.jobs.get(node_id)
        return None if task is None or task.done() else task.get_name().rpartition(":")[0]

    def start(self, node_id: int, name: str, coro: Coroutine[Any, Any, T], *, queue: bool = False) -> asyncio.Task[T]:
        """Run ``coro`` as the node's job. A node with a job running: Conflict (409) naming it, or, with
        ``queue``, the new job runs once the current one ends."""
        current = self.jobs.get(node_id)
        busy = current is not None and not current.done()
        if self._closing or (busy and not queue):
            coro.close()
            if self._closing:
                raise Conflict("bmd is stopping")
            raise Conflict(f"node {node_id} is busy: {self.running(node_id)} runs on it")
        if self.reservations is not None:
            coro = self.reservations.hold(node_id, coro)
        if busy and current is not None:
            coro = _after(current, coro)
        task = asyncio.create_task(coro, name=f"{name}:{node_id}")
        self.jobs[node_id] = task
        task.add_done_callback(lambda t: self.jobs.pop(node_id, None) if self.jobs.get(node_id) is t else None)
        return task

    async def run(self, node_id: int, name: str, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` under the node's lock and return its result; Conflict (409) if the node runs
        another action now. Cancelling the caller cancels the action."""

        async def job() -> T:
            return await action()

        return await self.start(node_id, name, job())

    async def cancel_job(self, node_id: int) -> None:
        task = self.jobs.get(node_id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_idle(self) -> None:
        while self.jobs:
            await asyncio.gather(*list(self.jobs.values()), return_exceptions=True)

    async def close(self) -> None:
        """Cancel and await every job. Nodes stay in their stored state; recovery resumes them."""
        self._closing = True
        for task in list(self.jobs.values()):
            task.cancel()
        await asyncio.gather(*list(self.jobs.values()), return_exceptions=True)

    async def advance(self, node_id: int, instance_uuid: str, event: Event) -> None:
        """One transaction: the node's transition (while it holds the instance) and the instance's state."""
        async with self.p.sessionmaker.begin() as session:
            await states.advance(session, node_id, instance_uuid, event)

    async def fail(self, node_id: int, instance_uuid: str, reason: str) -> None:
        async with self.p.sessionmaker.begin() as session:
            await states.fail(session, node_id, instance_uuid, reason)

    # -- deploy steps: bm_nodes.deploy_steps (see records.note_step), one short write per step -----------

    @contextlib.asynccontextmanager
    async def step(self, node_id: int, name: str, *, first: bool = False) -> AsyncIterator[None]:
        """Time the block as the deploy step ``name`` and record it when it ends (``ok: false`` and the error
        when it raises; nothing when it is cancelled). ``first``: a new deploy, the list starts over."""
        started, t0 = utcnow(), time.monotonic()
        try:
            yield
        except asyncio.CancelledError:
            raise
        except Exception as err:
            entry = records.step_entry(name, started, time.monotonic() - t0, False, describe(err))
            await self.note_step(node_id, entry, first=first)
            raise
        await self.note_step(node_id, records.step_entry(name, started, time.monotonic() - t0, True), first=first)

    async def note_step(self, node_id: int, entry: dict[str, Any], *, first: bool = False) -> None:
        try:
            async with self.p.sessionmaker.begin() as session:
                await records.note_step(session, node_id, entry, first=first)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - the record of a step never fails the deploy itself
            log.warning("deploy_step_not_recorded", node=node_id, step=entry["step"], error=str(err))

    def record_console(
        self, node: BareMetalNode, macs: int, instance_uuid: str | None, purpose: Purpose = "deploy"
    ) -> None:
        """Record the node's serial console from now until its deploy (clean, inspection) ends, when it has
        one."""
        if self.console is not None:
            self.console.start(NodeFacts.of_node(node, macs), node.uuid, instance_uuid, node.version, purpose)

    # -- spawn ----------------------------------------------------------------------------------------------

    def spawn(self, node_id: int, instance_uuid: str) -> asyncio.Task[None]:
        return self.start(node_id, "spawn", self._spawn(node_id, instance_uuid))

    async def _spawn(self, node_id: int, instance_uuid: str) -> None:
        node: BareMetalNode | None = None
        self.deploys.started(node_id)
        with structlog.contextvars.bound_contextvars(node=node_id, instance=instance_uuid):
            try:
                job = await self.p.load(node_id, instance_uuid)
                node = job.node
                async with self.step(node_id, "validate", first=True):
                    self.p.validate(job)
                async with self.step(node_id, "plug_vifs"):
                    await plug_vifs(self.p.sessionmaker, self.p.vif, node_id, job.instance.network_info)
                async with self.step(node_id, "allocate_pxe_ip"):
                    await self.p.allocate_pxe_ip(job)
                async with self.step(node_id, "write_boot_config"):
                    dep = await self.p.create_deployment(job)
                    await self.p.write_boot_config(job, dep)
                self.record_console(node, len(job.macs), instance_uuid)  # from before it powers on
                async with self.step(node_id, "power_on"):
                    await self.p.power_on_for_boot(node, BootDevice.PXE, persistent=False)
                wait_until = deadline_after(self.p.settings.deploy.deploy_timeout)
                async with self.p.sessionmaker.begin() as session:  # from now on its agent may look up
                    await records.mark_booted(session, node_id)
                    await records.note_step(session, node_id, records.step_entry("wait_agent", utcnow()))
                    await states.advance(session, node_id, instance_uuid, Event.WAIT, deadline=wait_until)
                log.info("deploy_waiting_for_callback")
            except asyncio.CancelledError:
                raise  # a delete or a shutdown: the stored state tells the next actor what to do
            except Exception as err:  # noqa: BLE001 - any failure of a step fails the spawn, with its reason
                reason = f"spawn failed: {describe(err)}"
                if node is None:  # not even loaded: nothing was done to undo
                    async with self.p.sessionmaker.begin() as session:
                        await states.fail(session, None, instance_uuid, reason)
                    log.error("spawn_failed", reason=reason)
                    self.deploys.ended(node_id, "spawn_failed")
                else:
                    await self.fail_spawn(node, instance_uuid, reason)

    async def fail_spawn(self, node: BareMetalNode, instance_uuid: str, reason: str) -> None:
        """Undo whatever a spawn did (every step is idempotent): the node goes back to available with the
        reason in last_error, or to error when the cleanup failed too; the instance shows the error."""
        failures = await self.p.teardown(node)
        if failures:
            reason += "; cleanup failed: " + "; ".join(failures)
        async with self.p.sessionmaker.begin() as session:
            try:
                await states.fail(session, node.id, instance_uuid, reason, free=not failures)
            except InvalidState as state_err:
                log.warning("spawn_failure_not_recorded", error=str(state_err))
                await states.fail(session, None, instance_uuid, reason)
        log.error("spawn_failed", reason=reason, node_state="error" if failures else "available")
        self.deploys.ended(node.id, "spawn_failed")

    # -- the deploy agent: token lookup, progress, callback ---------------------------------------------

    async def agent_lookup(self, node_uuid: str, mac: str | None, peer: str | None) -> dict[str, Any]:
        """Issue the boot's agent token, once (see bmd.provision.agent). A second lookup is refused and
        fails the deploy: whoever won the race, it cannot go unnoticed."""
        token, refused, first_address = new_token(), False, None
        async with self.p.sessionmaker.begin() as session:
            node = await get_node(session, node_uuid, for_update=True)
            if mac is not None:
                macs = (await session.execute(select(Interface.address).where(Interface.bm_node_id == node.id))).all()
                if normalize_mac(mac, field="mac") not in {normalize_mac(m) for (m,) in macs}:
                    raise NotFound(f"node {node.uuid} has no interface {mac}")
            dep = await session.scalar(select(Deployment).where(Deployment.bm_node_id == node.id))
            if dep is None or not waits_for_agent(node):
                raise InvalidState(f"node {node.uuid} is {node.provision_state}: no boot is waiting for an agent")
            if dep.booted_at is None:
                raise InvalidState(f"node {node.uuid}: bmd has not powered it on for this boot yet")
            if self.p.settings.agent.lookup_source == "pxe_ip":
                pxe_ip = await session.scalar(select(PxeIp.address).where(PxeIp.bm_node_id == node.id))
                if not same_address(peer, pxe_ip):
                    log.warning("agent_lookup_wrong_source", node=node.id, peer=peer, pxe_ip=pxe_ip)
                    raise AgentLookupRefused(f"lookup for node {node.uuid} must come from its PXE address")
            mode = MODES.get(node.provision_state, "deploy")
            # NotFound: nothing prepared to hand out (a clean or inspect boot has no image)
            checksum = await self.p.deploy.image_checksum(node.uuid) if mode == "deploy" else None
            erase = await self.clean_erase(session, node, dep) if mode == "clean" else None
            issued = await session.execute(
                update(Deployment)
                .where(Deployment.id == dep.id, Deployment.agent_token_issued_at.is_(None))
                .values(agent_token_hash=token_digest(token), agent_token_issued_at=utcnow(), agent_address=peer)
            )
            if issued.rowcount != 1:  # type: ignore[attr-defined]
                refused, first_address = True, dep.agent_address
                reason = f"{mode} failed: a second agent token lookup came from {peer} (first from {first_address})"
                if mode == "clean":
                    await self.record_clean_failure(session, node.id, reason)
                elif mode == "inspect":
                    await self.record_inspect_failure(session, node.id, reason)
                else:
                    await self.record_deploy_failure(session, node.id, node.instance_uuid or "", reason)
        if refused:
            log.error("agent_token_reissue_refused", node=node.id, peer=peer, first_address=first_address)
            await (
                self.discard_boot_files(node) if mode == "deploy" else self.tidy_after_ramdisk(node, keep_record=True)
            )
            raise AgentTokenAlreadyIssued(f"node {node.uuid}: an agent token was already issued for this boot")
        log.info("agent_token_issued", node=node.id, peer=peer, deployment_id=dep.id, mode=mode)
        if mode != "deploy":  # the mode is said here, to the token's holder, never on the kernel command line
            urls = self.p.agent_urls(node.uuid)
            common = {
                "node_uuid": node.uuid,
                "deployment_id": str(dep.id),
                "token": token,
                "mode": mode,
                "root_device": dict(node.root_device or {}),
                "boot_mode": node.boot_mode,
                "heartbeat_url": urls["heartbeat_url"],
                "callback_url": urls["callback_url"],
            }
            if mode == "clean":
                return common | {"erase": erase}
            return common | {
                "inspection_url": self.p.inspection_url(node.uuid),
                "lldp_wait": self.p.settings.inspection.lldp_wait,
            }
        config_drive = await asyncio.to_thread(lambda: (p := config_drive_path(dep)) is not None and p.is_file())
        return {
            "node_uuid": node.uuid,
            "deployment_id": str(dep.id),
            "token": token,
            "image_checksum": checksum,
            "image_size": await _file_size(dep.image_path),
            "root_mb": dep.root_mb,
            "swap_mb": dep.swap_mb,
            "root_device": dict(node.root_device or {}),
            "boot_mode": node.boot_mode,
            **self.p.agent_urls(node.uuid),
            **({"config_drive_url": self.p.config_drive_url(node.uuid)} if config_drive else {}),
        }

    async def record_deploy_failure(self, session: AsyncSession, node_id: int, instance_uuid: str, reason: str) -> None:
        """In the caller's transaction: the waiting node goes to error, the instance too, the token dies."""
        await states.fail(session, node_id, instance_uuid, reason)
        await records.kill_agent_token(session, node_id)
        log.error("deploy_failed", node=node_id, reason=reason)
        self.deploys.ended(node_id, "agent_failed")

    async def discard_boot_files(self, node: BareMetalNode) -> None:
        """After a failed deploy: nothing left would boot the node into the deploy ramdisk again."""
        try:
            await self.p.clean_boot_config(node.uuid)
        except Exception as err:  # noqa: BLE001 - the failure is recorded already; a delete cleans again
            log.warning("undo_failed", node=node.id, step="clean_boot_config", error=str(err))

    async def agent_heartbeat(self, node_ident: str, token: str | None, message: str) -> str:
        async with self.p.sessionmaker.begin() as session:
            boot = await authenticate(session, node_ident, token)
            entry = records.step_entry("heartbeat", utcnow(), detail=message, ok=True)  # an event: no duration
            await records.note_step(session, boot.node.id, entry)
        log.info("agent_heartbeat", node=boot.node.id, message=message)
        return boot.node.provision_state

    async def agent_image(self, node_ident: str, token: str | None) -> str:
        """The path of the boot's disk image, for the holder of its token."""
        async with self.p.sessionmaker() as session:
            boot = await authenticate(session, node_ident, token)
        if not boot.deployment.image_path:
            raise NotFound(f"node {boot.node.uuid} has no disk image prepared")
        return boot.deployment.image_path

    async def agent_config_drive(self, node_ident: str, token: str | None) -> str:
        """The path of the boot's config drive ISO, for the holder of its token (NotFound when none)."""
        async with self.p.sessionmaker() as session:
            boot = await authenticate(session, node_ident, token)
        path = config_drive_path(boot.deployment)
        if path is None or not await asyncio.to_thread(path.is_file):
            raise NotFound(f"node {boot.node.uuid}: the instance has no config drive")
        return str(path)

    async def pass_deploy_info(
        self, node_ident: str, token: str | None, error: str | None, console: str | None = None
    ) -> ProvisionState:
        """Accept the agent's report. A missing, wrong or dead token is refused and changes nothing; the
        token dies with the report. On success the finish (disk boot, reboot) is started as the node's job
        (queued behind the spawn's last step if that still runs) and the state now is returned. The agent's
        ``console`` tail, when sent, goes to the node's console log. A node ``cleaning``: the clean agent's
        report (see :meth:`record_clean_report`). A node ``inspecting``: the inspect agent reports with
        :meth:`agent_inspection`; a callback is its failure (none given: it sent no report)."""
        async with self.p.sessionmaker.begin() as session:
            boot = await authenticate(session, node_ident, token, for_update=True)
            node = boot.node
            instance_uuid = node.instance_uuid or ""
            mode = MODES.get(node.provision_state, "deploy")
            if mode == "clean":  # the clean agent's report: the same token checks, then the clean's own outcome
                await self.record_clean_report(session, node, error)
            elif mode == "inspect":
                error = error or "the inspect agent called back without sending its report"
                await self.record_inspect_failure(session, node.id, f"inspection failed on the node: {error}")
            else:
                reported = records.step_entry("callback", utcnow(), 0.0, not error, error or "")
                await records.note_step(session, node.id, reported, close="wait_agent", ok=not error)
                if error:
                    reason = f"deploy failed on the node: {error}"
                    await self.record_deploy_failure(session, node.id, instance_uuid, reason)
                else:  # the hand-over: the deadline goes (the timeout check no longer sees the node), the token dies
                    await states.advance(session, node.id, instance_uuid, Event.CALLBACK)
                    await records.kill_agent_token(session, node.id)
        await self.keep_agent_console(node, mode, error, console)
        if mode == "clean":
            return await self.after_clean_report(node, error)
        if mode == "inspect":
            self.start(node.id, "inspect_tidy", self.tidy_after_ramdisk(node, keep_record=True), queue=True)
            return ProvisionState.INSPECT_FAILED
        if error:
            await self.discard_boot_files(node)
            return ProvisionState.ERROR
        self.start(node.id, "finish_deploy", self._finish(node.id, instance_uuid), queue=True)
        return ProvisionState.WAIT_CALLBACK

    async def _finish(self, node_id: int, instance_uuid: str) -> None:
        await self.finish_deploy(node_id, instance_uuid)

    def resume_finish(self, node_id: int, instance_uuid: str) -> asyncio.Task[None]:
        """Recovery: the agent reported, then bmd stopped before the finish was done."""
        return self.start(node_id, "finish_deploy", self._finish(node_id, instance_uuid))

    def resume_destroy(self, node_id: int, instance_uuid: str) -> asyncio.Task[None]:
        """Recovery: a delete that bmd stopped in the middle of."""
        return self.start(node_id, "destroy", self._destroy(node_id, instance_uuid))

    async def finish_deploy(self, node_id: int, instance_uuid: str) -> bool:
        """Boot from disk from now on: switch the PXE config, persistent disk boot, reboot, active."""
        try:
            job = await self.p.load(node_id, instance_uuid)
            async with self.step(node_id, "switch_to_boot"):
                await self.p.deploy.switch_to_boot(job.node.uuid)
                await self.p.dhcp.remove_node(job.node.uuid)  # from now on it boots from disk: no PXE answer
            async with self.step(node_id, "boot_from_disk"):
                await self.p.power_on_for_boot(job.node, BootDevice.DISK, persistent=True)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - recorded on the node and the instance
            reason = f"finishing the deploy failed: {describe(err)}"
            await self.fail(node_id, instance_uuid, reason)
            log.error("deploy_finish_failed", node=node_id, reason=reason)
            self.deploys.ended(node_id, "finish_failed")
            return False
        await self.advance(node_id, instance_uuid, Event.DONE)
        log.info("instance_active", node=node_id, instance=instance_uuid)
        self.deploys.ended(node_id, "active")
        return True

    # -- destroy ------------------------------------------------------------------------------------------

    async def destroy(self, instance_uuid: str) -> asyncio.Task[None] | None:
        """Start tearing the instance down; None when there is nothing left to do (already deleted)."""
        async with self.p.sessionmaker() as session:
            inst = await session.scalar(select(Instance).where(Instance.uuid == instance_uuid))
            if inst is None:
                raise NotFound(f"instance {instance_uuid} not found")
            if inst.vm_state == "deleted":
                return None
            node = await session.scalar(select(BareMetalNode).where(BareMetalNode.instance_uuid == instance_uuid))
        if node is None:  # never placed, or its node was already given back
            async with self.p.sessionmaker.begin() as session:
                await states.forget(session, instance_uuid)
            return None
        await self.cancel_job(node.id)  # a spawn still running is stopped; teardown undoes what it did
        await self.advance(node.id, instance_uuid, Event.DELETE)
        return self.start(node.id, "destroy", self._destroy(node.id, instance_uuid))

    async def _destroy(self, node_id: int, instance_uuid: str) -> None:
        with structlog.contextvars.bound_contextvars(node=node_id, instance=instance_uuid):
            try:
                job = await self.p.load(node_id, instance_uuid)
                await self.p.power_off(job.node)
                failures = await self.p.teardown(job.node)
                if failures:
                    raise RuntimeError("; ".join(failures))
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the node goes to error with the reason; delete again retries
                reason = f"delete failed: {describe(err)}"
                await self.fail(node_id, instance_uuid, reason)
                log.error("destroy_failed", reason=reason)
                return
            if not self.p.settings.deploy.automated_clean:
                await self.advance(node_id, instance_uuid, Event.CLEANED)
                log.warning("instance_deleted", cleaning="skipped: deploy.automated_clean is false")
                return
            deadline = deadline_after(self.p.settings.deploy.clean_timeout)
            async with self.p.sessionmaker.begin() as session:  # the instance is deleted now; the node cleans
                await states.start_clean(session, node_id, instance_uuid, deadline)
            log.info("instance_deleted", cleaning="started")
            await self.boot_clean(node_id, instance_uuid)

    # -- cleaning between tenants (docs/cleaning.md) ----------------------------------------------------
    #
    # The node is ``cleaning`` and holds no instance. Its boot is a deploy boot without an image: the same
    # ramdisk and kernel arguments; the lookup answer says ``mode: clean`` and how much to erase, the agent
    # erases and calls back through the same token-checked endpoints (heartbeat, pass_deploy_info).

    async def clean_erase(self, session: AsyncSession, node: BareMetalNode, dep: Deployment) -> str:
        """``full`` when the node's extra spec ``clean_erase``, the last tenant's flavor (``bmd:clean_erase``)
        or ``deploy.clean_erase`` asks for it, else ``metadata``."""
        asked = [(node.extra_specs or {}).get(CLEAN_ERASE_NODE_SPEC)]
        if dep.instance_uuid:
            type_id = await session.scalar(select(Instance.instance_type_id).where(Instance.uuid == dep.instance_uuid))
            if type_id is not None:
                asked.append(
                    await session.scalar(
                        select(InstanceTypeExtraSpec.value).where(
                            InstanceTypeExtraSpec.instance_type_id == type_id,
                            InstanceTypeExtraSpec.key == CLEAN_ERASE_SPEC,
                        )
                    )
                )
        for value in asked:
            if value is not None and value not in ERASE_MODES:
                log.warning("clean_erase_spec_ignored", node=node.id, value=str(value)[:64], allowed=ERASE_MODES)
        return "full" if "full" in (*asked, self.p.settings.deploy.clean_erase) else "metadata"

    def resume_clean(self, node_id: int, instance_uuid: str | None, *, booted: bool) -> asyncio.Task[None]:
        """Recovery (or an operator's retry): boot the clean ramdisk again, or (``booted`` and reported)
        finish the clean."""
        if booted:
            return self.start(node_id, "finish_clean", self.finish_clean(node_id))
        return self.start(node_id, "clean", self.boot_clean(node_id, instance_uuid))

    async def boot_clean(self, node_id: int, instance_uuid: str | None) -> None:
        """PXE files in clean mode, a PXE IP and DHCP entry, PXE boot, power on; then the agent's turn."""
        await self.boot_ramdisk(node_id, instance_uuid, "clean")

    async def boot_ramdisk(self, node_id: int, instance_uuid: str | None, mode: Purpose) -> None:
        """The boot of a clean or an inspection (the node holds no instance; ``instance_uuid``: the last
        tenant, for a clean): PXE files, a PXE IP and DHCP entry, the console recorded, PXE boot, power on;
        then the agent's turn. A failure fails the clean (inspection) with the reason."""
        with structlog.contextvars.bound_contextvars(node=node_id):
            try:
                async with self.p.sessionmaker() as session:
                    node = await session.get(BareMetalNode, node_id)
                    if node is None:
                        raise NotFound(f"node {node_id} not found")
                    macs = list(
                        (
                            await session.execute(
                                select(Interface.address).where(Interface.bm_node_id == node_id).order_by(Interface.id)
                            )
                        ).scalars()
                    )
                async with self.step(node_id, f"{mode}_boot_config", first=mode == "inspect"):
                    async with self.p.sessionmaker.begin() as session:
                        if (
                            instance_uuid is None and mode == "clean"
                        ):  # a retry: the last tenant, as the failed clean knew it
                            instance_uuid = await session.scalar(
                                select(Deployment.instance_uuid).where(Deployment.bm_node_id == node_id)
                            )
                        await records.allocate_pxe_ip(session, node_id)
                        dep = await records.create_deployment(session, node_id, instance_uuid, "", 0, 0)
                    await self.p.write_ramdisk_config(node, macs, dep)
                self.record_console(node, len(macs), None, mode)  # from before it powers on
                async with self.step(node_id, f"{mode}_power_on"):
                    await self.p.power_on_for_boot(node, BootDevice.PXE, persistent=False)
                async with self.p.sessionmaker.begin() as session:  # from now on its agent may look up
                    await records.mark_booted(session, node_id)
                    await records.note_step(session, node_id, records.step_entry("wait_agent", utcnow()))
                log.info(f"{mode}_waiting_for_agent")
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - recorded on the node (a clean: and maintenance)
                reason = f"{mode} failed: could not boot the ramdisk: {describe(err)}"
                await (
                    self.fail_cleaning(node_id, reason) if mode == "clean" else self.fail_inspecting(node_id, reason)
                )

    async def record_clean_failure(self, session: AsyncSession, node_id: int, reason: str) -> None:
        """In the caller's transaction: clean failed (and maintenance, with the reason); the token dies."""
        await states.fail_clean(session, node_id, reason)
        await records.kill_agent_token(session, node_id)
        log.error("clean_failed", node=node_id, reason=reason)

    async def fail_cleaning(self, node_id: int, reason: str) -> None:
        await self._fail_ramdisk(node_id, reason, self.record_clean_failure)

    async def _fail_ramdisk(
        self, node_id: int, reason: str, record: Callable[[AsyncSession, int, str], Awaitable[None]]
    ) -> None:
        """A clean's or an inspection's boot failed: ``record`` it with the reason, then power off and tidy."""
        async with self.p.sessionmaker.begin() as session:
            await record(session, node_id, reason)
            node = await session.get(BareMetalNode, node_id)
        if node is not None:
            await self.tidy_after_ramdisk(node, keep_record=True)

    async def retry_clean(self, node_ident: str) -> asyncio.Task[None]:
        """An operator's retry of a node in ``clean failed``: it leaves maintenance and cleans again
        (InvalidState, 409, in any other state)."""
        deadline = deadline_after(self.p.settings.deploy.clean_timeout)
        async with self.p.sessionmaker.begin() as session:
            node = await get_node(session, node_ident, for_update=True)
            if self.running(node.id):
                raise Conflict(f"node {node.id} is busy: {self.running(node.id)} runs on it")
            await states.start_clean(session, node.id, None, deadline)
        log.info("clean_retried", node=node.id)
        return self.start(node.id, "clean", self.boot_clean(node.id, None))

    async def record_clean_report(self, session: AsyncSession, node: BareMetalNode, error: str | None) -> None:
        """In the caller's (authenticated) transaction: the clean agent's report; the token dies with it."""
        reported = records.step_entry("clean_callback", utcnow(), 0.0, not error, error or "")
        await records.note_step(session, node.id, reported, close="wait_agent", ok=not error)
        if error:
            await self.record_clean_failure(session, node.id, f"clean failed on the node: {error}")
        else:
            await states.clean_callback(session, node.id)
            await records.kill_agent_token(session, node.id)

    async def keep_agent_console(self, node: BareMetalNode, mode: str, error: str | None, console: str | None) -> None:
        """The console tail an agent sent with its report goes to the node's console log (the caller
        authenticated the agent: only the boot's agent writes there)."""
        if console and self.p.console_logs is not None:
            header = f"[bmd: the {mode} agent's console, sent with its {'error' if error else 'success'} report]\n"
            await self.p.console_logs.aappend(node.uuid, header + console.rstrip("\n") + "\n")

    async def after_clean_report(self, node: BareMetalNode, error: str | None) -> ProvisionState:
        if error:
            self.start(node.id, "clean_tidy", self.tidy_after_ramdisk(node, keep_record=True), queue=True)
            return ProvisionState.CLEAN_FAILED
        self.start(node.id, "finish_clean", self.finish_clean(node.id), queue=True)
        return ProvisionState.CLEANING

    async def tidy_after_ramdisk(self, node: BareMetalNode, *, keep_record: bool = False) -> list[str]:
        """Power off, no PXE files, no DHCP entry, no deployment, no PXE IP: each tried; the failures.
        ``keep_record``: after a failure the deployment row stays (its token dead), so a retry still knows
        whose flavor asked for what erase."""
        failures = []
        try:
            await self.p.power_off(node)
        except Exception as err:  # noqa: BLE001 - every step is attempted; failures are reported together
            log.warning("undo_failed", node=node.id, step="power_off", error=str(err))
            failures.append(f"power_off: {describe(err)}")
        undos: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("clean_boot_config", lambda: self.p.clean_boot_config(node.uuid)),
            ("delete_deployment", lambda: self.p.delete_deployment(node.id)),
            ("release_pxe_ip", lambda: self.p.release_pxe_ip(node.id)),
        ]
        if keep_record:
            undos = [u for u in undos if u[0] != "delete_deployment"]
        for name, undo in undos:
            try:
                await undo()
            except Exception as err:  # noqa: BLE001
                log.warning("undo_failed", node=node.id, step=name, error=str(err))
                failures.append(f"{name}: {describe(err)}")
        return failures

    async def finish_clean(self, node_id: int) -> None:
        """The agent erased the disks: power off, boot files and DHCP entry gone, node available."""
        await self._finish_ramdisk(node_id, "clean")

    async def _finish_ramdisk(self, node_id: int, mode: Purpose) -> None:
        """The agent of a clean or an inspection is done: power off, boot files, DHCP entry, deployment and
        PXE IP gone, the node available (or the boot failed, when tidying up did)."""
        finish, fail, failed, done = {
            "clean": (states.finish_clean, self.fail_cleaning, "clean failed", "node_cleaned"),
            "inspect": (states.finish_inspect, self.fail_inspecting, "inspection failed", "node_inspected"),
        }[mode]
        with structlog.contextvars.bound_contextvars(node=node_id):
            async with self.p.sessionmaker() as session:
                node = await session.get(BareMetalNode, node_id)
            if node is None:
                return
            failures = await self.tidy_after_ramdisk(node)
            if failures:
                await fail(node_id, f"{failed}: tidying up failed: " + "; ".join(failures))
                return
            async with self.p.sessionmaker.begin() as session:
                await finish(session, node_id)
            log.info(done)

    # -- inspection (docs/inspection.md) ----------------------------------------------------------------
    #
    # The node is ``inspecting`` and holds no instance. Its boot is a clean's: the lookup answers ``mode:
    # inspect`` (with ``inspection_url`` and ``lldp_wait``), the agent runs the collector and posts the report
    # to ``inspection_url`` with its token (:meth:`agent_inspection`); an error goes through the callback.

    async def inspect(self, node_ident: str) -> asyncio.Task[None]:
        """Start inspecting a node that holds no instance and is ``available`` or ``inspect failed``
        (InvalidState, 409, otherwise; Conflict when a job runs on it)."""
        deadline = deadline_after(self.p.settings.inspection.timeout)
        async with self.p.sessionmaker.begin() as session:
            node = await get_node(session, node_ident, for_update=True)
            if self.running(node.id):
                raise Conflict(f"node {node.id} is busy: {self.running(node.id)} runs on it")
            if not node.pm_address:
                raise InvalidState(f"node {node.id} has no BMC address (pm_address): bmd cannot boot it to inspect it")
            if await session.scalar(select(Interface.id).where(Interface.bm_node_id == node.id).limit(1)) is None:
                raise InvalidState(
                    f"node {node.id} has no interface: bmd PXE-boots a node by its MAC; add the provisioning "
                    "NIC's MAC (POST /v1/nodes/{node}/interfaces) first"
                )
            await states.start_inspect(session, node.id, deadline)
        log.info("inspection_started", node=node.id)
        return self.start(node.id, "inspect", self.boot_ramdisk(node.id, None, "inspect"))

    def resume_inspect(self, node_id: int, *, booted: bool) -> asyncio.Task[None]:
        """Recovery: boot the inspect ramdisk again, or (``booted`` and reported) finish the inspection."""
        if booted:
            return self.start(node_id, "finish_inspect", self.finish_inspect(node_id))
        return self.start(node_id, "inspect", self.boot_ramdisk(node_id, None, "inspect"))

    async def agent_inspection(
        self, node_ident: str, token: str | None, raw: Any
    ) -> tuple[ProvisionState, dict[str, Any]]:
        """The inspect agent's report, for the holder of the boot's token: stored and applied in one
        transaction (bmd.inspection.apply), the token dies with it, and the finish (power off, tidy up,
        ``available``) runs on as the node's job. A report that cannot be applied (invalid, a ``fail``
        rule, no root disk, a MAC of another node) fails the inspection with the reason. Returns the state
        and what was applied (or why not)."""
        rules = compile_rules(self.p.settings.inspection.rules)  # checked at start-up: cannot fail here
        failure: str | None = None
        applied = None
        async with self.p.sessionmaker() as session:  # refused before anything: a wrong token, another boot
            node = (await authenticate(session, node_ident, token)).node
            if node.provision_state != ProvisionState.INSPECTING:
                raise InvalidState(f"node {node.uuid} is {node.provision_state}: it is not being inspected")
        node_id = node.id
        try:
            async with self.p.sessionmaker.begin() as session:
                node = (await authenticate(session, node_ident, token, for_update=True)).node
                if node.provision_state != ProvisionState.INSPECTING:
                    raise InvalidState(f"node {node.uuid} is {node.provision_state}: it is not being inspected")
                applied = await apply_report(session, node, raw, rules)
                failure = applied.failure
                entry = records.step_entry("inspection_report", utcnow(), 0.0, failure is None, failure or "")
                await records.note_step(session, node.id, entry, close="wait_agent", ok=failure is None)
                if failure is None:
                    await states.inspect_callback(session, node.id)
                    await records.kill_agent_token(session, node.id)
                else:
                    await self.record_inspect_failure(session, node.id, f"inspection failed: {failure}")
        except InvalidState:
            raise  # the boot changed under the report (a timeout, say): nothing to add
        except (InvalidInput, Conflict) as err:  # nothing of the report was written: the boot fails, with why
            failure = str(err)
            async with self.p.sessionmaker.begin() as session:
                if not await states.fail_inspect(session, node_id, f"inspection failed: {failure}"):
                    raise
                await records.kill_agent_token(session, node_id)
                node = await session.get(BareMetalNode, node_id) or node
            log.error("inspection_failed", node=node_id, reason=failure)
        if failure is not None:
            self.start(node.id, "inspect_tidy", self.tidy_after_ramdisk(node, keep_record=True), queue=True)
            state = ProvisionState.INSPECT_FAILED
        else:
            self.start(node.id, "finish_inspect", self.finish_inspect(node.id), queue=True)
            state = ProvisionState.INSPECTING
        log.info("inspection_reported", node=node.id, failure=failure)
        return state, applied.to_dict() if applied is not None else {"applied": False, "failure": failure}

    async def record_inspect_failure(self, session: AsyncSession, node_id: int, reason: str) -> None:
        """In the caller's transaction: inspect failed, with the reason; the token dies."""
        await states.fail_inspect(session, node_id, reason)
        await records.kill_agent_token(session, node_id)
        log.error("inspection_failed", node=node_id, reason=reason)

    async def fail_inspecting(self, node_id: int, reason: str) -> None:
        await self._fail_ramdisk(node_id, reason, self.record_inspect_failure)

    async def finish_inspect(self, node_id: int) -> None:
        """The report is in: power off, boot files, DHCP entry, deployment and PXE IP gone, node available."""
        await self._finish_ramdisk(node_id, "inspect")
