"""The service's parts, built once at start-up and handed to the API and the periodic loops."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bmd.bus import Bus
from bmd.config import Settings
from bmd.console_log import ConsoleLogs
from bmd.drivers.dhcp import DhcpProvider, NoDhcp
from bmd.secrets import SecretBox
from bmd.tasks.runner import Runner
from bmd.tasks.steps import StepFailureCounter

if TYPE_CHECKING:
    from bmd.drivers.baremetal import BareMetalDriver
    from bmd.drivers.power.registry import PowerRegistry
    from bmd.pg_bus import NodeListener
    from bmd.provision.conductor import Conductor
    from bmd.scheduler.manager import HostManager


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    bus: Bus
    runner: Runner
    secret_box: SecretBox
    api_token: str
    driver: BareMetalDriver
    power: PowerRegistry
    conductor: Conductor
    scheduler: HostManager
    console_logs: ConsoleLogs  # <service.state_dir>/console: the serial console and the agent's tail
    step_failures: StepFailureCounter = field(default_factory=StepFailureCounter)
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None  # set once recovery and the first capability passes are done (/readyz)
    stopping: bool = False  # set when the stop begins: /readyz turns 503 while the service drains
    extras: dict[str, Any] = field(default_factory=dict)
    dhcp: DhcpProvider = field(default_factory=NoDhcp)  # pxe.dhcp_provider; started and stopped by open_context
    node_listener: NodeListener | None = None  # bus.backend = "postgresql": started and stopped by open_context

    def mark_ready(self) -> None:
        """Recovery and the first capability passes are done: /readyz may say 200."""
        self.ready_at = time.time()

    def mark_stopping(self) -> None:
        """The stop began: /readyz says 503 while the service drains."""
        self.stopping = True
