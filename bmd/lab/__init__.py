"""The BMC lab: simulated IPMI BMCs (pyghmi's server, fixed and extended) for demos, tests, benchmarks."""

from bmd.lab.faults import Fault, deal_faults, parse_faults
from bmd.lab.fleet import Lab, LabBMCInfo, LabError, LabSpec, run_lab

__all__ = ["Fault", "Lab", "LabBMCInfo", "LabError", "LabSpec", "deal_faults", "parse_faults", "run_lab"]
