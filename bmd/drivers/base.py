"""A node's driver is a composition of interfaces (Ironic's ``drivers/base.py`` is the model).

:class:`NodeDriver` holds one instance per slot: ``power`` (:class:`~bmd.drivers.power.base.PowerInterface`),
``deploy`` (:class:`DeployInterface`), ``vif`` (:class:`~bmd.drivers.vif.base.VifDriver`), ``console`` and
``inspect``. :class:`~bmd.drivers.factory.DriverFactory` builds it for a node from the node's ``pm_driver``
and the configured ``driver.deploy_driver`` / ``driver.vif_driver``.

Every interface has a cheap synchronous ``validate(node)`` (no I/O) that raises InvalidInput naming the
field, or UnsupportedOperation, when the node cannot be driven. ``NodeDriver.validate`` runs them all; the
scheduler's view of a node carries its verdict (``deploy_ready``/``deploy_blocker``, see
:mod:`bmd.drivers.baremetal`), so a node that cannot take a deploy is skipped during selection, and the
spawn path runs the same check again before it acts.

A slot bmd does not support yet gets a ``No*`` implementation (:class:`NoConsole`, :class:`NoInspect`)
whose verbs raise UnsupportedOperation saying so; callers never test for ``None``.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bmd.errors import BmdError, UnsupportedOperation

if TYPE_CHECKING:
    from bmd.drivers.deploy.spec import DeploySpec
    from bmd.drivers.power.base import BMCAccess, PowerInterface
    from bmd.drivers.vif.base import VifDriver


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What ``validate`` may read of a node: columns already loaded, nothing fetched, the password sealed.

    Built from a capability row (``of_row``) during selection or from the loaded node at spawn
    (``of_node``), so both paths check the same facts.
    """

    id: int
    pm_driver: str
    pm_address: str | None = None
    pm_user: str | None = None
    pm_password: str | None = None  # as stored: encrypted by the secret box
    interfaces: int = 0  # how many NICs (MACs) the node has
    terminal_port: int | None = None  # the seed's column: where the node's serial console is served

    @classmethod
    def of_row(cls, row: Any) -> NodeFacts:
        """From a row with the node's columns and ``interface_count``."""
        return cls(
            row.id,
            row.pm_driver,
            row.pm_address,
            row.pm_user,
            row.pm_password,
            int(row.interface_count),
            getattr(row, "terminal_port", None),
        )

    @classmethod
    def of_node(cls, node: Any, macs: int) -> NodeFacts:
        return cls(node.id, node.pm_driver, node.pm_address, node.pm_user, node.pm_password, macs, node.terminal_port)


class BaseInterface(abc.ABC):  # noqa: B024 - the slots below add the abstract verbs
    """One slot of a node's driver. ``validate`` is cheap and synchronous; the verbs are async."""

    name: str = ""
    slot: str = ""

    def validate(self, node: NodeFacts) -> None:
        """Raise InvalidInput (naming the field) or UnsupportedOperation if ``node`` cannot use this interface.
        No I/O. Accepts every node by default."""
        return None

    async def close(self) -> None:
        """Release what the interface holds (sockets, caches). Called once at service stop."""
        return None


class PreparedDeploy(Protocol):
    """Where a deploy interface put the node's boot files (recorded on the deployment row)."""

    @property
    def config_path(self) -> Path: ...

    @property
    def image_path(self) -> Path: ...


class DeployInterface(BaseInterface):
    """Gets an image onto a node: boot files for the deploy ramdisk, then for the instance."""

    slot = "deploy"

    @abc.abstractmethod
    async def prepare(self, spec: DeploySpec) -> PreparedDeploy:
        """Fetch the images and write the node's boot files in deploy mode (all or nothing)."""

    @abc.abstractmethod
    async def image_checksum(self, node_uuid: str) -> str:
        """The checksum of the disk image ``prepare`` staged for the node (NotFound when none)."""

    @abc.abstractmethod
    async def switch_to_boot(self, node_uuid: str) -> None:
        """Make the node boot its instance next time. Idempotent; nothing to do when this service wrote no
        boot files for the node (another service prepared the deploy, then died: the new owner finishes it,
        and the node boots its disk through the BMC's persistent boot device, with no PXE answer)."""

    @abc.abstractmethod
    async def clean(self, node_uuid: str) -> None:
        """Remove everything ``prepare`` wrote for the node. Idempotent."""


class ConsoleInterface(BaseInterface):
    """A node's serial console. ``endpoint`` says whether the node has one (cheap, no I/O); ``connect`` opens a
    byte stream of it (what bmd records during a deploy, see :mod:`bmd.console_recorder`)."""

    slot = "console"

    @abc.abstractmethod
    async def start_console(self, node: NodeFacts) -> str:
        """Start the node's serial console; returns where to attach."""

    @abc.abstractmethod
    async def stop_console(self, node: NodeFacts) -> None: ...

    def endpoint(self, node: NodeFacts) -> str | None:
        """Where the node's console is read from (for logs), or None when this interface has none for it."""
        return None

    async def connect(self, node: NodeFacts) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A byte stream of the node's console (OSError/TimeoutError when it cannot be had now)."""
        raise UnsupportedOperation(f"node {node.id}: console interface {self.name!r} cannot be read")


class InspectInterface(BaseInterface):
    slot = "inspect"

    @abc.abstractmethod
    async def inspect(self, node: NodeFacts) -> dict[str, Any]:
        """The node's hardware facts (cpus, memory, disks, NICs)."""


class NoConsole(ConsoleInterface):
    """No console support: every verb raises UnsupportedOperation. ``validate`` accepts (nothing is used)."""

    name = "no-console"

    async def start_console(self, node: NodeFacts) -> str:
        raise UnsupportedOperation(f"node {node.id}: no console interface is configured (console is not supported)")

    async def stop_console(self, node: NodeFacts) -> None:
        raise UnsupportedOperation(f"node {node.id}: no console interface is configured (console is not supported)")


class NoInspect(InspectInterface):
    """No hardware inspection: ``inspect`` raises UnsupportedOperation; enroll the node's facts by hand."""

    name = "no-inspect"

    async def inspect(self, node: NodeFacts) -> dict[str, Any]:
        raise UnsupportedOperation(
            f"node {node.id}: no inspect interface is configured (inspection is not supported; "
            "give cpus, memory_mb, local_gb and interfaces at enroll)"
        )


@dataclass(frozen=True, slots=True)
class NodeDriver:
    """One node's driver: its interfaces, and the BMC access its power interface is driven with."""

    power: PowerInterface
    access: BMCAccess
    deploy: DeployInterface
    vif: VifDriver
    console: ConsoleInterface
    inspect: InspectInterface

    def refusal(self, node: NodeFacts) -> tuple[str, BmdError] | None:
        """The first interface that refuses ``node``: (its slot, its error); None when all accept."""
        try:
            self.power.validate(self.access)
        except BmdError as err:
            return "power", err
        for interface in (self.deploy, self.vif, self.console, self.inspect):
            try:
                interface.validate(node)
            except BmdError as err:
                return interface.slot, err
        return None

    def validate(self, node: NodeFacts) -> None:
        """Every interface's ``validate`` (power's on the node's BMC access); the first refusal is raised as
        the interface raised it (InvalidInput keeps its ``field``). Cheap, no I/O."""
        refused = self.refusal(node)
        if refused is not None:
            raise refused[1]

    def blocker(self, node: NodeFacts) -> str:
        """Why this node cannot take a deploy, as ``<slot>: <reason>`` ('' when it can)."""
        refused = self.refusal(node)
        return "" if refused is None else f"{refused[0]}: {refused[1]}"
