"""``report_driver_status``: publish every node's capabilities on the bus, every ``host_state_interval``.

A node whose capability dict cannot be built is left out of the list (the scheduler stops offering it) and
its error is recorded on it (``bmd.tasks.steps``); the others are published as usual.
"""

from __future__ import annotations

from bmd.bus import Bus
from bmd.drivers.baremetal import BareMetalDriver
from bmd.tasks.steps import NodeSteps, StepFailureCounter, record_step_errors

TOPIC = "capabilities"


class ReportDriverStatus:
    name = "report_driver_status"

    def __init__(
        self,
        driver: BareMetalDriver,
        bus: Bus,
        host_ip: str,
        interval: float,
        failures: StepFailureCounter | None = None,
    ) -> None:
        self.driver = driver
        self.bus = bus
        self.host_ip = host_ip
        self.interval = interval
        self.steps = NodeSteps(self.name, failures)

    async def run_once(self) -> None:
        self.steps.start()
        stats = await self.driver.get_host_stats(refresh=True, on_error=self.steps.fail)
        for entry in stats:
            entry["host_ip"] = self.host_ip
        self.bus.publish(TOPIC, stats)
        changes = self.steps.finish()
        if changes:
            try:
                async with self.driver.sessionmaker.begin() as session:
                    await record_step_errors(session, changes)
            except BaseException:
                self.steps.unwritten(changes)
                raise
