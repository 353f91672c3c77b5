"""Several ``bmd serve`` processes on one database, for the scale-out test and bench (bench/scaleout.py).

Each service is a child process with its own config (``service.host``, state directory, token file) and the
settings several services share: the database, the secrets key, ring ownership and the PostgreSQL bus. Power
is the fake driver (its state lives in the owning process), the boot files are placeholders: a deploy runs
to "waiting for the agent", which is what claims, ownership and takeover need.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ServiceProcess",
    "cluster_config",
    "fake_nodes",
    "insert_nodes",
    "placeholder_deploy",
    "placeholder_images",
    "service_config",
    "toml_text",
]

BOOT_FILES = ("deploy_kernel", "deploy_ramdisk", "kernel", "ramdisk", "disk.img")


def placeholder_images(directory: Path) -> Path:
    """The deploy's files (never booted: the fake power driver starts no machine)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in BOOT_FILES:
        (directory / name).write_bytes(name.encode() * 512)
    return directory


def fake_nodes(count: int) -> list[dict[str, Any]]:
    """``count`` node bodies for ``POST /v1/nodes/import``: the fake power driver, one NIC each, fixed uuids
    (the same owners on the ring every run)."""
    return [
        {
            "uuid": str(uuid.UUID(int=i + 1)),
            "name": f"n{i:05d}",
            "cpus": 8,
            "memory_mb": 16384,
            "local_gb": 200,
            "pm_driver": "fake",
            "pm_address": f"fake-{i}",
            "interfaces": [{"address": f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"}],
        }
        for i in range(count)
    ]


async def insert_nodes(db_url: str, host: str, count: int, **columns: Any) -> None:
    """``count`` enrolled nodes of ``host`` (the fake power driver unless ``columns`` say otherwise) written
    straight into a migrated database in one statement: seconds for 100,000, where the API takes minutes
    (the start-up test and bench/startup.py)."""
    from sqlalchemy import insert

    from bmd.config import DatabaseSettings
    from bmd.db.engine import make_engine
    from bmd.db.models import BareMetalNode, utcnow

    engine = make_engine(DatabaseSettings(url=db_url))
    now = utcnow()
    first = uuid.uuid4().int >> 64 << 64  # a fresh prefix per call: several calls add distinct nodes
    rows = [
        {
            "uuid": str(uuid.UUID(int=first + i)),
            "name": f"node-{first >> 64:x}-{i:06d}",
            "service_host": host,
            "cpus": (8, 16, 32, 64)[i % 4],
            "memory_mb": (16384, 65536, 131072, 262144)[i % 4],
            "local_gb": (200, 500, 1000, 2000)[i % 4],
            "pm_driver": "fake",
            "pm_address": f"fake-{i}",
            "registration_status": "done",
            "maintenance": False,
            "extra_specs": {},
            "power_failures": 0,
            "created_at": now,
            "updated_at": now,
            **columns,
        }
        for i in range(count)
    ]
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(BareMetalNode), rows)
    finally:
        await engine.dispose()


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """Config sections of plain values (strings, numbers, booleans, lists of them) as TOML."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return json.dumps(str(v))  # a TOML basic string: JSON's escapes are TOML's

    lines: list[str] = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {value(v)}" for key, v in keys.items())
    return "\n".join(lines) + "\n"


def service_config(
    path: Path, own: Path, host: str, db_url: str, key_file: Path, **sections: Mapping[str, Any]
) -> Path:
    """A lab service's config file at ``path``: its state and token under ``own``, JSON logs, the fake power
    driver, the API on a free port; ``sections`` add keys (a section's keys merge into the defaults')."""
    own.mkdir(parents=True, exist_ok=True)
    config: dict[str, dict[str, Any]] = {
        "service": {"host": host, "state_dir": str(own / "state")},
        "database": {"url": db_url},
        "api": {"port": 0, "token_file": str(own / "token")},
        "secrets": {"key_file": str(key_file)},
        "logging": {"format": "json"},
        "driver": {"default_power_driver": "fake"},
    }
    for name, keys in sections.items():
        config.setdefault(name, {}).update(keys)
    path.write_text(toml_text(config))
    return path


def placeholder_deploy(own: Path, images: Path) -> dict[str, Any]:
    """The ``deploy`` section of a lab service whose boot files are placeholders (never booted)."""
    return {
        "automated_clean": False,
        "tftp_root": str(own / "tftp"),
        "http_root": str(own / "http"),
        "image_cache_dir": str(own / "cache"),
        "allowed_image_roots": [str(images)],
        "deploy_kernel": str(images / "deploy_kernel"),
        "deploy_ramdisk": str(images / "deploy_ramdisk"),
        "boot_kernel": str(images / "kernel"),
        "boot_ramdisk": str(images / "ramdisk"),
    }


def cluster_config(tmp: Path, host: str, db_url: str, images: Path, *, down_time: float = 3.0) -> Path:
    """One service's config file under ``tmp``; its own files under ``tmp/<host>``."""
    own = tmp / host
    return service_config(
        tmp / f"{host}.toml",
        own,
        host,
        db_url,
        tmp / "secret.key",
        service={
            "ownership": "ring",
            "heartbeat_interval": min(1.0, down_time / 6),
            "service_down_time": down_time,
            "graceful_timeout": 5.0,
        },
        bus={"backend": "postgresql" if db_url.startswith("postgresql") else "memory"},
        tasks={"host_state_interval": 0.3, "update_resources_interval": 0.3},
        deploy=placeholder_deploy(own, images),
    )


class ServiceProcess:
    """``bmd serve`` as a child process. A thread drains its stdout (JSON log lines) so the pipe never fills;
    ``wait_for(event)`` reads them until that event. ``stop()`` kills it by its PID."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bmd", "--config", str(config), "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"event": "non_json_output", "text": line.rstrip()}
            self._queue.put(entry)
        self._queue.put(None)

    def wait_for(self, event: str, deadline: float = 30.0) -> dict[str, Any]:
        end = time.monotonic() + deadline
        while (left := end - time.monotonic()) > 0:
            try:
                entry = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if entry is None:
                break
            self.lines.append(entry)
            if entry.get("event") == event:
                return entry
        raise AssertionError(f"no {event!r} log line; got {self.lines[-5:]}")

    def started(self, deadline: float = 60.0) -> str:
        """Wait for ``service_started``; the API's URL."""
        return str(self.wait_for("service_started", deadline)["api"])

    def token(self) -> str:
        """The service's admin token (``api.token_file``, written at its first start)."""
        return (self.config.parent / self.config.stem / "token").read_text().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
