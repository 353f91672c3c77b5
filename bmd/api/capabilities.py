"""``GET /v1/capabilities`` (the last list report_driver_status published) and per-node capabilities:
``PUT/DELETE /v1/nodes/{node}/capabilities/{key}``; they merge over the service-wide extra specs."""

from __future__ import annotations

import asyncio
import bisect
import json
from typing import Any

from aiohttp import web

from bmd.api.app import ctx_of, json_response, parse_body
from bmd.api.body import takes
from bmd.api.openapi import LIMIT, NAME_MARKER, answers, query
from bmd.api.paging import name_marker, page_limit, split_page
from bmd.api.schemas import RESERVED_SPEC_KEYS, CapabilityValue, check_spec_key
from bmd.api.views import CapabilitiesView, NodeCapabilities
from bmd.db import nodes as q
from bmd.errors import InvalidInput, NotFound
from bmd.node_events import note_nodes
from bmd.tasks.report_driver_status import TOPIC


def check_capability_key(key: str) -> str:
    try:
        check_spec_key(key)
    except ValueError as err:
        raise InvalidInput(f"key: {err}", field="key") from err
    if key in RESERVED_SPEC_KEYS:
        raise InvalidInput(f"key: {key!r} is reserved (bmd computes it); choose another name", field="key")
    return key


class PublishedIndex:
    """The last published list sorted by node name, so that a page is a bisection and a slice rather than a
    sort of the whole list (100,000 entries: ~100 ms a page, 10 s to walk them all).

    Kept while the bus's latest list is the very object it was built from (identity: however a publisher
    builds its lists, a new one is never mistaken for the old), and dropped ``HOLD_SECONDS`` after its last
    use, so a list the bus has replaced is not kept alive by an index nobody reads."""

    HOLD_SECONDS = 10.0

    def __init__(self) -> None:
        self._of: list[dict[str, Any]] | None = None
        self._rows: list[dict[str, Any]] = []
        self._names: list[str] = []
        self._release: asyncio.TimerHandle | None = None

    def page(self, latest: list[dict[str, Any]], marker: str | None, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` entries whose node sorts after ``marker``, in node order."""
        if latest is not self._of:
            self._rows = sorted(latest, key=_node_of)
            self._names = [_node_of(r) for r in self._rows]
            self._of = latest
        if self._release is not None:
            self._release.cancel()
        self._release = asyncio.get_running_loop().call_later(self.HOLD_SECONDS, self.forget)
        start = 0 if marker is None else bisect.bisect_right(self._names, marker)
        return self._rows[start : start + count]

    def forget(self) -> None:
        if self._release is not None:
            self._release.cancel()
        self._of, self._rows, self._names, self._release = None, [], [], None


ENCODE_AT_ONCE = 100
_dumps = json.JSONEncoder(default=str, allow_nan=False).encode  # json_response's encoding
INDEX: web.AppKey[PublishedIndex] = web.AppKey("capabilities_index", PublishedIndex)


@answers(200, CapabilitiesView)
@query(LIMIT, NAME_MARKER)
async def get_capabilities(request: web.Request) -> web.Response:
    """The last published list, paged by node name (``next``: the last node of the page)."""
    ctx = ctx_of(request)
    limit = page_limit(request, ctx.settings.api.max_page_size)
    marker = name_marker(request)
    latest = ctx.bus.latest(TOPIC)
    rows = request.app[INDEX].page(latest, marker, limit + 1) if latest else []
    page, next_marker = split_page(rows, limit, _node_of)
    # json_response's bytes, encoded ENCODE_AT_ONCE entries at a time so /livez is not kept waiting
    pieces = []
    for start in range(0, len(page), ENCODE_AT_ONCE):
        pieces.append(", ".join(map(_dumps, page[start : start + ENCODE_AT_ONCE])))
        await asyncio.sleep(0)
    tail = _dumps({"published": latest is not None, "next": next_marker})[1:]
    return web.json_response(text=f'{{"capabilities": [{", ".join(pieces)}], {tail}')


def _node_of(stats: dict[str, Any]) -> str:
    return str(stats.get("node", ""))


@answers(200, NodeCapabilities)
@takes(CapabilityValue)
async def set_capability(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    key = check_capability_key(request.match_info["key"])
    body = await parse_body(request, CapabilityValue)
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        node.extra_specs = {**node.extra_specs, key: body.value}
        await session.flush()
        await note_nodes(session, [node.id])  # the schedulers read the node's capabilities again
    return json_response({"node": node.id, "extra_specs": node.extra_specs})


@answers(200, NodeCapabilities)
async def unset_capability(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    key = request.match_info["key"]
    async with ctx.sessionmaker.begin() as session:
        node = await q.get_node(session, request.match_info["node"], for_update=True)
        if key not in node.extra_specs:
            raise NotFound(f"node {node.id} has no capability {key!r}")
        node.extra_specs = {k: v for k, v in node.extra_specs.items() if k != key}
        await session.flush()
        await note_nodes(session, [node.id])
    return json_response({"node": node.id, "extra_specs": node.extra_specs})


async def _drop_index(app: web.Application) -> None:
    app[INDEX].forget()


def setup(app: web.Application) -> None:
    app[INDEX] = PublishedIndex()
    app.on_cleanup.append(_drop_index)
    app.router.add_get("/v1/capabilities", get_capabilities)
    app.router.add_put("/v1/nodes/{node}/capabilities/{key}", set_capability)
    app.router.add_delete("/v1/nodes/{node}/capabilities/{key}", unset_capability)
