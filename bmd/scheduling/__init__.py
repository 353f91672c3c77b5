"""The scheduler's in-memory core: indexed host states and ``HostSelector.select``."""

from bmd.scheduling.selector import HostSelector

__all__ = ["HostSelector"]
