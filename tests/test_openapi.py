"""The OpenAPI document: valid OpenAPI 3.1, every route of the router in it, request schemas that are the
validators' own models, served at /v1/openapi.json and as /docs over real HTTP; and the suite-wide answer
check (tests/openapi_check.py, on for every test) fails on what the document does not declare."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
from structlog.testing import capture_logs

from bmd.api.app import create_app, json_response
from bmd.api.body import body_model_of
from bmd.api.openapi import REF, UndeclaredRoutes, answers, build_spec
from bmd.api.views import NodeView
from bmd.context import AppContext
from tests.conftest import node_body
from tests.openapi_check import SpecChecker

METHODS = ("get", "head", "post", "put", "patch", "delete")


@pytest.fixture
def app(ctx: AppContext) -> web.Application:
    return create_app(ctx)


@pytest.fixture
def spec(app: web.Application) -> dict[str, Any]:
    return build_spec(app)


def router_table(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route, read from aiohttp directly (not through bmd.api.openapi)."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        out.add((route.method.lower(), info.get("formatter") or info["path"]))
    return out


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec, cls=OpenAPIV31SpecValidator)  # raises, naming the part, when it is not


def test_every_route_of_the_router_is_in_it(app: web.Application, spec: dict[str, Any]) -> None:
    table = router_table(app)
    assert len(table) > 60  # GET and HEAD of each read, and the rest: the whole API, not a sample
    in_spec = {(method, path) for path, item in spec["paths"].items() for method in item if method in METHODS}
    assert table == in_spec
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            assert {"4XX", "5XX"} <= set(op["responses"]), (method, path)
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == set(re.findall(r"\{(\w+)\}", path)), (method, path)


def test_request_bodies_are_the_validating_models(app: web.Application, spec: dict[str, Any]) -> None:
    """The body schema of every body route is its @takes model's own JSON schema: what parse_body validates."""
    components = spec["components"]["schemas"]
    seen = 0
    for route in app.router.routes():
        if route.method not in ("POST", "PUT", "PATCH"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info["path"]
        model = body_model_of(route.handler)
        op = spec["paths"][path][route.method.lower()]
        if model is None:
            assert "requestBody" not in op, path
            continue
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        own = model.model_json_schema(ref_template=REF, mode="validation")
        own.pop("$defs", None)
        assert components[ref.rsplit("/", 1)[-1]] == own, path
        seen += 1
    assert seen >= 15


def test_every_error_is_the_error_schema(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"error", "message", "field"} and error["additionalProperties"] is False
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "head":
                continue
            for series in ("4XX", "5XX"):
                schema = op["responses"][series]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)


def test_non_json_routes_say_their_media_types(spec: dict[str, Any]) -> None:
    def media(path: str, method: str = "get", status: str = "200") -> set[str]:
        return set(spec["paths"][path][method]["responses"][status].get("content", {}))

    assert media("/metrics") == {"text/plain"}
    assert media("/docs") == {"text/html"}
    assert media("/v1/nodes/{node}/console-log") == {"text/plain"}
    assert media("/v1/agent/nodes/{node}/image") == {"application/octet-stream"}
    assert media("/v1/agent/nodes/{node}/image", status="206") == {"application/octet-stream"}
    assert media("/v1/agent/lookup", "post") == {"application/json", "text/plain"}
    assert media("/images/{path}") == {"*/*"}
    assert media("/v1/events/stream") == {"text/event-stream"}
    assert media("/") == {"text/html"} and media("/dashboard/{file}") == {"text/javascript", "text/css"}
    assert "101" in spec["paths"]["/v1/nodes/{node}/console"]["get"]["responses"]
    image_path = spec["paths"]["/images/{path}"]["get"]["parameters"][0]
    assert image_path["x-bmd-pattern"] == ".+"  # a file path holds slashes: the checker matches it so


def test_a_route_without_declarations_is_refused_naming_it(ctx: AppContext) -> None:
    async def undeclared(request: web.Request) -> web.Response:
        return json_response({})

    app = create_app(ctx)
    app.router.add_get("/v1/not-declared", undeclared)
    app.router.add_post("/v1/no-body-model", answers(200)(undeclared_post))
    with pytest.raises(UndeclaredRoutes) as err:
        build_spec(app)
    text = str(err.value)
    assert "GET /v1/not-declared (tests.test_openapi" in text and "@answers(status, Model)" in text
    assert "POST /v1/no-body-model" in text and "@takes(Model)" in text
    with capture_logs() as logs:
        served = build_spec(app, strict=False)
    assert "/v1/not-declared" not in served["paths"] and "/v1/nodes" in served["paths"]
    assert {e["route"] for e in logs if e["event"] == "openapi_route_undeclared"} >= {"GET /v1/not-declared"}


async def undeclared_post(request: web.Request) -> web.Response:
    return json_response({})


def test_the_answer_check_refuses_what_is_not_declared(spec: dict[str, Any]) -> None:
    check = SpecChecker(spec)
    json_type = "application/json; charset=utf-8"
    ok = b'{"error": "not_found", "message": "node 7 not found", "field": null}'
    assert check.problem("GET", "/v1/nodes/7", 404, json_type, ok) is None
    assert check.problem("POST", "/v1/nodes/import", 400, json_type, ok) is None  # the literal path wins
    assert check.problem("GET", "/v1/nowhere", 404, json_type, ok) is None  # no route: a plain 404
    assert check.problem("PATCH", "/v1/nowhere", 401, json_type, ok) is None  # or the token check's 401
    assert check.problem("GET", "/images/pxelinux.cfg/01-52-54-00", 200, "text/plain", b"?") is None
    problems = {
        "undeclared status": check.problem("GET", "/v1/nodes/7", 201, json_type, b"{}"),
        "undeclared route": check.problem("GET", "/v1/nowhere", 200, json_type, b"{}"),
        "undeclared method": check.problem("PUT", "/v1/nodes", 200, json_type, b"{}"),
        "error with a 4th key": check.problem("GET", "/v1/nodes/7", 404, json_type, ok[:-1] + b', "x": 1}'),
        "a node without its uuid": check.problem("GET", "/v1/nodes/7", 200, json_type, b'{"id": 7}'),
        "undeclared media type": check.problem("GET", "/metrics", 200, "application/json", b"{}"),
        "a body where none is declared": check.problem("GET", "/v1/agent/nodes/1/image", 416, "text/plain", b"?"),
    }
    assert all(problems.values()), problems
    assert "status 201 is not declared for GET /v1/nodes/{node}" in str(problems["undeclared status"])
    assert "'uuid' is a required property" in str(problems["a node without its uuid"])


