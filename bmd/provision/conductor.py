"""The conductor: runs spawn and destroy jobs (one per node at a time), accepts deploy callbacks, fails
deploys that never call back, and recovers what a crash left behind. Every state change is stored (through
bmd.states) before it is acted on."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from sqlalchemy import select

from bmd.db.models import BareMetalNode, Deployment, Instance, utcnow
from bmd.db.nodes import get_node
from bmd.deploy.refs import scrub_urls
from bmd.drivers.power.base import BootDevice
from bmd.drivers.vif import plug_vifs
from bmd.errors import Conflict, Forbidden, InvalidState, NotFound
from bmd.provision import records
from bmd.provision.steps import Provisioner
from bmd.states import Event, ProvisionState, deadline_after, transition

log = structlog.get_logger(__name__)


def describe(err: BaseException) -> str:
    """The error as recorded in last_error (which anonymous readers see): any URL in it redacted."""
    return f"{type(err).__name__}: {scrub_urls(str(err))}" if str(err) else type(err).__name__


class Conductor:
    def __init__(self, provisioner: Provisioner, on_freed: Callable[[int], None] | None = None) -> None:
        self.p = provisioner
        self.on_freed = on_freed  # told when a node is available again (the scheduler offers it at once)
        self.jobs: dict[int, asyncio.Task[None]] = {}
        self._closing = False

    def freed(self, node_id: int) -> None:
        if self.on_freed is not None:
            self.on_freed(node_id)

    # -- job bookkeeping: every task is created here and cancelled/awaited in close() -------------------

    def start(self, node_id: int, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        running = self.jobs.get(node_id)
        if self._closing or (running is not None and not running.done()):
            coro.close()
            raise Conflict(f"node {node_id} already has a job running" if not self._closing else "bmd is stopping")
        task = asyncio.create_task(coro, name=f"{name}:{node_id}")
        self.jobs[node_id] = task
        task.add_done_callback(lambda t: self.jobs.pop(node_id, None) if self.jobs.get(node_id) is t else None)
        return task

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

    async def record(
        self, node_id: int, instance_uuid: str, event: Event, node: dict[str, Any], instance: dict[str, Any]
    ) -> None:
        """One transaction: the node's transition (while it holds the instance) and the instance's state."""
        async with self.p.sessionmaker.begin() as session:
            await transition(session, node_id, event, holding=instance_uuid, **node)
            await records.set_instance(session, instance_uuid, **instance)

    # -- spawn ----------------------------------------------------------------------------------------------

    def spawn(self, node_id: int, instance_uuid: str) -> asyncio.Task[None]:
        return self.start(node_id, "spawn", self._spawn(node_id, instance_uuid))

    async def _spawn(self, node_id: int, instance_uuid: str) -> None:
        node: BareMetalNode | None = None
        with structlog.contextvars.bound_contextvars(node=node_id, instance=instance_uuid):
            try:
                job = await self.p.load(node_id, instance_uuid)
                node = job.node
                await plug_vifs(self.p.sessionmaker, self.p.vif, node_id, job.instance.network_info)
                await self.p.allocate_pxe_ip(job)
                dep = await self.p.create_deployment(job)
                await self.p.write_boot_config(job, dep)
                await self.p.power_on_for_boot(node, BootDevice.PXE, persistent=False)
                wait_until = deadline_after(self.p.settings.deploy.deploy_timeout)
                await self.record(
                    node_id, instance_uuid, Event.WAIT, {"deploy_deadline": wait_until}, {"task_state": "wait_callback"}
                )
                log.info("deploy_waiting_for_callback")
            except asyncio.CancelledError:
                raise  # a delete or a shutdown: the stored state tells the next actor what to do
            except Exception as err:  # noqa: BLE001 - any failure of a step fails the spawn, with its reason
                reason = f"spawn failed: {describe(err)}"
                if node is None:  # not even loaded: nothing was done to undo
                    async with self.p.sessionmaker.begin() as session:
                        await records.set_instance(session, instance_uuid, vm_state="error", last_error=reason)
                    log.error("spawn_failed", reason=reason)
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
                if failures:
                    await transition(session, node.id, Event.FAIL, holding=instance_uuid, last_error=reason)
                else:
                    await transition(
                        session,
                        node.id,
                        Event.UNDO,
                        holding=instance_uuid,
                        instance_uuid=None,
                        deploy_deadline=None,
                        task_state=None,
                        last_error=reason,
                    )
            except InvalidState as state_err:
                log.warning("spawn_failure_not_recorded", error=str(state_err))
            await records.set_instance(session, instance_uuid, vm_state="error", task_state=None, last_error=reason)
        log.error("spawn_failed", reason=reason, node_state="error" if failures else "available")
        if not failures:
            self.freed(node.id)

    # -- the deploy agent's callback -------------------------------------------------------------------

    async def pass_deploy_info(self, node_ident: str, deployment_id: str, key: str, error: str | None) -> str:
        """Accept the agent's report. A wrong key is Forbidden and changes nothing. Returns the new state."""
        async with self.p.sessionmaker.begin() as session:
            node = await get_node(session, node_ident, for_update=True)
            dep = await session.scalar(select(Deployment).where(Deployment.bm_node_id == node.id))
            if dep is None or str(dep.id) != str(deployment_id):
                raise NotFound(f"node {node.id} has no deployment {deployment_id}")
            if not hmac.compare_digest(dep.key.encode(), str(key).encode()):
                log.warning("deploy_callback_bad_key", node=node.id)
                raise Forbidden("the deployment key does not match")
            if node.provision_state != ProvisionState.WAIT_CALLBACK:
                raise InvalidState(f"node {node.id} is {node.provision_state}, not waiting for a deploy callback")
            if node.deploy_deadline is None or node.deploy_deadline < utcnow():
                raise InvalidState(f"node {node.id}: the deploy timed out before the callback arrived")
            instance_uuid = node.instance_uuid or ""
            if error:
                reason = f"deploy failed on the node: {error}"
                await transition(
                    session, node.id, Event.FAIL, holding=instance_uuid, last_error=reason, deploy_deadline=None
                )
                await records.set_instance(session, instance_uuid, vm_state="error", task_state=None, last_error=reason)
                log.error("deploy_failed", node=node.id, reason=reason)
                return ProvisionState.ERROR
            # Taking the deadline away is the atomic hand-over: the timeout check no longer sees this node.
            node.deploy_deadline = None
            node.task_state = "finishing_deploy"
        ok = await self.finish_deploy(node.id, instance_uuid)
        return ProvisionState.ACTIVE if ok else ProvisionState.ERROR

    async def finish_deploy(self, node_id: int, instance_uuid: str) -> bool:
        """Boot from disk from now on: switch the PXE config, persistent disk boot, reboot, active."""
        try:
            job = await self.p.load(node_id, instance_uuid)
            await self.p.deploy.switch_to_boot(job.node.uuid)
            await self.p.power_on_for_boot(job.node, BootDevice.DISK, persistent=True)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - recorded on the node and the instance
            reason = f"finishing the deploy failed: {describe(err)}"
            failed = {"task_state": None, "last_error": reason}
            await self.record(node_id, instance_uuid, Event.FAIL, failed, {**failed, "vm_state": "error"})
            log.error("deploy_finish_failed", node=node_id, reason=reason)
            return False
        done = {"task_state": None, "last_error": None}
        await self.record(node_id, instance_uuid, Event.DONE, done, {**done, "vm_state": "active"})
        log.info("instance_active", node=node_id, instance=instance_uuid)
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
                await records.set_instance(
                    session, instance_uuid, vm_state="deleted", task_state=None, deleted_at=utcnow()
                )
            return None
        await self.cancel_job(node.id)  # a spawn still running is stopped; teardown undoes what it did
        deleting = {"task_state": "deleting"}
        await self.record(node.id, instance_uuid, Event.DELETE, deleting, deleting)
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
                failed = {"task_state": None, "last_error": reason}
                await self.record(node_id, instance_uuid, Event.FAIL, failed, failed)
                log.error("destroy_failed", reason=reason)
                return
            cleaned = {"instance_uuid": None, "task_state": None, "deploy_deadline": None, "last_error": None}
            gone = {"vm_state": "deleted", "task_state": None, "deleted_at": utcnow()}
            await self.record(node_id, instance_uuid, Event.CLEANED, cleaned, gone)
            self.freed(node_id)
            log.info("instance_deleted")
