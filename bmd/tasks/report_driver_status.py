"""``report_driver_status``: publish every node's capabilities on the bus, every ``host_state_interval``."""

from __future__ import annotations

from bmd.bus import Bus
from bmd.drivers.baremetal import BareMetalDriver

TOPIC = "capabilities"


class ReportDriverStatus:
    name = "report_driver_status"

    def __init__(self, driver: BareMetalDriver, bus: Bus, host_ip: str, interval: float) -> None:
        self.driver = driver
        self.bus = bus
        self.host_ip = host_ip
        self.interval = interval

    async def run_once(self) -> None:
        stats = await self.driver.get_host_stats(refresh=True)
        for entry in stats:
            entry["host_ip"] = self.host_ip
        self.bus.publish(TOPIC, stats)
