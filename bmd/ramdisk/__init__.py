"""The deploy ramdisk bmd builds from Debian packages (``bmd ramdisk build``) and where it lives.

``<service.state_dir>/ramdisk/`` holds ``deploy_kernel``, ``deploy_ramdisk`` and ``manifest.json``; the
``deploy.deploy_kernel``/``deploy_ramdisk`` settings left empty mean these files (see
:func:`bmd.provision.precheck.deploy_roles`).
"""

from __future__ import annotations

from pathlib import Path

KERNEL_NAME = "deploy_kernel"
RAMDISK_NAME = "deploy_ramdisk"
MANIFEST_NAME = "manifest.json"


def ramdisk_dir(state_dir: str | Path) -> Path:
    """Where ``bmd ramdisk build`` writes by default and where empty ``deploy.*`` settings point."""
    return Path(state_dir).resolve() / "ramdisk"
