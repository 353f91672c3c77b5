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
import subprocess
import tempfile
from pathlib import Path

import pytest

from bmd.ramdisk import MANIFEST_NAME
from bmd.ramdisk.build import RamdiskBuildError, build, build_key

CACHE_ENV = "BMD_TEST_RAMDISK_CACHE"
KEEP = 4  # builds kept in the cache (several branches may share it)
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
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same key
        try:
            return build_cached(root)
        except RamdiskBuildError as err:
            if "downloading" not in str(err) or not refresh_package_lists():
                if "downloading" in str(err) or "resolving" in str(err) or "looking up" in str(err):
                    pytest.skip(f"the Debian archive is not reachable: {err}")
                raise
        try:  # the lists were stale: they named versions the archive no longer has
            return build_cached(root)
        except RamdiskBuildError as err:
            if "downloading" in str(err):
                pytest.skip(f"the Debian archive is not reachable: {err}")
            raise


def build_cached(root: Path) -> Path:
    """The build for the current key under ``root``, built (in a temporary directory, then renamed into
    place) when it is not there yet. The caller holds the lock."""
    key = build_key()
    target = root / key
    if (target / MANIFEST_NAME).is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        build(tmp, debs_dir=root / ".debs")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, target)
    builds = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=os.path.getmtime)
    for old in builds[:-KEEP]:  # other keys: other branches' agents, older package versions
        shutil.rmtree(old, ignore_errors=True)
    return target


def refresh_package_lists() -> bool:
    """``apt-get update`` (as root only, bounded): True when it ran and succeeded."""
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, check=False)
    return done.returncode == 0
