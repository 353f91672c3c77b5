"""A loopback OpenFlow-controller stand-in that serves the vifinfo REST API from an in-memory table.

It speaks the same protocol as the real controller (see :mod:`bmd.drivers.vif.vifinfo`) and is used by tests
and by the lab/demo: ``python -m bmd.drivers.vif.fake_controller --port 8090``. Faults can be injected:
``fail_next`` answers the next requests with the given 5xx statuses.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)


@dataclass
class FakeVifController:
    """State of the fake controller: the table, the request log, and pending injected failures."""

    table: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/vifinfo", self.list_all)
        app.router.add_post("/vifinfo", self.create)
        app.router.add_get("/vifinfo/{vif_uuid}", self.show)
        app.router.add_delete("/vifinfo/{vif_uuid}", self.delete)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.fail_next:
            status = self.fail_next.pop(0)
            return web.json_response({"error": "injected failure"}, status=status)
        response: web.StreamResponse = await handler(request)
        return response

    async def list_all(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.table.values()))

    async def show(self, request: web.Request) -> web.Response:
        entry = self.table.get(request.match_info["vif_uuid"])
        if entry is None:
            return _error(404, f"vif_uuid {request.match_info['vif_uuid']} not found")
        return web.json_response(entry)

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be an object")
        vif_uuid, dpid, port_no = body.get("vif_uuid"), body.get("datapath_id"), body.get("port_no")
        if not isinstance(vif_uuid, str) or not vif_uuid:
            return _error(400, "vif_uuid must be a non-empty string")
        if not isinstance(dpid, str) or not dpid:
            return _error(400, "datapath_id must be a non-empty string")
        if not isinstance(port_no, int) or isinstance(port_no, bool) or port_no < 0:
            return _error(400, "port_no must be a non-negative integer")
        if vif_uuid in self.table:
            return _error(409, f"vif_uuid {vif_uuid} exists")
        entry = {"vif_uuid": vif_uuid, "datapath_id": dpid, "port_no": port_no}
        self.table[vif_uuid] = entry
        log.info("fake_vifinfo_created", vif_uuid=vif_uuid, datapath_id=dpid, port_no=port_no)
        return web.json_response(entry, status=201)

    async def delete(self, request: web.Request) -> web.Response:
        vif_uuid = request.match_info["vif_uuid"]
        if self.table.pop(vif_uuid, None) is None:
            return _error(404, f"vif_uuid {vif_uuid} not found")
        log.info("fake_vifinfo_deleted", vif_uuid=vif_uuid)
        return web.Response(status=204)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@contextlib.asynccontextmanager
async def serve(controller: FakeVifController, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run ``controller`` on host:port (0 = any free port) and yield its base URL; stop on exit."""
    runner = web.AppRunner(controller.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield f"http://{host}:{bound_port}"
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenFlow controller serving the vifinfo REST API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    web.run_app(FakeVifController().app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
