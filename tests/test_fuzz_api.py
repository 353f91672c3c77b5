"""Fuzz every route of the real app: no input gives a 500, and every 4xx body is {"error", "message", "field"}.

Routes are enumerated from ``app.router.routes()``, so a route added later is fuzzed without touching this
file. A POST/PUT/PATCH route must declare its body model with ``@takes(Model)`` (bmd/api/body.py): bodies are
built from that same pydantic model (valid-looking values from its types, constraints and validators), then
broken (a field replaced by a hostile value, an unknown field), or replaced by hostile JSON (deep nesting,
4000-digit numbers, NaN, surrogates, non-UTF-8). Path segments and query strings are hostile too (``²``,
``\\u0661``, 2**64, NUL, long text), with and without a valid token. The server is the real app on 127.0.0.1 with a
real SQLite file; hardware routes reach the ``fake`` power driver.
"""

from __future__ import annotations

import asyncio
import json
import re
import types
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import aiohttp
import annotated_types as at
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from bmd.api import schemas
from bmd.api.app import create_app
from bmd.api.body import body_model_of
from bmd.config import DatabaseSettings
from bmd.db.engine import make_engine
from bmd.db.migrate import upgrade
from bmd.health import DB_PROBE
from bmd.service import open_context
from tests.conftest import make_settings, node_body

BODY_METHODS = ("POST", "PUT", "PATCH")
EXAMPLES = 40
NAMED_5XX = {502, 503, 504, 507}
ERROR_KEYS = {"error", "message", "field"}
SUCCESS_EXPECTED = (
    "POST /v1/nodes",
    "POST /v1/nodes/import",
    "PATCH /v1/nodes/{node}",
    "PUT /v1/nodes/{node}/states/power",
    "PUT /v1/nodes/{node}/maintenance",
    "POST /v1/flavors",
    "POST /v1/pxe_ips",
    "POST /v1/schedule",
)

# ---- bodies from the models -------------------------------------------------------------------------

