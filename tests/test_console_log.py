"""The per-node console log store: append, bound, tail."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bmd.console_log import ConsoleLogs
from bmd.errors import InvalidInput


def test_append_read_tail_and_bound(tmp_path: Path) -> None:
    logs = ConsoleLogs(tmp_path / "console", max_bytes=8192)
    node = str(uuid.uuid4())
    assert logs.read(node) == b""
    logs.append(node, "first line\n")
    logs.append(node, b"second line\n")
    assert logs.read(node) == b"first line\nsecond line\n"
    assert logs.read(node, tail_bytes=12) == b"second line\n"
    for i in range(2000):
        logs.append(node, f"line {i:05d}\n")
    text = logs.read(node)
    assert len(text) <= 8192
    assert text.startswith(b"[bmd: older console output dropped]\n")
    assert text.endswith(b"line 01999\n")
    assert b"first line" not in text
    logs.clear(node)
    assert logs.read(node) == b""


def test_paths_cannot_escape(tmp_path: Path) -> None:
    logs = ConsoleLogs(tmp_path)
    with pytest.raises(InvalidInput):
        logs.append("../../etc/passwd", "x")
