"""The image cache against real files and a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bmd.drivers.deploy.images import ImageCache
from bmd.errors import DriverError, InvalidInput, NotFound
from tests.drivers.deploy.servers import ImageServer


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def files_in(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def make_cache(root: Path, max_bytes: int = 10**9, **kwargs: object) -> ImageCache:
    ticks = itertools.count(1_700_000_000)
    return ImageCache(root, max_bytes, clock=lambda: float(next(ticks)), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[ImageCache]:
    c = make_cache(tmp_path / "cache")
    yield c
    await c.close()


@pytest.mark.parametrize("algorithm", ["md5", "sha256", "sha512"])
async def test_http_fetch_verifies_and_is_cached(cache: ImageCache, image_server: ImageServer, algorithm: str) -> None:
    data = os.urandom(3000)
    image_server.add("a", data)
    path = await cache.fetch(image_server.url("a"), digest(data, algorithm))
    assert path.read_bytes() == data
    assert path.parent == cache.root
    again = await cache.fetch(image_server.url("a"), digest(data, algorithm).upper().replace("SHA", "sha"))
    assert again == path
    assert image_server.hits["a"] == 1
    entry = cache.describe(path)
    assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.size == 3000
    meta = json.loads((cache.root / f"{path.name}.json").read_text())
    assert meta["sha256"] == entry.sha256 and meta["checksum"] == digest(data, algorithm)


async def test_streams_in_chunks(tmp_path: Path, image_server: ImageServer) -> None:
    data = os.urandom(700_000)
    checksum = image_server.add("big", data)
    cache = make_cache(tmp_path / "c", chunk_size=64 * 1024)
    try:
        assert (await cache.fetch(image_server.url("big"), checksum)).read_bytes() == data
    finally:
        await cache.close()


async def test_checksum_mismatch_names_both_digests_and_leaves_nothing(
    cache: ImageCache, image_server: ImageServer
) -> None:
    data = b"the real image"
    wrong = digest(b"something else")
    image_server.add("a", data)
    with capture_logs() as logs, pytest.raises(DriverError) as err:
        await cache.fetch(image_server.url("a"), wrong)
    message = str(err.value)
    assert wrong in message and digest(data) in message and "mismatch" in message
    assert files_in(cache.root) == [] and cache.entries() == []
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["image_checksum_mismatch"]
    # The right checksum then works, with a second download (a failure is never cached).
    assert (await cache.fetch(image_server.url("a"), digest(data))).read_bytes() == data
    assert image_server.hits["a"] == 2


async def test_http_error_is_a_driver_error(cache: ImageCache, image_server: ImageServer) -> None:
    with pytest.raises(DriverError, match="404"):
        await cache.fetch(image_server.url("missing"))
    assert files_in(cache.root) == []


async def test_truncated_body_is_a_driver_error(cache: ImageCache, image_server: ImageServer) -> None:
    image_server.add("short", os.urandom(200_000))
    image_server.truncate.add("short")
    with pytest.raises(DriverError, match="downloading"):
        await cache.fetch(image_server.url("short"))
    assert files_in(cache.root) == []


async def test_concurrent_fetches_share_one_download(cache: ImageCache, image_server: ImageServer) -> None:
    data = os.urandom(5000)
    checksum = image_server.add("a", data)
    gate, started = image_server.hold("a")
    tasks = [asyncio.create_task(cache.fetch(image_server.url("a"), checksum)) for _ in range(5)]
    await started.wait()  # every task has joined: they all started before the first request got here
    gate.set()
    paths = await asyncio.gather(*tasks)
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert image_server.hits["a"] == 1


async def test_cancelling_one_waiter_does_not_stop_the_others(cache: ImageCache, image_server: ImageServer) -> None:
    data = os.urandom(5000)
    checksum = image_server.add("a", data)
    gate, started = image_server.hold("a")
    first = asyncio.create_task(cache.fetch(image_server.url("a"), checksum))
    second = asyncio.create_task(cache.fetch(image_server.url("a"), checksum))
    await started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert (await second).read_bytes() == data
    assert image_server.hits["a"] == 1


async def test_cancelling_the_last_waiter_stops_the_download(cache: ImageCache, image_server: ImageServer) -> None:
    image_server.add("a", os.urandom(5000))
    _gate, started = image_server.hold("a")
    task = asyncio.create_task(cache.fetch(image_server.url("a")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(10):  # bound only: with the gate shut, only a cancelled download ends
        await cache.wait_idle()
    assert files_in(cache.root) == [] and cache.entries() == []


async def test_close_fails_waiters_cleanly(cache: ImageCache, image_server: ImageServer) -> None:
    image_server.add("a", os.urandom(5000))
    _gate, started = image_server.hold("a")
    task = asyncio.create_task(cache.fetch(image_server.url("a")))
    await started.wait()
    await cache.close()
    with pytest.raises(DriverError, match="closing"):
        await task
    assert files_in(cache.root) == []


async def add_three(server: ImageServer) -> dict[str, str]:
    return {name: server.url(name) for name in "abc" if server.add(name, name.encode() * 100)}


async def test_lru_evicts_least_recently_used(tmp_path: Path, image_server: ImageServer) -> None:
    urls = await add_three(image_server)
    cache = make_cache(tmp_path / "c", max_bytes=250)
    try:
        a = await cache.fetch(urls["a"])
        b = await cache.fetch(urls["b"])
        await cache.fetch(urls["a"])  # a is now more recent than b
        with capture_logs() as logs:
            c = await cache.fetch(urls["c"])
        assert a.exists() and c.exists() and not b.exists()
        assert not (cache.root / f"{b.name}.json").exists()
        assert [e["ref"] for e in logs if e["event"] == "image_evicted"] == [urls["b"]]
        assert [e.ref for e in cache.entries()] == [urls["a"], urls["c"]]
        assert cache.total_bytes == 200
        await cache.fetch(urls["b"])
        assert image_server.hits["b"] == 2 and not a.exists()  # a is now the oldest
    finally:
        await cache.close()


async def test_leased_entries_are_never_evicted(tmp_path: Path, image_server: ImageServer) -> None:
    urls = await add_three(image_server)
    cache = make_cache(tmp_path / "c", max_bytes=150)
    try:
        async with cache.lease(urls["a"]) as a:
            async with cache.lease(urls["b"]) as b:
                with capture_logs() as logs:
                    c = await cache.fetch(urls["c"])
                # a and b are leased; c was just fetched: all three stay, over budget.
                assert a.exists() and b.exists() and c.exists()
                assert "image_cache_over_budget" in [e["event"] for e in logs]
            # b's lease ended: the next eviction (on release) drops the LRU unleased entries.
            assert a.exists() and not b.exists() and not c.exists()
        assert cache.total_bytes == 100
    finally:
        await cache.close()


async def test_hard_linked_entries_are_not_evicted(tmp_path: Path, image_server: ImageServer) -> None:
    urls = await add_three(image_server)
    cache = make_cache(tmp_path / "c", max_bytes=250)
    try:
        a = await cache.fetch(urls["a"])
        os.link(a, tmp_path / "node-kernel")  # what the PXE writer does
        b = await cache.fetch(urls["b"])
        await cache.fetch(urls["c"])
        assert a.exists() and not b.exists()
    finally:
        await cache.close()


async def test_restart_rebuilds_index_and_lru_order(tmp_path: Path, image_server: ImageServer) -> None:
    urls = await add_three(image_server)
    root = tmp_path / "c"
    first = make_cache(root, max_bytes=1000)
    a = await first.fetch(urls["a"])
    b = await first.fetch(urls["b"])
    await first.fetch(urls["a"])  # b is the LRU entry
    await first.close()
    # Debris a crash can leave: a temp file, metadata without data, data without metadata, a bad json.
    (root / ".tmp-deadbeef").write_bytes(b"partial")
    (root / ("1" * 40 + ".json")).write_text("{}")
    (root / ("2" * 40)).write_bytes(b"orphan")
    (root / ("3" * 40)).write_bytes(b"x")
    (root / ("3" * 40 + ".json")).write_text("not json")

    ticks = itertools.count(1_800_000_000)
    second = ImageCache(root, 250, clock=lambda: float(next(ticks)))
    try:
        await second.load()
        assert files_in(root) == sorted([a.name, f"{a.name}.json", b.name, f"{b.name}.json"])
        assert [e.path for e in second.entries()] == [b, a]
        assert (await second.fetch(urls["a"])) == a
        assert image_server.hits["a"] == 1
        await second.fetch(urls["c"])  # over 250: evicts b, the LRU entry from before the restart
        assert a.exists() and not b.exists()
    finally:
        await second.close()


async def test_vanished_file_is_fetched_again(cache: ImageCache, image_server: ImageServer) -> None:
    image_server.add("a", b"data")
    path = await cache.fetch(image_server.url("a"))
    path.unlink()
    assert (await cache.fetch(image_server.url("a"))).read_bytes() == b"data"
    assert image_server.hits["a"] == 2


async def test_local_refs_are_copied_and_verified(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    src = images / "disk.img"
    src.write_bytes(b"local image")
    cache = make_cache(tmp_path / "c", allowed_local_roots=[images])
    try:
        path = await cache.fetch(str(src), digest(b"local image"))
        assert path.read_bytes() == b"local image"
        assert path.stat().st_ino != src.stat().st_ino
        assert await cache.fetch(f"file://{src}", digest(b"local image")) == path
        src.write_bytes(b"changed in place")
        assert path.read_bytes() == b"local image"
        with pytest.raises(DriverError, match="mismatch"):
            await cache.fetch(str(src), digest(b"what the operator expected"))
        with pytest.raises(DriverError, match="reading image"):
            await cache.fetch(str(images / "missing.img"))
        assert [e.path for e in cache.entries()] == [path]
    finally:
        await cache.close()


async def test_local_refs_outside_allowed_roots_are_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("do not serve")
    (images / "escape").symlink_to(secret)
    disabled = make_cache(tmp_path / "c1")
    allowed = make_cache(tmp_path / "c2", allowed_local_roots=[images])
    try:
        with pytest.raises(InvalidInput, match="local refs are disabled") as err:
            await disabled.fetch(str(images / "x"))
        assert err.value.field == "image_ref"
        for ref in (str(secret), f"file://{secret}", str(images / "escape"), f"{images}/../secret"):
            with pytest.raises(InvalidInput, match="not under an allowed local root"):
                await allowed.fetch(ref)
        assert files_in(tmp_path / "c2") == []
    finally:
        await disabled.close()
        await allowed.close()


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "   ",
        "relative/path.img",
        "ftp://host/image",
        "http:///no-host",
        "file://otherhost/x",
        "c:\\image",
    ],
)
async def test_bad_refs_name_the_field(cache: ImageCache, ref: str) -> None:
    with pytest.raises(InvalidInput) as err:
        await cache.fetch(ref)
    assert err.value.field == "image_ref"


@pytest.mark.parametrize(
    "checksum",
    ["abc", "sha1:" + "0" * 40, "sha256:" + "0" * 63, "sha256:" + "g" * 64, "md5:", "sha256" + "0" * 64],
)
async def test_bad_checksums_name_the_field(cache: ImageCache, image_server: ImageServer, checksum: str) -> None:
    with pytest.raises(InvalidInput) as err:
        await cache.fetch(image_server.url("a"), checksum)
    assert err.value.field == "checksum"
    assert image_server.hits["a"] == 0


async def test_credentials_in_refs_are_never_logged_or_stored(cache: ImageCache, image_server: ImageServer) -> None:
    image_server.add("a", b"data")
    with capture_logs() as logs:
        path = await cache.fetch(image_server.url("a", auth="user:hunter2", query="token=s3cr3t"))
    assert path.read_bytes() == b"data"
    assert logs and "hunter2" not in repr(logs) and "s3cr3t" not in repr(logs)
    stored = (cache.root / f"{path.name}.json").read_text()
    assert "hunter2" not in stored and "s3cr3t" not in stored


async def test_describe_rejects_foreign_paths(cache: ImageCache, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        cache.describe(tmp_path / "nope")


def test_max_bytes_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        ImageCache(tmp_path, 0)
    assert err.value.field == "max_bytes"


async def test_fetch_after_close_is_refused(tmp_path: Path, image_server: ImageServer) -> None:
    image_server.add("a", b"data")
    cache = make_cache(tmp_path / "c")
    await cache.close()
    with pytest.raises(DriverError, match="closed"):
        await cache.fetch(image_server.url("a"))
    assert image_server.hits["a"] == 0
