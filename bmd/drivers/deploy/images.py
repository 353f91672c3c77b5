"""The image cache: verified copies of kernels, ramdisks and disk images, shared between nodes.

One entry per (ref, checksum): ``<root>/<key>`` holds the bytes and ``<root>/<key>.json`` describes them
(ref with credentials removed, checksum, SHA-256, size); the json file's mtime is the entry's last use, so
the LRU order survives a restart without rewriting anything on a hit. Every byte that enters the cache is
streamed through the hashers into ``<root>/.tmp-*`` and renamed into place only once verified, so a crash or
a mismatch leaves nothing behind that :meth:`ImageCache.load` would mistake for an entry.

Eviction removes least-recently-used entries until the total is under ``max_bytes`` and never removes an
entry that is leased (``async with cache.lease(...)``) or hard-linked elsewhere (``st_nlink > 1``: the PXE
writer links images into per-node directories, which protects them across restarts too). An entry larger
than the whole budget is kept while in use and logged as ``image_cache_over_budget``.

Local refs (``/path`` or ``file://``) are copied, not linked: the copy is what was verified, and the
operator's file can change later without changing what the cache serves. They must resolve under one of
``allowed_local_roots`` (see :mod:`bmd.drivers.deploy.refs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
import structlog

from bmd.drivers.deploy.checksum import Checksum, DigestSink, parse_checksum
from bmd.drivers.deploy.refs import ImageSource, parse_image_ref, scrub_urls
from bmd.errors import DriverError, InvalidInput, NotFound

log = structlog.get_logger(__name__)

_KEY = re.compile(r"^[0-9a-f]{40}$")
_META_FORMAT = 1


@dataclass(slots=True)
class CacheEntry:
    key: str
    path: Path
    ref: str  # display form, safe to log
    checksum: str | None
    sha256: str
    size: int
    last_used: float


def _cache_key(source: ImageSource, expected: Checksum | None) -> str:
    material = f"{source.kind}\n{source.location}\n{expected or ''}"
    return hashlib.sha256(material.encode()).hexdigest()[:40]


def _write_chunk(out: IO[bytes], sink: DigestSink, chunk: bytes) -> None:
    sink.update(chunk)
    out.write(chunk)


def _copy_chunk(src: IO[bytes], out: IO[bytes], sink: DigestSink, size: int) -> int:
    chunk = src.read(size)
    if chunk:
        _write_chunk(out, sink, chunk)
    return len(chunk)


class ImageCache:
    """Size-bounded LRU of verified images under ``root``. Owns its download tasks; call :meth:`close`."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        http_timeout: float = 60.0,
        allowed_local_roots: Sequence[Path] = (),
        session: aiohttp.ClientSession | None = None,
        chunk_size: int = 1 << 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0:
            raise InvalidInput(f"image cache max_bytes must be positive, got {max_bytes!r}", field="max_bytes")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.http_timeout = http_timeout
        self.allowed_local_roots = tuple(Path(p) for p in allowed_local_roots)
        self.chunk_size = chunk_size
        self._clock = clock
        self._session = session
        self._owns_session = session is None
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()  # oldest use first
        self._leases: Counter[str] = Counter()
        self._inflight: dict[str, asyncio.Task[CacheEntry]] = {}
        self._waiters: Counter[str] = Counter()
        self._load_lock = asyncio.Lock()
        self._loaded = False
        self._closed = False

    # -- public API -------------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def entries(self) -> list[CacheEntry]:
        """Entries, least recently used first."""
        return list(self._entries.values())

    def describe(self, path: Path) -> CacheEntry:
        """The entry a path returned by :meth:`fetch`/:meth:`lease` belongs to."""
        entry = self._entries.get(Path(path).name)
        if entry is None or entry.path != Path(path):
            raise NotFound(f"{path} is not an entry of the image cache")
        return entry

    async def load(self) -> None:
        """Rebuild the index from disk (idempotent): drop temp files and half-written entries, then evict."""
        async with self._load_lock:
            if self._loaded:
                return
            found = await asyncio.to_thread(self._scan)
            for entry in sorted(found, key=lambda e: e.last_used):
                self._entries[entry.key] = entry
            self._loaded = True
            log.info("image_cache_loaded", root=str(self.root), entries=len(found), total_bytes=self.total_bytes)
            self._evict()

    async def fetch(self, ref: str, checksum: str | None = None) -> Path:
        """The cached file for ``ref``; downloads or copies it first if needed (concurrent calls share one).

        The path stays valid until the next eviction; hold a :meth:`lease` to keep it longer.
        """
        source, expected, key = await self._identify(ref, checksum)
        return (await self._get(key, source, expected)).path

    @contextlib.asynccontextmanager
    async def lease(self, ref: str, checksum: str | None = None) -> AsyncIterator[Path]:
        """Like :meth:`fetch`, and the entry cannot be evicted until the block exits."""
        source, expected, key = await self._identify(ref, checksum)
        self._leases[key] += 1
        try:
            entry = await self._get(key, source, expected)
            yield entry.path
        finally:
            self._leases[key] -= 1
            if self._leases[key] <= 0:
                del self._leases[key]
                self._evict()

    async def wait_idle(self) -> None:
        """Return once no download is in flight (finished, failed or cancelled)."""
        while pending := [t for t in self._inflight.values() if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """Cancel and await downloads in flight (their temp files are removed), close our HTTP session."""
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- lookup and coalescing --------------------------------------------------------------------

    async def _identify(self, ref: str, checksum: str | None) -> tuple[ImageSource, Checksum | None, str]:
        expected = parse_checksum(checksum)
        source = await asyncio.to_thread(parse_image_ref, ref, self.allowed_local_roots)
        await self.load()
        return source, expected, _cache_key(source, expected)

    async def _get(self, key: str, source: ImageSource, expected: Checksum | None) -> CacheEntry:
        if self._closed:
            raise DriverError(f"cannot fetch {source.display}: the image cache is closed")
        while True:
            entry = self._entries.get(key)
            if entry is not None and await asyncio.to_thread(entry.path.is_file):
                self._touch(entry)
                return entry
            if entry is not None:
                log.warning("image_cache_entry_vanished", key=key, ref=entry.ref)
                self._entries.pop(key, None)
            entry = await self._join_download(key, source, expected)
            if self._entries.get(key) is entry:  # not evicted before we got here (only unleased fetches)
                self._touch(entry)
                return entry

    async def _join_download(self, key: str, source: ImageSource, expected: Checksum | None) -> CacheEntry:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._download(key, source, expected), name=f"image-fetch-{key}")
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._download_done(key, t))
        self._waiters[key] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise DriverError(f"fetching {source.display} was cancelled: the image cache is closing") from None
            if self._waiters[key] == 1 and not task.done():
                task.cancel()  # nobody else wants it: stop downloading
            raise
        finally:
            self._waiters[key] -= 1
            if self._waiters[key] <= 0:
                del self._waiters[key]

    def _download_done(self, key: str, task: asyncio.Task[CacheEntry]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here: waiters may all have gone

    def _touch(self, entry: CacheEntry) -> None:
        entry.last_used = self._clock()
        self._entries.move_to_end(entry.key)
        with contextlib.suppress(OSError):
            os.utime(self._meta_path(entry.key), (entry.last_used, entry.last_used))

    # -- filling an entry ----------------------------------------------------------------------------

    def _meta_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    async def _download(self, key: str, source: ImageSource, expected: Checksum | None) -> CacheEntry:
        tmp = self.root / f".tmp-{key}-{secrets.token_hex(4)}"
        sink = DigestSink(expected)
        log.info("image_fetch_started", key=key, ref=source.display)
        try:
            out = await asyncio.to_thread(open, tmp, "xb")
            try:
                if source.kind == "http":
                    await self._stream_http(source, out, sink)
                else:
                    await self._copy_local(source, out, sink)
            finally:
                out.close()
            try:
                sink.verify(source.display)
            except DriverError:
                log.error(
                    "image_checksum_mismatch",
                    key=key,
                    ref=source.display,
                    expected=str(expected),
                    actual=str(sink.actual()),
                )
                raise
            entry = CacheEntry(
                key,
                self.root / key,
                source.display,
                str(expected) if expected else None,
                sink.sha256,
                sink.size,
                self._clock(),
            )
            self._commit(tmp, entry)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._entries[key] = entry
        log.info("image_fetched", key=key, ref=source.display, size=entry.size, sha256=entry.sha256)
        self._evict(protect={key})
        return entry

    def _commit(self, tmp: Path, entry: CacheEntry) -> None:
        meta = {
            "format": _META_FORMAT,
            "ref": entry.ref,
            "checksum": entry.checksum,
            "sha256": entry.sha256,
            "size": entry.size,
        }
        meta_tmp = self.root / f".tmp-{entry.key}-meta-{secrets.token_hex(4)}"
        try:
            meta_tmp.write_text(json.dumps(meta, sort_keys=True))
            os.utime(meta_tmp, (entry.last_used, entry.last_used))
            os.replace(tmp, entry.path)  # data first: a json without its data is dropped at load
            os.replace(meta_tmp, self._meta_path(entry.key))
        except BaseException:
            meta_tmp.unlink(missing_ok=True)
            raise

    async def _stream_http(self, source: ImageSource, out: IO[bytes], sink: DigestSink) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.http_timeout, sock_read=self.http_timeout)
        try:
            async with self._session.get(source.location, timeout=timeout) as resp:
                if resp.status != 200:
                    reason = f"HTTP {resp.status} {resp.reason or ''}".strip()
                    raise DriverError(f"downloading {source.display} failed: {reason}")
                buf = bytearray()
                async for data in resp.content.iter_any():
                    buf += data
                    if len(buf) >= self.chunk_size:
                        await asyncio.to_thread(_write_chunk, out, sink, bytes(buf))
                        buf.clear()
                if buf:
                    await asyncio.to_thread(_write_chunk, out, sink, bytes(buf))
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            # aiohttp's message may embed the URL it was given, credentials and all: keep only its scrubbed
            # text, not the exception (a traceback would print the clear URL)
            reason = scrub_urls(str(err)) or type(err).__name__
            raise DriverError(f"downloading {source.display} failed: {reason}") from None

    async def _copy_local(self, source: ImageSource, out: IO[bytes], sink: DigestSink) -> None:
        try:
            src = await asyncio.to_thread(open, source.location, "rb")
        except OSError as err:
            raise DriverError(f"reading image {source.display} failed: {err.strerror or err}") from err
        try:
            while await asyncio.to_thread(_copy_chunk, src, out, sink, self.chunk_size):
                pass
        finally:
            src.close()

    # -- restart and eviction --------------------------------------------------------------------

    def _scan(self) -> list[CacheEntry]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        names = {p.name for p in self.root.iterdir()}
        for name in names:
            if name.startswith(".tmp-"):
                (self.root / name).unlink(missing_ok=True)
        found: list[CacheEntry] = []
        keys = {n.removesuffix(".json") for n in names if _KEY.match(n.removesuffix(".json"))}
        for key in keys:
            data, meta_path = self.root / key, self._meta_path(key)
            try:
                meta = json.loads(meta_path.read_text())
                st, mst = data.stat(), meta_path.stat()
                if meta.get("format") != _META_FORMAT or st.st_size != meta["size"]:
                    raise ValueError("metadata does not match the data file")
                found.append(
                    CacheEntry(
                        key,
                        data,
                        str(meta["ref"]),
                        meta.get("checksum"),
                        str(meta["sha256"]),
                        int(meta["size"]),
                        mst.st_mtime,
                    )
                )
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("image_cache_entry_dropped", key=key, reason=str(err))
                data.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
        return found

    def _in_use(self, entry: CacheEntry) -> bool:
        if self._leases.get(entry.key, 0) > 0 or entry.key in self._inflight:
            return True
        try:
            return entry.path.stat().st_nlink > 1
        except FileNotFoundError:
            return False

    def _evict(self, protect: set[str] | None = None) -> None:
        total = self.total_bytes
        if total <= self.max_bytes:
            return
        for key, entry in list(self._entries.items()):
            if total <= self.max_bytes:
                break
            if (protect and key in protect) or self._in_use(entry):
                continue
            entry.path.unlink(missing_ok=True)
            self._meta_path(key).unlink(missing_ok=True)
            del self._entries[key]
            total -= entry.size
            log.info("image_evicted", key=key, ref=entry.ref, size=entry.size)
        if total > self.max_bytes:
            log.warning("image_cache_over_budget", total_bytes=total, max_bytes=self.max_bytes)
