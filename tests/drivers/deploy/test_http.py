"""The deploy file server: Range support from aiohttp's FileResponse, and a lookup that cannot escape."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from bmd.drivers.deploy.http import create_image_app, locate

DATA = os.urandom(1000)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "http"
    (root / "node").mkdir(parents=True)
    (root / "node" / "disk").write_bytes(DATA)
    (root / "node" / "boot.ipxe").write_text("#!ipxe\n")
    (root / "node" / ".boot.ipxe.boot").write_text("staged")
    (root / ".tmp-x").write_text("temp")
    (root / "ipxe").mkdir()
    (root / "ipxe" / "01-aa.ipxe").symlink_to("../node/boot.ipxe")
    (tmp_path / "outside").write_text("secret")
    (root / "escape").symlink_to(tmp_path / "outside")
    (root / "loop").symlink_to("loop")
    return root


@pytest.fixture
async def base(root: Path) -> AsyncIterator[str]:
    app = web.Application()
    app.add_subapp("/images/", create_image_app(root))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def test_full_get(base: str, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{base}/images/node/disk") as resp:
        assert resp.status == 200
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["Content-Length"] == "1000"
        assert await resp.read() == DATA


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=900-", 900, 999),
        ("bytes=-100", 900, 999),
        ("bytes=990-5000", 990, 999),
    ],
)
async def test_ranges(base: str, session: aiohttp.ClientSession, header: str, start: int, end: int) -> None:
    async with session.get(f"{base}/images/node/disk", headers={"Range": header}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/1000"
        assert await resp.read() == DATA[start : end + 1]


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000"])
async def test_unsatisfiable_range(base: str, session: aiohttp.ClientSession, header: str) -> None:
    async with session.get(f"{base}/images/node/disk", headers={"Range": header}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == "bytes */1000"


async def test_head(base: str, session: aiohttp.ClientSession) -> None:
    async with session.head(f"{base}/images/node/disk") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "1000"
        assert await resp.read() == b""


async def test_symlink_inside_the_root_is_served(base: str, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{base}/images/ipxe/01-aa.ipxe") as resp:
        assert resp.status == 200 and await resp.text() == "#!ipxe\n"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/images/missing",
        "/images/node",  # a directory
        "/images/node/",
        "/images/escape",  # symlink leaving the root
        "/images/loop",
        "/images/.tmp-x",
        "/images/node/.boot.ipxe.boot",
        "/images/../outside",
        "/images/node/../../outside",
        "/images/%2e%2e/outside",
        "/images/node%2F..%2F..%2Foutside",
        "/images/node/disk%00",
        "/images//etc/passwd",
        "/images/%2Fetc%2Fpasswd",
        "/outside",
    ],
)
async def test_not_found_and_no_traversal(base: str, session: aiohttp.ClientSession, raw_path: str) -> None:
    async with session.get(URL(base + raw_path, encoded=True)) as resp:
        assert resp.status == 404, raw_path
        assert "secret" not in await resp.text()


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("node/disk", "node/disk"),
        ("ipxe/01-aa.ipxe", "node/boot.ipxe"),
        ("escape", None),
        ("../outside", None),
        ("node/../node/disk", None),
        ("/etc/passwd", None),
        ("", None),
        ("node/.boot.ipxe.boot", None),
        ("loop", None),
        ("node/disk\0", None),
    ],
)
def test_locate(root: Path, relative: str, expected: str | None) -> None:
    found = locate(root, relative)
    assert found == (None if expected is None else (root / expected).resolve())
