"""The deploy ramdisk for tests, built once and cached (the ``deploy_ramdisk`` session fixture in
tests/conftest.py uses this).

``bmd ramdisk build``'s output is cached under ``$BMD_TEST_RAMDISK_CACHE`` (default
``~/.cache/bmd-test-ramdisk``) in a directory named by :func:`bmd.ramdisk.build.build_key` (the candidate
package versions, the agent's files, the builder's code), the downloaded .debs beside it in ``.debs``. A
build is made in a temporary directory and renamed into place under a file lock, so parallel test sessions
(or helpers) share one build. When the Debian archive cannot be reached or a build tool is missing, the
fixture skips with the reason.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from bmd.ramdisk import MANIFEST_NAME
from bmd.ramdisk.build import RamdiskBuildError, build, build_key

CACHE_ENV = "BMD_TEST_RAMDISK_CACHE"
TOOLS = {"apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "depmod": "kmod"}


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bmd-test-ramdisk")


def built_ramdisk() -> Path:
    """The cached build's directory (deploy_kernel, deploy_ramdisk, manifest.json); skips when it cannot
    be built here."""
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian package {package}): cannot build the deploy ramdisk")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        key = build_key()
    except RamdiskBuildError as err:
        pytest.skip(f"cannot resolve the ramdisk's Debian packages: {err}")
    target = root / key
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same key
        if (target / MANIFEST_NAME).is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            build(tmp, debs_dir=root / ".debs")
        except RamdiskBuildError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if "downloading" in str(err):
                pytest.skip(f"the Debian archive is not reachable: {err}")
            raise
        os.replace(tmp, target)
    return target
