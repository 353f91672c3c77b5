"""``GET /healthz`` (no auth, no secrets): 200 when ok or degraded, 503 when failing."""

from __future__ import annotations

from aiohttp import web

from bmd.api.app import CTX, json_response
from bmd.api.openapi import answers
from bmd.api.views import HealthReport
from bmd.health import HealthChecker

CHECKER: web.AppKey[HealthChecker] = web.AppKey("health", HealthChecker)


@answers(200, HealthReport, description="ok or degraded")
@answers(503, HealthReport, description="failing")
async def healthz(request: web.Request) -> web.Response:
    report = request.app[CHECKER].report()
    return json_response(report, status=503 if report["status"] == "failing" else 200)


def setup(app: web.Application) -> None:
    app[CHECKER] = HealthChecker(app[CTX])
    app.router.add_get("/healthz", healthz)
