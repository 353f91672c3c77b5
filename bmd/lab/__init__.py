"""The BMC lab: simulated IPMI BMCs (pyghmi's server, fixed and extended) for demos, tests, benchmarks, each
optionally with a machine behind it (:mod:`bmd.lab.machines`: simulated, or a QEMU VM)."""

from bmd.lab.faults import Fault, deal_faults, parse_faults
from bmd.lab.fleet import Lab, LabBMCInfo, LabError, LabSpec, MachineInfo, run_lab

__all__ = [
    "Fault",
    "Lab",
    "LabBMCInfo",
    "LabError",
    "LabSpec",
    "MachineInfo",
    "deal_faults",
    "parse_faults",
    "run_lab",
]
