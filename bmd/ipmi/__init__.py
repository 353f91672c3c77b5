"""bmd's asyncio-native IPMI 2.0 RMCP+ (lanplus) client.

One UDP endpoint per address family is shared by every session; sessions are cached per BMC and re-opened
when they expire; cipher suites 17 and 3; every call is bounded by a timeout and the number of calls in
flight by a semaphore. See :class:`IPMIClient`.
"""

from bmd.ipmi.client import BMCTarget, IPMIClient, IPMISettings
from bmd.ipmi.commands import BootFlags, ChassisStatus, DeviceId
from bmd.ipmi.protocol import BootTarget, ChassisControl, CompletionCodeError, Privilege
from bmd.ipmi.session import ClientStats
from bmd.ipmi.sol import SolClosed, SolConsole, SolSettings

__all__ = [
    "BMCTarget",
    "BootFlags",
    "BootTarget",
    "ChassisControl",
    "ChassisStatus",
    "ClientStats",
    "CompletionCodeError",
    "DeviceId",
    "IPMIClient",
    "IPMISettings",
    "Privilege",
    "SolClosed",
    "SolConsole",
    "SolSettings",
]
