"""Provisioning: spawn (claim → VIFs → PXE IP → deployment → boot config → power), the deploy agent's token
(``agent``: looked up once per boot, checked on every agent call) and callback, destroy, deploy timeouts and
restart recovery, all driven by the provision state machine (bmd.states)."""
