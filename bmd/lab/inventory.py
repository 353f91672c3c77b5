"""The lab's inventory: bmd's ``POST /v1/nodes`` bodies, one per simulated BMC, in ``{"nodes": [...]}``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_CPUS = (8, 16, 32, 64)
_MEMORY_MB = (16384, 32768, 65536, 131072)
_LOCAL_GB = (200, 500, 1000, 2000)
NODES_PER_RACK = 40


def mac_address(index: int) -> str:
    n = index + 1
    return f"52:54:00:{n >> 16 & 0xFF:02x}:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_entry(
    index: int, name: str, host: str, port: int, username: str, password: str, pm_driver: str = "ipmi"
) -> dict[str, Any]:
    """One node: hardware varies with the index so that the scheduler has choices to make."""
    rack = index // NODES_PER_RACK
    mac = mac_address(index)
    return {
        "name": name,
        "pm_driver": pm_driver,
        "pm_address": format_address(host, port),
        "pm_user": username,
        "pm_password": password,
        "cpus": _CPUS[index % 4],
        "memory_mb": _MEMORY_MB[index % 4],
        "local_gb": _LOCAL_GB[index // 4 % 4],
        "prov_mac_address": mac,
        "extra_specs": {
            "cpu_arch": "x86_64",
            "location": "lab",
            "rack": f"rack-{rack + 1:02d}",
            "disk_type": "ssd" if index % 2 == 0 else "hdd",
            "gpu": "true" if index % 10 == 9 else "false",
        },
        "interfaces": [
            {
                "address": mac,
                "datapath_id": f"0x{0xB3D0000 + rack:016x}",
                "port_no": index % NODES_PER_RACK + 1,
            }
        ],
    }


def write_inventory(path: Path, nodes: list[dict[str, Any]]) -> None:
    """Write atomically (temporary file + rename); the file holds passwords, so it is mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"nodes": nodes}, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
