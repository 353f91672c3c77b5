"""Health (no auth, no secrets), answered from memory.

``GET /healthz``: the summary; 200 when ok or degraded, 503 when starting, stopping or failing.
``GET /livez``: 200 while the process serves its API (what a supervisor restarts on).
``GET /readyz``: 200 once started and while ok; 503 while starting, degraded, stopping or failing (what a
load balancer routes on), naming the checks and loops that are not ok.
"""

from __future__ import annotations

import time

from aiohttp import web

from bmd.api.app import CTX, json_response
from bmd.api.openapi import answers
from bmd.api.views import HealthReport, View
from bmd.health import HealthChecker

CHECKER: web.AppKey[HealthChecker] = web.AppKey("health", HealthChecker)


class Liveness(View):
    status: str
    uptime_s: float


class Readiness(View):
    status: str
    ready: bool
    not_ok: list[str]


@answers(200, HealthReport, description="ok or degraded")
@answers(503, HealthReport, description="starting, stopping or failing")
async def healthz(request: web.Request) -> web.Response:
    report = request.app[CHECKER].report()
    return json_response(report, status=200 if report["status"] in ("ok", "degraded") else 503)


@answers(200, Liveness, description="the process serves its API")
async def livez(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "uptime_s": round(time.time() - request.app[CTX].started_at, 3)})


@answers(200, Readiness, description="ready: started, and every check and loop ok")
@answers(503, Readiness, description="starting, degraded, stopping or failing")
async def readyz(request: web.Request) -> web.Response:
    body = request.app[CHECKER].readiness()
    return json_response(body, status=200 if body["ready"] else 503)


def setup(app: web.Application) -> None:
    app[CHECKER] = HealthChecker(app[CTX])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