GOOD_FOR_VALIDATOR: dict[Callable[..., Any], st.SearchStrategy[Any]] = {
    schemas.normalize_mac: st.from_regex(r"52:54:00:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}", fullmatch=True),
    schemas.check_uuid: st.uuids().map(str),
    schemas.check_name: st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
    schemas.check_ip: st.ip_addresses().map(str),
    schemas.check_flavor_name: st.sampled_from(["bm.fuzz", "bm.other"])
    | st.from_regex(r"bm\.[a-z]{1,8}", fullmatch=True),
    schemas.check_spec_key: st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True),
    schemas.check_extra_spec_key: st.from_regex(r"capabilities:[a-z]{1,8}|[a-z]{1,8}", fullmatch=True),
}
# fields whose valid values no type or validator spells (a driver is a registered name)
GOOD_FOR_FIELD: dict[str, st.SearchStrategy[Any]] = {"pm_driver": st.just("fake")}

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
hostile_values = (
    st.sampled_from(
        [
            2**64,
            -(2**63) - 1,
            1e308,
            -0.0,
            "",
            "²",
            "\u0661",
            "x" * 5000,
            "a\u202eb",
            "😀",
            [],
            {},
            [[[[[[[[[[[[1]]]]]]]]]]]],
            {"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}},
            True,
            None,
        ]
    )
    | json_values
)


def for_type(tp: Any, meta: tuple[Any, ...] = ()) -> st.SearchStrategy[Any]:
    """JSON-able values for a pydantic field type: mostly ones its constraints and validators accept."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return for_type(args[0], meta + tuple(args[1:]))
    for m in meta:
        if isinstance(m, AfterValidator) and m.func in GOOD_FOR_VALIDATOR:
            return GOOD_FOR_VALIDATOR[m.func]
        if isinstance(m, AfterValidator) and m.func is schemas.check_specs:
            values = st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=10)
            return st.dictionaries(GOOD_FOR_VALIDATOR[schemas.check_spec_key], values, max_size=3)
    if origin in (Union, types.UnionType):
        return st.one_of([for_type(a, meta) for a in args])
    if tp is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(for_type(args[0]) if args else json_values, max_size=3)
    if origin is dict:
        keys = for_type(args[0]) if args else st.text(max_size=8)
        return st.dictionaries(keys, for_type(args[1]) if args else json_scalars, max_size=3)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_bodies(tp)
    bounds = [c for m in meta for c in (m.metadata if isinstance(m, FieldInfo) else [m])]
    lo = next((c.ge for c in bounds if isinstance(c, at.Ge)), None)
    hi = next((c.le for c in bounds if isinstance(c, at.Le)), None)
    longest = next((c.max_length for c in bounds if isinstance(c, at.MaxLen)), 40)
    if tp is bool:
        return st.booleans()
    if tp is int:  # the bounds themselves, always: a column narrower than the schema shows there
        edges = [b for b in (lo, hi) if b is not None]
        return st.integers(min_value=lo, max_value=hi) | (st.sampled_from(edges) if edges else st.nothing())
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(min_size=1, max_size=min(longest or 40, 40))
    return json_values  # Any


def without_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return Union[tuple(args)] if len(args) > 1 else args[0]  # noqa: UP007
    return tp


def model_bodies(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    required = {}
    optional = {}
    for name, info in model.model_fields.items():
        annotation = without_none(info.annotation)  # null is a hostile value below, not a model-built one
        strategy = for_type(Annotated[annotation, *info.metadata] if info.metadata else annotation)
        if name in GOOD_FOR_FIELD:
            strategy = GOOD_FOR_FIELD[name] | strategy
        (required if info.is_required() else optional)[name] = strategy
    return st.fixed_dictionaries(required, optional=optional)


@st.composite
def broken_bodies(draw: st.DrawFn, model: type[BaseModel]) -> dict[str, Any]:
    body = draw(model_bodies(model))
    if draw(st.booleans()) and body:
        body[draw(st.sampled_from(sorted(body)))] = draw(hostile_values)
    else:
        body[draw(st.text(min_size=1, max_size=10))] = draw(hostile_values)
    return body


HOSTILE_RAW = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"value": ' + b"9" * 4400 + b"}",
    b'{"value": NaN}',
    b'{"value": Infinity, "cpus": -Infinity}',
    b'{"value": 1e999}',
    b'{"name": "\\ud800"}',
    b'{"name": "a\\u0000"}',
    b"\xff\xfe\x00{",
    b"",
    b"null",
    b"[]",
    b'"just a string"',
    b"{",
    b'{"a": 1, "a": 2}',
    '{"name": "n\u00e9\u4e2d"}'.encode(),
]


def bodies(model: type[BaseModel] | None) -> st.SearchStrategy[bytes | None]:
    raw = st.sampled_from(HOSTILE_RAW) | st.none()
    if model is None:
        return raw | json_values.map(lambda v: json.dumps(v).encode())
    encode: Callable[[Any], bytes] = lambda v: json.dumps(v).encode()  # noqa: E731
    return st.one_of(
        model_bodies(model).map(encode),
        model_bodies(model).map(encode),
        broken_bodies(model).map(encode),
        raw,
    )


# ---- paths, queries, headers ------------------------------------------------------------------------

HOSTILE_SEGMENTS = [
    "²",
    "\u0661",
    "1²",
    str(2**63),
    str(2**64),
    "9" * 40,
    "-1",
    "0",
    " 1",
    "..",
    "%00",
    "\u00e9",
    "x" * 1000,
]
QUERY_KEYS = ["limit", "marker", "deleted", "maintenance", "associated", "service_host", "provision_state", "zz"]
QUERY_VALUES = [
    "1",
    "2",
    "0",
    "-1",
    "²",
    "\u0661",
    str(2**63),
    "9" * 40,
    "true",
    "maybe",
    "",
    "\x00",
    "bm.fuzz",
    "x" * 300,
]


@dataclass
class Known:
    """Values that name existing rows, so the fuzz reaches past the 404s."""

    by_param: dict[str, list[str]] = field(default_factory=dict)

    def segment(self, name: str) -> st.SearchStrategy[str]:
        good = self.by_param.get(name, [])
        hostile = [st.sampled_from(HOSTILE_SEGMENTS), st.text(min_size=1, max_size=30)]
        return st.one_of(st.sampled_from(good), st.sampled_from(good), *hostile) if good else st.one_of(hostile)


def path_of(template: str, known: Known, friendly: bool = False) -> st.SearchStrategy[str]:
    names = re.findall(r"\{(\w+)[^}]*\}", template)

    @st.composite
    def build(draw: st.DrawFn) -> str:
        path = template
        for name in names:
            good = known.by_param.get(name)
            value = draw(st.sampled_from(good) if friendly and good else known.segment(name))
            path = re.sub(r"\{" + name + r"[^}]*\}", urllib.parse.quote(value, safe=""), path, count=1)
        return path

    return build()


@st.composite
def requests(
    draw: st.DrawFn, template: str, known: Known, model: type[BaseModel] | None, takes_body: bool
) -> tuple[str, dict[str, str], bytes | None, int]:
    """Half the examples are well-formed (rows that exist, the token, a body built from the model) so the
    fuzz reaches the handlers' success paths; the other half is hostile in every part."""
    if draw(st.booleans()):
        body = draw(model_bodies(model).map(lambda v: json.dumps(v).encode())) if model is not None else None
        return draw(path_of(template, known, friendly=True)), {}, body, 1
    body = draw(bodies(model)) if takes_body else None
    return draw(path_of(template, known)), draw(queries), body, draw(st.sampled_from([0, 1, 2]))


queries = st.dictionaries(st.sampled_from(QUERY_KEYS), st.sampled_from(QUERY_VALUES) | st.text(max_size=10), max_size=3)


@dataclass
class Harness:
    server: TestServer
    http: aiohttp.ClientSession
    token: str
    known: Known
    seen: dict[str, set[int]] = field(default_factory=dict)

    async def send(self, method: str, path: str, query: dict[str, str], body: bytes | None, auth: int) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth == 1:
            headers["Authorization"] = f"Bearer {self.token}"
        elif auth == 2:
            headers["Authorization"] = "Bearer wrong-token"
        url = self.server.make_url(path).with_query(query) if query else self.server.make_url(path)
        async with self.http.request(method, url, data=body, headers=headers) as resp:
            content_type = resp.headers.get("Content-Type", "")
            if method != "HEAD" and content_type.startswith("text/event-stream"):  # never ends: 1st event
                return resp.status, content_type, await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
            return resp.status, content_type, await resp.read()


async def start(tmp_path: Path, db_url: str | None = None) -> tuple[Harness, Any, web.Application]:
    if db_url is not None:
        engine = make_engine(DatabaseSettings(url=db_url))
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
    cm = open_context(make_settings(tmp_path, db_url))
    ctx = await cm.__aenter__()
    app = create_app(ctx)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    harness = Harness(server, aiohttp.ClientSession(), ctx.api_token, Known())
    await ctx.runner.run_pass(DB_PROBE)
    return harness, cm, app


async def seed(harness: Harness, index: int) -> None:
    """Fresh rows for the next route (an earlier route may have deleted the last ones)."""
    http, url = harness.http, harness.server.make_url
    auth = {"Authorization": f"Bearer {harness.token}"}
    node = await (await http.post(url("/v1/nodes"), json=node_body(1000 + index), headers=auth)).json()
    flavor = {"name": "bm.fuzz", "ram": 1024, "vcpus": 1, "disk": 10, "extra_specs": {"k": "v"}}
    await http.post(url("/v1/flavors"), json=flavor, headers=auth)  # 409 when it is still there
    ip = {
        "address": f"10.9.{index // 200}.{index % 200 + 10}",
        "server_address": f"10.8.{index // 200}.{index % 200 + 10}",
    }
    pxe = await (await http.post(url("/v1/pxe_ips"), json=ip, headers=auth)).json()
    harness.known.by_param = {
        "node": [str(node["id"]), node["uuid"], node["name"]],
        "iface": [node["interfaces"][0]["address"], str(node["interfaces"][0]["id"])],
        "id": [str(pxe["id"])],
        "name": ["bm.fuzz"],
        "key": ["k", "capabilities:cpu_arch", "location"],
        "uuid": [node["uuid"]],
        "path": ["x"],
    }


def check_response(method: str, path: str, status: int, content_type: str, raw: bytes) -> None:
    assert status != 500, raw[:500]
    assert status < 500 or status in NAMED_5XX, (status, raw[:500])
    if method == "HEAD" or (path in ("/healthz", "/readyz") and status == 503):  # health reports: own bodies
        return
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, raw[:200])
        body = json.loads(raw)
        assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
        assert isinstance(body["error"], str) and isinstance(body["message"], str), body
    elif content_type.startswith("application/json") and raw:

        def refuse(name: str) -> Any:
            raise AssertionError(f"response holds {name}: not strict JSON")

        json.loads(raw, parse_constant=refuse)


