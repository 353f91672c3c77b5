"""``GET /v1/events/stream``: node changes as server-sent events (``text/event-stream``), for the dashboard.

Fed by the bus topic ``nodes`` (:mod:`bmd.node_events`: every committed write of ``bm_nodes`` publishes the
nodes' views). Each stream is its own bus subscription, bounded (``queue_size`` batches, no replay): the
publisher never waits for a reader. Events, each ``data`` one JSON object:

- ``hello`` first, once subscribed: ``{"heartbeat": <s>}``. Anything committed after it arrives as an
  event, so a client that (re)loads the node list after ``hello`` misses nothing.
- ``nodes``: ``{"nodes": [<view>...]}``, the newest view of each node changed since the last event (batches
  that queued while the stream was writing are merged); a view is ``{id, version, uuid, name, power_state,
  provision_state, maintenance, instance_uuid, power_failures, deleted}``: ``version`` grows with every
  write of the row, so a client keeps the newest whatever the order.
- ``resync``: ``{"dropped": <batches>}``: the stream fell behind and its queue dropped batches; the client
  reloads the list instead.
- a comment line (``: keepalive``) every ``heartbeat`` seconds without events, so proxies and clients
  see a live connection.

A reader that stops reading is bounded too: a write that does not complete within ``write_timeout``
closes that stream (``node_stream_slow_client``); at most ``max_clients`` streams are open (503 past it).
On shutdown every stream ends at once (``on_shutdown``), so a stopping bmd is not held up by its
dashboards. Reads are open like every GET.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from bmd.api.app import CTX, REQUEST_ID, error_response
from bmd.api.openapi import answers
from bmd.bus import Bus, Subscription
from bmd.node_events import TOPIC, NodeView

log = structlog.get_logger(__name__)

PATH = "/v1/events/stream"


class NodeStreams:
    """The open streams of one app, and their bounds (set before the app starts; tests shorten them)."""

    def __init__(
        self,
        bus: Bus,
        *,
        heartbeat: float = 15.0,
        queue_size: int = 32,
        write_timeout: float = 10.0,
        max_clients: int = 64,
    ) -> None:
        self.bus = bus
        self.heartbeat = heartbeat
        self.queue_size = queue_size
        self.write_timeout = write_timeout
        self.max_clients = max_clients
        self.open: set[Subscription] = set()
        self.closing = False
        self.slow_closed = 0

    def subscribe(self) -> Subscription | None:
        """A new stream's subscription, or None when no more may open (closing, or at ``max_clients``)."""
        if self.closing or len(self.open) >= self.max_clients:
            return None
        sub = self.bus.subscribe(TOPIC, replay=False, queue_size=self.queue_size)
        self.open.add(sub)
        return sub

    def release(self, sub: Subscription) -> None:
        sub.close()
        self.open.discard(sub)

    def close_all(self) -> None:
        """End every stream (each drains nothing more and returns); refuse new ones."""
        self.closing = True
        for sub in list(self.open):
            sub.close()


STREAMS: web.AppKey[NodeStreams] = web.AppKey("node_streams", NodeStreams)


def view_to_dict(view: NodeView) -> dict[str, Any]:
    out = dataclasses.asdict(view)
    out["id"] = out.pop("node_id")
    del out["fingerprint"]  # the scheduler's, salted per process: meaningless to a client
    return out


def merge(batches: Iterable[list[NodeView]]) -> list[NodeView]:
    """The newest view of each node in ``batches``, in node id order."""
    newest: dict[int, NodeView] = {}
    for batch in batches:
        for view in batch:
            if view.newer_than(newest.get(view.node_id)):
                newest[view.node_id] = view
    return [newest[i] for i in sorted(newest)]


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str, allow_nan=False)}\n\n".encode()


class _Slow(Exception):
    """The client did not take a write within the write timeout."""


@dataclass
class _Writer:
    """Writes to one stream's response, each write bounded by the streams' write timeout."""

    response: web.StreamResponse
    streams: NodeStreams

    async def send(self, data: bytes) -> None:
        try:
            async with asyncio.timeout(self.streams.write_timeout):
                await self.response.write(data)
        except TimeoutError as err:
            raise _Slow from err


async def _next(sub: Subscription, heartbeat: float) -> list[list[NodeView]] | None:
    """Every batch queued, waiting up to ``heartbeat`` for the first: [] on a quiet heartbeat, None once the
    subscription is closed (shutdown)."""
    try:
        async with asyncio.timeout(heartbeat):
            first = await sub.get()
    except TimeoutError:
        return []
    except StopAsyncIteration:
        return None
    rest = sub.drain()
    if sub.closed:
        return None
    return [first, *rest]


@answers(200, media="text/event-stream", description="hello, then nodes and resync events (see the tag)")
async def stream_events(request: web.Request) -> web.StreamResponse:
    streams = request.app[STREAMS]
    if request.method == "HEAD":  # the headers only: a stream that never ends has no length to announce
        return web.Response(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store"})
    sub = streams.subscribe()
    if sub is None:
        reason = "bmd is stopping" if streams.closing else f"too many event streams open ({streams.max_clients})"
        return error_response(503, "unavailable", reason)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a proxy in front must not buffer the stream
            "X-Content-Type-Options": "nosniff",
        }
    )
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]
    out, seen_dropped = _Writer(response, streams), 0
    try:
        await response.prepare(request)
        await out.send(sse("hello", {"heartbeat": streams.heartbeat}))
        while True:
            batches = await _next(sub, streams.heartbeat)
            if batches is None:
                break
            if not batches:
                await out.send(b": keepalive\n\n")
            elif sub.dropped != seen_dropped:
                await out.send(sse("resync", {"dropped": sub.dropped - seen_dropped}))
                seen_dropped = sub.dropped
            else:
                views = [view_to_dict(v) for v in merge(batches)]
                await out.send(sse("nodes", {"nodes": views}))
    except _Slow:
        streams.slow_closed += 1
        log.warning("node_stream_slow_client", peer=request.remote, timeout=streams.write_timeout)
        if request.transport is not None:
            request.transport.abort()  # what it has not read is dropped with the connection
    except ConnectionError:
        pass  # the client went away
    finally:
        streams.release(sub)
    return response


async def _close_streams(app: web.Application) -> None:
    app[STREAMS].close_all()


def setup(app: web.Application) -> None:
    app[STREAMS] = NodeStreams(app[CTX].bus)
    app.router.add_get(PATH, stream_events)
    app.on_shutdown.append(_close_streams)
