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

qcow2 images (magic ``QFI\xfb``) are converted once verified: ``qemu-img convert -O raw`` writes a second
entry, keyed by the qcow2 entry's SHA-256 and recording its ``derived_from``, and :meth:`ImageCache.fetch` /
:meth:`ImageCache.lease` return that raw file. The request's checksum is checked against the downloaded
qcow2; the entry's ``sha256`` (what the agent verifies) is the raw file's. Before converting, ``qemu-img
info`` must show no backing file and no external data file (either would make qemu-img read a file the
image names: any path on this host) and a virtual size within the cache budget; the conversion runs with a
timeout (``convert_timeout``) and its output lands in a temp file renamed in only once complete.

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
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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
    image_format: str = "raw"  # "qcow2": served through its converted entry (derived_from = this key)
    derived_from: str | None = None  # the qcow2 entry this raw entry was converted from


QCOW2_MAGIC = b"QFI\xfb"
CONVERT_TIMEOUT = 1800.0


def _raw_key(source_sha256: str) -> str:
    """The converted entry's key: from the qcow2's content, so one qcow2 under two refs converts once."""
    return hashlib.sha256(f"qemu-img-raw\n{source_sha256}".encode()).hexdigest()[:40]


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def _hash_file(path: Path, chunk: int) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while data := f.read(chunk):
            digest.update(data)
            size += len(data)
    return digest.hexdigest(), size


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
        convert_timeout: float = CONVERT_TIMEOUT,
        qemu_img: str = "qemu-img",
    ) -> None:
        if max_bytes <= 0:
            raise InvalidInput(f"image cache max_bytes must be positive, got {max_bytes!r}", field="max_bytes")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.http_timeout = http_timeout
        self.allowed_local_roots = tuple(Path(p) for p in allowed_local_roots)
        self.chunk_size = chunk_size
        self.convert_timeout = convert_timeout
        self.qemu_img = qemu_img
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
        held: list[str] = []
        try:
            return (await self._resolve(key, source, expected, held)).path
        finally:
            self._release(held, evict=False)  # as before: valid until the next eviction

    @contextlib.asynccontextmanager
    async def lease(self, ref: str, checksum: str | None = None) -> AsyncIterator[Path]:
        """Like :meth:`fetch`, and the entry cannot be evicted until the block exits. A qcow2 image is
        converted to raw first (a second entry); the path is the raw file's."""
        source, expected, key = await self._identify(ref, checksum)
        held: list[str] = []
        try:
            yield (await self._resolve(key, source, expected, held)).path
        finally:
            self._release(held, evict=True)

    def _hold(self, key: str, held: list[str]) -> None:
        if key not in held:
            held.append(key)
            self._leases[key] += 1

    def _release(self, held: list[str], evict: bool) -> None:
        for k in held:
            self._leases[k] -= 1
            if self._leases[k] <= 0:
                del self._leases[k]
        if evict:
            self._evict()

    async def _resolve(self, key: str, source: ImageSource, expected: Checksum | None, held: list[str]) -> CacheEntry:
        """The entry to serve for ``key``: its own, or for a qcow2 its converted one (converting now if
        needed). Every key it relies on is leased into ``held`` (the caller releases them)."""
        self._hold(key, held)
        raw = self._converted_of(key)  # converted before: the qcow2 itself need not be there any more
        if raw is not None:
            self._hold(raw.key, held)
            if await asyncio.to_thread(raw.path.is_file):
                self._touch(raw)
                return raw
        entry = await self._get(key, lambda: self._download(key, source, expected), source.display)
        if entry.image_format != "qcow2":
            return entry
        raw_key = _raw_key(entry.sha256)
        self._hold(raw_key, held)
        qcow2 = entry
        return await self._get(raw_key, lambda: self._convert(raw_key, qcow2), source.display)

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

    def _converted_of(self, key: str) -> CacheEntry | None:
        return next((e for e in self._entries.values() if e.derived_from == key), None)

    async def _get(self, key: str, fill: Callable[[], Coroutine[Any, Any, CacheEntry]], display: str) -> CacheEntry:
        if self._closed:
            raise DriverError(f"cannot fetch {display}: the image cache is closed")
        while True:
            entry = self._entries.get(key)
            if entry is not None and await asyncio.to_thread(entry.path.is_file):
                self._touch(entry)
                return entry
            if entry is not None:
                log.warning("image_cache_entry_vanished", key=key, ref=entry.ref)
                self._entries.pop(key, None)
            entry = await self._join_download(key, fill, display)
            if self._entries.get(key) is entry:  # not evicted before we got here (only unleased fetches)
                self._touch(entry)
                return entry

    async def _join_download(
        self, key: str, fill: Callable[[], Coroutine[Any, Any, CacheEntry]], display: str
    ) -> CacheEntry:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(fill(), name=f"image-fetch-{key}")
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._download_done(key, t))
        self._waiters[key] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise DriverError(f"fetching {display} was cancelled: the image cache is closing") from None
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
                image_format=await asyncio.to_thread(_sniff, tmp),
            )
            self._commit(tmp, entry)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._entries[key] = entry
        log.info("image_fetched", key=key, ref=source.display, size=entry.size, sha256=entry.sha256)
        self._evict(protect={key})
        return entry

    async def _qemu_img(self, *args: str, what: str) -> bytes:
        """Run qemu-img (bounded by ``convert_timeout``, killed on timeout or cancel); its stdout."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self.qemu_img,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise DriverError(
                f"{what}: qemu-img is not installed (apt-get install qemu-utils); qcow2 images need it"
            ) from None
        try:
            async with asyncio.timeout(self.convert_timeout):
                out, err = await proc.communicate()
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise DriverError(f"{what}: qemu-img did not finish within {self.convert_timeout:g}s") from None
            raise
        if proc.returncode != 0:
            reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise DriverError(f"{what}: qemu-img failed: {reason[0][:500]}")
        return out

    async def _convert(self, key: str, source: CacheEntry) -> CacheEntry:
        """The raw entry of a qcow2 entry: checked with ``qemu-img info``, converted into a temp file."""
        what = f"converting qcow2 image {source.ref}"
        info_text = await self._qemu_img("info", "--output=json", "-f", "qcow2", str(source.path), what=what)
        try:
            info = json.loads(info_text)
            virtual = int(info["virtual-size"])
        except (ValueError, KeyError, TypeError):
            raise DriverError(f"{what}: qemu-img info gave no virtual size") from None
        data_file = ((info.get("format-specific") or {}).get("data") or {}).get("data-file")
        if info.get("backing-filename") or info.get("full-backing-filename") or data_file:
            raise DriverError(f"{what}: it names a backing or data file; only self-contained qcow2 images are served")
        if virtual > self.max_bytes:
            raise DriverError(f"{what}: its virtual size {virtual} is larger than the image cache ({self.max_bytes})")
        tmp = self.root / f".tmp-{key}-{secrets.token_hex(4)}"
        log.info("image_convert_started", key=key, source_key=source.key, ref=source.ref, virtual_size=virtual)
        try:
            await self._qemu_img("convert", "-q", "-f", "qcow2", "-O", "raw", str(source.path), str(tmp), what=what)
            sha256, size = await asyncio.to_thread(_hash_file, tmp, self.chunk_size)
            entry = CacheEntry(
                key,
                self.root / key,
                f"{source.ref} (raw from qcow2)",
                None,
                sha256,
                size,
                self._clock(),
                derived_from=source.key,
            )
            self._commit(tmp, entry)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._entries[key] = entry
        log.info("image_converted", key=key, source_key=source.key, size=size, sha256=sha256)
        self._evict(protect={key})
        return entry

    def _commit(self, tmp: Path, entry: CacheEntry) -> None:
        meta = {
            "format": _META_FORMAT,
            "ref": entry.ref,
            "checksum": entry.checksum,
            "sha256": entry.sha256,
            "size": entry.size,
            "image_format": entry.image_format,
            "derived_from": entry.derived_from,
        }
        meta_tmp = self.root / f".tmp-{entry.key}-meta-{secrets.token_hex(4)}"
        try:
            meta_tmp.write_text(json.dumps(meta, sort_keys=True))
            os.utime(meta_tmp, (entry.last_used, entry.last_used))
            # 0644 inside the 0700 root (private through it, whatever the umask): the PXE writer can then
            # hard-link a kernel or ramdisk into the TFTP tree, where others read it, instead of copying it.
            os.chmod(tmp, 0o644)
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
                        image_format=str(meta.get("image_format") or "raw"),
                        derived_from=meta.get("derived_from") or None,
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
