"""Provisioning: spawn (claim → VIFs → PXE IP → deployment → boot config → power), the deploy callback,
destroy, deploy timeouts and restart recovery, all driven by the provision state machine (bmd.states)."""