def route_table(app: web.Application) -> list[tuple[str, str, Any]]:
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path") or (route.resource.canonical if route.resource else "")
        out.append((route.method, template, route.handler))
    return sorted(set(out), key=lambda r: (r[1], r[0]))


def test_every_body_route_declares_its_model(tmp_path: Path, db_file: Path) -> None:
    """A POST/PUT/PATCH handler without ``@takes(Model)`` (or ``@takes(None)``) fails here, naming it."""

    async def table() -> list[tuple[str, str, Any]]:
        async with open_context(make_settings(tmp_path)) as ctx:
            return route_table(create_app(ctx))

    missing = []
    for method, template, handler in asyncio.run(table()):
        if method in BODY_METHODS:
            try:
                body_model_of(handler)
            except AttributeError:
                missing.append(f"{method} {template} ({handler.__module__}.{handler.__qualname__})")
    assert not missing, "decorate these handlers with @takes(Model) from bmd.api.body: " + ", ".join(missing)


def test_fuzz_every_route(tmp_path: Path, db_file: Path) -> None:
    fuzz_app(tmp_path, None, EXAMPLES)


@pytest.mark.postgres
def test_fuzz_every_route_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """PostgreSQL refuses what SQLite stores (out-of-range integers, NUL): the same fuzz, fewer examples."""
    fuzz_app(tmp_path, postgres_url, EXAMPLES // 3)


def fuzz_app(tmp_path: Path, db_url: str | None, examples: int) -> None:
    with asyncio.Runner() as runner:
        harness, cm, app = runner.run(start(tmp_path, db_url))
        try:
            routes = route_table(app)
            assert len(routes) > 20
            for index, (method, template, handler) in enumerate(routes):
                model = body_model_of(handler) if method in BODY_METHODS else None
                runner.run(seed(harness, index))
                fuzz_route(runner, harness, method, template, model, examples)
            # the bodies built from the models are valid often enough to reach the handlers' success paths
            reached = {route for route, statuses in harness.seen.items() if any(200 <= s < 300 for s in statuses)}
            for route in SUCCESS_EXPECTED:
                assert route in reached, (route, sorted(harness.seen.get(route, ())))
        finally:
            runner.run(harness.http.close())
            runner.run(harness.server.close())
            runner.run(cm.__aexit__(None, None, None))


def fuzz_route(
    runner: asyncio.Runner,
    harness: Harness,
    method: str,
    template: str,
    model: type[BaseModel] | None,
    examples: int,
) -> None:
    @settings(
        max_examples=examples if method != "HEAD" else 5,
        deadline=None,
        database=None,
        derandomize=True,  # CI runs the same examples every time; a failure reproduces exactly
        suppress_health_check=list(HealthCheck),
    )
    @given(req=requests(template, harness.known, model if method in BODY_METHODS else None, method in BODY_METHODS))
    def one(req: tuple[str, dict[str, str], bytes | None, int]) -> None:
        path, query, body, auth = req
        status, content_type, raw = runner.run(harness.send(method, path, query, body, auth))
        harness.seen.setdefault(f"{method} {template}", set()).add(status)
        check_response(method, path, status, content_type, raw)

    one()
