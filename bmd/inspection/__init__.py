"""Inspection: what a node's ramdisk reports about its hardware (``bmd/agent/inspect.sh``), the validated
model of that report (:mod:`bmd.inspection.report`), the node fields it gives (:mod:`bmd.inspection.mapping`)
and the operator's rules applied to it (:mod:`bmd.inspection.rules`). See docs/inspection.md."""
