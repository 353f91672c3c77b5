"""Running the real collector ``bmd/agent/inspect.sh`` under busybox sh on the host: a machine's /proc
files and sysfs as a directory tree, every command a busybox applet (a PATH of links, as in the ramdisk)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bmd.ramdisk.build import agent_files

AGENT_DIR = Path(__file__).resolve().parents[2] / "bmd" / "agent"
GIB = 1 << 30


def busybox_or_skip() -> str:
    busybox = shutil.which("busybox")
    if busybox is None:
        print("SKIPPED: busybox is not installed (Debian package busybox-static)")
        pytest.skip("busybox is not installed (Debian package busybox-static)")
    return busybox


def busybox_path(root: Path, busybox: str) -> Path:
    """A directory of links to busybox, one per applet: the only commands the collector may use."""
    bindir = root / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for applet in subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split():
        if not (bindir / applet).exists():
            (bindir / applet).symlink_to(busybox)
    return bindir


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass
class FakeMachine:
    root: Path

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    def env(self) -> dict[str, str]:
        """The collector's environment for this machine: its sysfs, cpuinfo, meminfo; x86_64; no LLDP wait."""
        return {
            "BMD_AGENT_SYSFS": str(self.sys),
            "BMD_AGENT_CPUINFO": str(self.root / "cpuinfo"),
            "BMD_AGENT_MEMINFO": str(self.root / "meminfo"),
            "BMD_AGENT_ARCH": "x86_64",
            "BMD_AGENT_LLDP_WAIT": "0",
        }

    def disk(self, name: str, gib: int, rotational: int | None = None, **attrs: str) -> None:
        b = self.sys / "block" / name
        write(b / "size", f"{gib * GIB // 512}\n")
        if rotational is not None:
            write(b / "queue" / "rotational", f"{rotational}\n")
        for key, value in attrs.items():
            write(b / ("device/" + key if key in ("model", "vendor") else key), value + "\n")

    def nic(self, name: str, mac: str, carrier: int | None = None, speed: str | None = None) -> None:
        n = self.sys / "class" / "net" / name
        write(n / "address", mac + "\n")
        if carrier is not None:
            write(n / "carrier", f"{carrier}\n")
        if speed is not None:
            write(n / "speed", speed + "\n")


def run_collector(busybox: str, work: Path, env: dict[str, str], netns: str | None = None, limit: float = 60) -> Any:
    """``. inspect.sh; bmd_inspect_report`` → the parsed JSON (the test fails on anything else)."""
    assert "inspect.sh" in agent_files()
    bindir = busybox_path(work, busybox)
    environ = {"PATH": str(bindir), "HOME": str(work), "BMD_AGENT_WORK": str(work / "run"), **env}
    script = f'. "{AGENT_DIR}/inspect.sh" && bmd_inspect_report'
    argv = [busybox, "sh", "-c", script]
    if netns is not None:
        argv = [
            shutil.which("ip") or "ip",
            "netns",
            "exec",
            netns,
            shutil.which("env") or "env",
            "-i",
            *(f"{k}={v}" for k, v in environ.items()),
            *argv,
        ]
    done = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=limit, check=False)
    assert done.returncode == 0, done.stderr
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"the collector printed no JSON: {done.stdout!r} {done.stderr!r}") from None


__all__ = ["FakeMachine", "busybox_or_skip", "run_collector"]