async def test_the_answer_check_is_on_for_every_test(ctx: AppContext, openapi_answers: list[str]) -> None:
    """An answer from a route the document leaves out reaches the suite's check (and would fail this test at
    teardown: the list is cleared here once seen)."""

    async def undeclared(request: web.Request) -> web.Response:
        return json_response({"hello": 1})

    app = create_app(ctx)
    app.router.add_get("/v1/not-declared", undeclared)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        assert (await client.get("/v1/nodes")).status == 200
        assert openapi_answers == []
        assert (await client.get("/v1/not-declared")).status == 200
    assert len(openapi_answers) == 1 and "no route of the OpenAPI document answers GET" in openapi_answers[0]
    openapi_answers.clear()


async def test_served_over_http(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    resp = await client.get("/v1/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    served = await resp.json()
    validate(served, cls=OpenAPIV31SpecValidator)
    assert served == build_spec(client.server.app)  # type: ignore[attr-defined]
    # the docs page: the same document, readable, self-contained
    assert (await client.post("/v1/nodes", json=node_body(1), headers=auth)).status == 201
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    for tag in served["tags"]:
        assert f"id=tag-{tag['name']}>" in page
    for path, item in served["paths"].items():
        for method, op in item.items():
            if method == "head":  # said on its GET
                assert "(and HEAD: the same headers, no body)" in page.split(f"id={item['get']['operationId']}>")[1]
                continue
            assert f"id={op['operationId']}>" in page, (method, path)
    operations = sum(len([m for m in item if m != "head"]) for item in served["paths"].values())
    assert page.count("<details class=op") == operations
    for name, schema in served["components"]["schemas"].items():
        assert f"id=schema-{name}>" in page
        for field in schema.get("properties", {}):
            assert f"<code>{field}</code>" in page, (name, field)
    assert '<a href="#schema-NodeCreate">NodeCreate</a>' in page  # a body links to its schema
    assert "<script" not in page and "src=" not in page and "https://" not in page  # nothing from elsewhere
    assert (await client.head("/docs")).status == 200


def test_response_models_are_closed(spec: dict[str, Any]) -> None:
    """A key added to an answer but not to its model fails the suite's check: models are closed."""
    assert spec["components"]["schemas"]["NodeView"]["additionalProperties"] is False
    assert set(spec["components"]["schemas"]["NodeView"]["properties"]) >= set(NodeView.model_fields)


def test_each_operation_names_the_least_role_auth_asks_for(spec: dict[str, Any]) -> None:
    def role(path: str, method: str = "get") -> str:
        return str(spec["paths"][path][method]["x-bmd-role"])

    assert [role("/healthz"), role("/metrics"), role("/images/{path}"), role("/docs")] == ["none"] * 4
    assert role("/") == "none" and role("/dashboard/{file}") == "none" and role("/v1/events/stream") == "reader"
    assert role("/v1/agent/lookup", "post") == "none" and role("/v1/openapi.json") == "none"
    assert role("/v1/nodes") == "reader" and spec["paths"]["/v1/nodes"]["get"]["security"] == [{}, {"bearer": []}]
    assert role("/v1/nodes", "post") == "operator" and spec["paths"]["/v1/nodes"]["post"]["security"] == [
        {"bearer": []}
    ]
    assert role("/v1/tokens") == "admin" and role("/v1/tokens/{name}", "delete") == "admin"


async def test_the_cli_only_routes_answer_as_declared(
    client: TestClient[Any, Any], auth: dict[str, str], openapi_answers: list[str]
) -> None:
    """The CLI's tests call through urllib, which the suite's check does not see: these routes are called here
    over aiohttp, so their answers are checked too."""
    node = await (await client.post("/v1/nodes", json=node_body(3), headers=auth)).json()
    mac = node["interfaces"][0]["address"]
    listed = await client.get("/v1/interfaces", params={"node": node["name"], "address": mac}, headers=auth)
    assert listed.status == 200 and [i["address"] for i in (await listed.json())["interfaces"]] == [mac]
    path = f"/v1/nodes/{node['id']}/interfaces/{mac}"
    patched = await client.patch(path, json={"datapath_id": "0x1", "port_no": 7}, headers=auth)
    assert patched.status == 200 and (await patched.json())["port_no"] == 7
    ip = {"address": "10.1.0.5", "server_address": "10.1.0.1"}
    assert (await client.post("/v1/pxe_ips", json=ip, headers=auth)).status == 201
    assert (await client.delete("/v1/pxe_ips/10.1.0.5", headers=auth)).status == 204
    maintenance = {"reason": "a history entry"}
    assert (await client.put(f"/v1/nodes/{node['id']}/maintenance", json=maintenance, headers=auth)).status == 200
    events = await client.get(f"/v1/nodes/{node['id']}/events", headers=auth)
    assert events.status == 200 and (await events.json())["events"]
    assert openapi_answers == []  # checked as they came: every one matched the document
