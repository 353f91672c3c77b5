"""The deploy agent's endpoints (the protocol is documented in :mod:`bmd.drivers.deploy.agent_sim`).

``POST /v1/agent/lookup`` hands out the boot's token once; every other agent call carries it in
``X-Agent-Token``. The lookup answers JSON, or with ``Accept: text/plain`` the same answer as ``key=value``
lines for the sh agent (:mod:`bmd.api.shell_text`). The token is then needed for: the disk image
(``GET /v1/agent/nodes/{node}/image``, Range supported), the config drive when the instance has one
(``GET /v1/agent/nodes/{node}/configdrive``, named ``config_drive_url`` in the lookup), progress
(``POST /v1/agent/nodes/{node}/heartbeat``), an inspection's report
(``POST /v1/agent/nodes/{node}/inspection``, the collector's JSON, ``inspection_url`` in the lookup; it
ends the inspect boot as the callback ends the others) and the callback
(``POST /v1/nodes/{node}/vendor_passthru/pass_deploy_info``, answered ``202`` at once: the report is stored
and the finish, disk boot and reboot, runs on as the node's conductor job). None of them takes the operators' bearer
token: the agent has only its own.
"""

from __future__ import annotations

from aiohttp import web

from bmd.api.app import ctx_of, json_response, parse_body, public
from bmd.api.body import read_json, takes
from bmd.api.forward import peer_of
from bmd.api.openapi import answers
from bmd.api.schemas import AgentHeartbeat, AgentLookup, DeployInfo
from bmd.api.shell_text import shell_lines, wants_shell_text
from bmd.api.views import AgentLookupAnswer, InspectionApplied, ProvisionStateView
from bmd.inspection.report import InspectionReport
from bmd.provision.agent import TOKEN_HEADER


def _token(request: web.Request) -> str | None:
    return request.headers.get(TOKEN_HEADER) or None


@public
@answers(200, AgentLookupAnswer)
@answers(200, media="text/plain", description="with Accept: text/plain, the same answer as key=value lines")
@takes(AgentLookup)
async def lookup(request: web.Request) -> web.Response:
    body = await parse_body(request, AgentLookup)
    peer = await peer_of(request)  # forwarded by another service: the agent's own address, as it said
    answer = await ctx_of(request).conductor.agent_lookup(body.node_uuid, body.mac, peer)
    if wants_shell_text(",".join(request.headers.getall("Accept", []))):
        return web.Response(text=shell_lines(answer), content_type="text/plain", headers={"Cache-Control": "no-store"})
    return json_response(answer)


@public
@answers(200, media="application/octet-stream", description="the disk image")
@answers(206, media="application/octet-stream")
@answers(416)
async def image(request: web.Request) -> web.StreamResponse:
    path = await ctx_of(request).conductor.agent_image(request.match_info["node"], _token(request))
    return web.FileResponse(path, headers={"Cache-Control": "no-store"})


@public
@answers(200, media="application/octet-stream", description="the config drive ISO")
@answers(206, media="application/octet-stream")
@answers(416)
async def configdrive(request: web.Request) -> web.StreamResponse:
    path = await ctx_of(request).conductor.agent_config_drive(request.match_info["node"], _token(request))
    return web.FileResponse(path, headers={"Cache-Control": "no-store", "Content-Type": "application/octet-stream"})


@public
@answers(202, ProvisionStateView)
@takes(AgentHeartbeat, required=False)
async def heartbeat(request: web.Request) -> web.Response:
    body = await parse_body(request, AgentHeartbeat) if request.can_read_body else AgentHeartbeat()
    state = await ctx_of(request).conductor.agent_heartbeat(request.match_info["node"], _token(request), body.message)
    return json_response({"provision_state": state}, status=202)


@public
@answers(202, ProvisionStateView)
@takes(DeployInfo)
async def pass_deploy_info(request: web.Request) -> web.Response:
    body = await parse_body(request, DeployInfo)
    conductor = ctx_of(request).conductor
    state = await conductor.pass_deploy_info(request.match_info["node"], _token(request), body.error, body.console)
    return json_response({"provision_state": state}, status=202)  # the finish runs on as the node's job


@public
@answers(200, InspectionApplied)
@takes(InspectionReport)
async def inspection(request: web.Request) -> web.Response:
    """The inspect agent's report: validated, stored and applied by the conductor (a report it cannot apply
    fails the inspection with the reason: 200 either way, the outcome in the answer)."""
    raw = await read_json(request)
    conductor = ctx_of(request).conductor
    state, applied = await conductor.agent_inspection(request.match_info["node"], _token(request), raw)
    return json_response({"provision_state": state, **applied})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/agent/lookup", lookup)
    r.add_get("/v1/agent/nodes/{node}/image", image)  # add_get also answers HEAD
    r.add_get("/v1/agent/nodes/{node}/configdrive", configdrive)  # the instance's config drive ISO
    r.add_post("/v1/agent/nodes/{node}/heartbeat", heartbeat)
    r.add_post("/v1/agent/nodes/{node}/inspection", inspection)
    r.add_post("/v1/nodes/{node}/vendor_passthru/pass_deploy_info", pass_deploy_info)
