"""Query parameters and paged lists.

Every list pages by keyset: ``?limit=`` (clamped to ``api.max_page_size``) and ``?marker=`` (the ``next``
of the previous page). The response is ``{"<items>": [...], "next": <marker or null>}``, written in chunks
so a page is never serialized into one string; at most one page is held in memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from bmd.api.app import REQUEST_ID
from bmd.errors import InvalidInput
from bmd.ids import MAX_ID, parse_id

T = TypeVar("T")
CHUNK_BYTES = 64 * 1024


def int_param(request: web.Request, name: str, default: int | None, lo: int = 0, hi: int = MAX_ID) -> int | None:
    """An integer query parameter: ASCII digits within [lo, hi], else 400 naming it."""
    raw = request.query.get(name)
    if raw is None:
        return default
    value = parse_id(raw)
    if value is None or not lo <= value <= hi:
        raise InvalidInput(f"query parameter {name} must be an integer in [{lo}, {hi}]", field=name)
    return value


def bool_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw.lower() not in ("true", "false", "1", "0"):
        raise InvalidInput(f"query parameter {name} must be true or false", field=name)
    return raw.lower() in ("true", "1")


def page_limit(request: web.Request, max_page_size: int) -> int:
    """``?limit=``: at least 1; anything above ``max_page_size`` is clamped to it (default: the maximum)."""
    limit = int_param(request, "limit", max_page_size, lo=1)
    assert limit is not None
    return min(limit, max_page_size)


def id_marker(request: web.Request) -> int | None:
    return int_param(request, "marker", None)


def name_marker(request: web.Request) -> str | None:
    raw = request.query.get("marker")
    if raw is not None and not 1 <= len(raw) <= 255:
        raise InvalidInput("query parameter marker must be 1-255 characters", field="marker")
    return raw


def split_page(rows: Sequence[T], limit: int, key: Callable[[T], Any]) -> tuple[Sequence[T], Any]:
    """Rows fetched with ``limit + 1``: the page and its ``next`` marker (None when this is the last page)."""
    if len(rows) > limit:
        return rows[:limit], key(rows[limit - 1])
    return rows, None


# One encoder for every row (``json.dumps`` with options builds a new one per call); the same output.
_dumps = json.JSONEncoder(default=str, allow_nan=False).encode


async def stream_page(
    request: web.Request, items: str, rows: Sequence[T], to_dict: Callable[[T], dict[str, Any]], next_marker: Any
) -> web.StreamResponse:
    """Write ``{"<items>": [...], "next": ...}`` row by row in chunks of about CHUNK_BYTES."""
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method == "HEAD":  # headers only: body bytes after a HEAD answer would corrupt the connection
        await response.write_eof()
        return response
    buf: list[str] = [f'{{"{items}": [']
    size = 0
    for index, row in enumerate(rows):
        piece = ("," if index else "") + _dumps(to_dict(row))
        buf.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            await response.write("".join(buf).encode())
            buf, size = [], 0
            await asyncio.sleep(0)  # a write that does not wait to drain never yields: let other requests in
    buf.append(f'], "next": {_dumps(next_marker)}}}')
    await response.write("".join(buf).encode())
    await response.write_eof()
    return response
