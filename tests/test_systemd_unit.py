"""The shipped unit (systemd/bmd.service) as systemd reads it: ``systemd-analyze verify`` is clean, the
``systemd-analyze security`` exposure is what the README prints, optional paths are optional, and the
sandbox leaves what bmd needs. Skips when systemd-analyze is missing (it is installed by .ci/run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "bmd.service"
SHIPPED_BINARY = "/usr/local/bin/bmd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")


def settings() -> list[tuple[str, str]]:
    lines = [line.strip() for line in UNIT.read_text().splitlines()]
    return [tuple(line.split("=", 1)) for line in lines if line and line[0] not in "#;[" and "=" in line]  # type: ignore[misc]


def values(key: str) -> list[str]:
    return [v for k, v in settings() if k == key]


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # The one change: the binary is this checkout's (verify checks that ExecStart is an executable).
    beside = Path(sys.executable).with_name("bmd")
    bmd = beside if beside.is_file() else Path(shutil.which("bmd") or beside)
    assert bmd.is_file(), "the bmd entry point is installed (pip install -e .)"
    text = UNIT.read_text()
    assert text.count(SHIPPED_BINARY) == 2  # ExecStartPre (db upgrade) and ExecStart (serve)
    unit = tmp_path / "bmd.service"
    unit.write_text(text.replace(SHIPPED_BINARY, str(bmd)))
    result = analyze("verify", str(unit))
    assert result.returncode == 0 and result.stderr.strip() == "" and result.stdout.strip() == "", result


@needs_analyze
def test_a_broken_unit_is_reported_by_verify(tmp_path: Path) -> None:
    """The check above can fail: the same tool on the shipped file, whose binary is not installed here, or
    on a misspelt setting, says so."""
    unit = tmp_path / "bmd.service"
    unit.write_text(UNIT.read_text().replace("[Service]", "[Service]\nProtectSytem=strict", 1))
    result = analyze("verify", str(unit))
    assert "ProtectSytem" in result.stderr


@needs_analyze
def test_the_security_exposure_is_the_one_the_readme_prints() -> None:
    result = analyze("security", "--offline=yes", str(UNIT))
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    found = re.search(r"Overall exposure level for bmd\.service: (\d+\.\d)", result.stdout)
    assert found, result.stdout[-2000:]
    exposure = float(found.group(1))
    assert exposure <= 2.0  # systemd's "OK" band ends at 3.9; bmd's sandbox is far inside it
    readme = (ROOT / "README.md").read_text()
    assert f"exposure level for bmd.service: {found.group(1)}" in readme, "README's figure is stale"


def test_paths_that_may_be_missing_are_optional() -> None:
    paths = [p for v in values("ReadWritePaths") for p in v.split()]
    assert paths, "the TFTP root must stay writable under ProtectSystem=strict"
    assert all(p.startswith("-") for p in paths), paths  # a missing directory must not stop the unit
    assert values("StateDirectory") == ["bmd"]  # /var/lib/bmd: writable without ReadWritePaths


def test_the_sandbox_keeps_secrets_private_and_the_service_observable() -> None:
    assert values("UMask") == ["0077"]  # bmd sets 0644/0755 itself where a TFTP server reads
    assert values("StateDirectoryMode") == ["0700"]
    assert values("Type") == ["notify"] and values("WatchdogSec") and values("ProtectSystem") == ["strict"]
    assert values("User") == ["bmd"] and values("CapabilityBoundingSet") == [""]
