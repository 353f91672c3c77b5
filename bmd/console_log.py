"""Per-node console logs: what a node printed while bmd drove it (its serial console during a deploy, the
deploy agent's console tail when it reports an error).

One file per node, ``<service.state_dir>/console/<node_uuid>.log``, appended to and bounded: when a file
passes ``max_bytes`` its older half is dropped (the tail is what an operator reads). Console output can
carry anything a machine prints, so these files are only served to the operators' bearer token.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from bmd.drivers.deploy.spec import check_node_uuid

DEFAULT_MAX_BYTES = 1 << 20


class ConsoleLogs:
    """Append-only, size-bounded console logs, one per node. Methods are blocking; ``a*`` run in a thread."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max(4096, max_bytes)
        self._lock = threading.Lock()

    def path(self, node_uuid: str) -> Path:
        return self.root / f"{check_node_uuid(node_uuid)}.log"

    def append(self, node_uuid: str, data: bytes | str) -> None:
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
        if not raw:
            return
        path = self.path(node_uuid)
        with self._lock:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(raw)
                size = f.tell()
            if size > self.max_bytes:
                self._shrink(path)

    def _shrink(self, path: Path) -> None:
        """Keep the newest half (from a line start), replacing the file atomically."""
        with open(path, "rb") as f:
            f.seek(-(self.max_bytes // 2), os.SEEK_END)
            kept = f.read()
        cut = kept.find(b"\n")
        kept = kept[cut + 1 :] if 0 <= cut < len(kept) - 1 else kept
        tmp = path.with_suffix(".log.tmp")
        with open(tmp, "wb") as f:
            f.write(b"[bmd: older console output dropped]\n" + kept)
        os.replace(tmp, path)

    def read(self, node_uuid: str, tail_bytes: int | None = None) -> bytes:
        """The node's console log (its last ``tail_bytes`` when given); b"" when there is none."""
        try:
            with open(self.path(node_uuid), "rb") as f:
                if tail_bytes is not None:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - tail_bytes))
                return f.read()
        except FileNotFoundError:
            return b""

    def clear(self, node_uuid: str) -> None:
        try:
            os.unlink(self.path(node_uuid))
        except FileNotFoundError:
            pass

    async def aappend(self, node_uuid: str, data: bytes | str) -> None:
        await asyncio.to_thread(self.append, node_uuid, data)

    async def aread(self, node_uuid: str, tail_bytes: int | None = None) -> bytes:
        return await asyncio.to_thread(self.read, node_uuid, tail_bytes)
