"""The OpenAPI 3.1 document of the API, built from the router and the same pydantic models that validate.

Nothing here is written by hand per route: the spec walks ``app.router.routes()`` (every route the app
answers, sub-applications included) and reads, from each handler,

- its request body: the model ``@takes(Model)`` registered (bmd/api/body.py), the one ``parse_body`` validates
  with, so the spec's body schema is the validator's own;
- its answers: ``@answers(status, Model)`` for JSON (a model of bmd/api/views.py), ``@answers(status,
  media="text/plain")`` for other bodies, ``@answers(204)`` for none. Every operation also answers ``4XX``
  and ``5XX`` with the one ``Error`` schema, unless it declares a status of its own;
- its query parameters: ``@query(Query(...), LIMIT, ...)``;
- its tag: the module's name (``OPENAPI_TAG`` in the module overrides it), described by the module's
  docstring; its summary and description: the handler's docstring.

Adding a route: decorate its handler with ``@answers`` (and ``@takes``/``@query`` as it reads them).
A route without ``@answers`` is refused by ``build_spec(app)`` (strict, what the tests use) with its method,
path and handler named; the served document (``strict=False``) leaves it out and logs
``openapi_route_undeclared``, and the suite's response check then fails on the first answer from it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

import bmd
from bmd.api.body import BODY_MODEL_ATTR, BODY_REQUIRED_ATTR
from bmd.api.views import Error

log = structlog.get_logger(__name__)

OPENAPI_VERSION = "3.1.0"
ANSWERS_ATTR = "_bmd_answers"
QUERY_ATTR = "_bmd_query"
BODY_METHODS = ("POST", "PUT", "PATCH")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{(\w+)\}")
_DEFAULT_SEGMENT = "[^{}/]+"
PATH_PARAMS = {
    "node": "the node's id (ASCII digits), uuid or name",
    "iface": "the interface's id or MAC address",
    "key": "the capability or extra spec key",
    "name": "the flavor's name",
    "uuid": "the instance's uuid",
    "id": "the PXE address's id or its IP address",
    "path": "a file's path under deploy.http_root",
}
H = TypeVar("H", bound=Callable[..., Any])
OPEN_ROUTES = ("/healthz", "/livez", "/readyz", "/metrics", "/", "/dashboard/{file}")  # bmd/api/auth.py's is_open


class UndeclaredRoutes(Exception):
    """Routes whose handlers say nothing of their answers (``@answers``) or, for a body method, their body."""


@dataclass(frozen=True)
class Answer:
    status: int
    model: type[BaseModel] | None = None
    media: str | None = None  # a body that is not JSON: its media type (range allowed: "*/*")
    description: str = ""


@dataclass(frozen=True)
class Query:
    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


def query_int(name: str, description: str, minimum: int = 0) -> Query:
    return Query(name, {"type": "integer", "minimum": minimum}, description)


def query_bool(name: str, description: str) -> Query:
    return Query(name, {"type": "boolean"}, description + " (true, false, 1 or 0)")


def query_str(name: str, description: str, **schema: Any) -> Query:
    return Query(name, {"type": "string", **schema}, description)


LIMIT = query_int("limit", "items per page; more than api.max_page_size is clamped to it", minimum=1)
ID_MARKER = query_int("marker", "the `next` of the previous page")
NAME_MARKER = query_str("marker", "the `next` of the previous page", minLength=1, maxLength=255)


def answers(
    status: int, model: type[BaseModel] | None = None, *, media: str | None = None, description: str = ""
) -> Callable[[H], H]:
    """Declare one status the handler answers: a JSON body described by ``model``, a body of ``media``, or
    none (both unset). Stack one per status."""

    def mark(handler: H) -> H:
        declared: dict[int, tuple[Answer, ...]] = dict(getattr(handler, ANSWERS_ATTR, {}))
        declared[status] = (Answer(status, model, media, description), *declared.get(status, ()))
        setattr(handler, ANSWERS_ATTR, declared)
        return handler

    return mark


def query(*params: Query) -> Callable[[H], H]:
    """Declare the query parameters the handler reads."""

    def mark(handler: H) -> H:
        setattr(handler, QUERY_ATTR, (*getattr(handler, QUERY_ATTR, ()), *params))
        return handler

    return mark


@dataclass
class _Route:
    method: str
    template: str
    pattern: str
    handler: Any
    open: bool = False  # served by a sub-application open to anyone (auth.OPEN_APP: /images/)

    @property
    def label(self) -> str:
        return f"{self.method} {self.template} ({self.handler.__module__}.{self.handler.__qualname__})"


def routes_of(app: web.Application) -> list[_Route]:
    """Every (method, path template) the app answers, sub-applications included; HEAD of a GET is folded
    into the GET (aiohttp's ``add_get`` adds it) and described from it."""
    from bmd.api.auth import OPEN_APP  # here: bmd.api.auth imports the app module, which must not import this

    open_resources = {
        id(sub_resource)
        for resource in app.router.resources()
        if isinstance(resource, web.PrefixedSubAppResource) and resource._app.get(OPEN_APP, False)
        for sub_resource in resource._app.router.resources()
    }
    found: dict[tuple[str, str], _Route] = {}
    for route in app.router.routes():
        if route.resource is None:
            continue
        info = route.resource.get_info()
        template = info.get("formatter") or info.get("path") or route.resource.canonical
        pattern = info["pattern"].pattern if "pattern" in info else re.escape(template)
        is_open = id(route.resource) in open_resources
        found[(route.method, template)] = _Route(route.method, template, pattern, route.handler, is_open)
    return sorted(found.values(), key=lambda r: (r.template, r.method))


@dataclass
class _Schemas:
    """Collects the models of every operation, then names them once into components/schemas."""

    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = field(default_factory=list)

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> tuple[type[BaseModel], JsonSchemaMode]:
        key = (model, mode)
        if key not in self.wanted:
            self.wanted.append(key)
        return key

    def resolve(self) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
        by_key, defs = models_json_schema(self.wanted, ref_template=REF)
        return dict(by_key), defs.get("$defs", {})


def _summary(handler: Any, method: str, template: str) -> tuple[str, str]:
    doc = (handler.__doc__ or "").strip()
    if not doc:  # the handler's name says it: "delete_interface" -> "delete interface"
        return handler.__name__.strip("_").replace("_", " "), ""
    first = " ".join(re.split(r"\.\s|\n\n", doc, maxsplit=1)[0].split()).rstrip(".")
    if len(first) > 100:  # a long first sentence: its first words, the whole is the description
        first = first[:100].rsplit(" ", 1)[0] + " …"
    whole = " ".join(doc.split())
    return first, "" if whole.rstrip(".") == first else whole


def _tag(handler: Any) -> tuple[str, str]:
    module = sys.modules.get(handler.__module__)
    name = getattr(module, "OPENAPI_TAG", handler.__module__.rsplit(".", 1)[-1])
    doc = (getattr(module, "__doc__", None) or "").strip().split("\n\n", 1)[0]
    return name, " ".join(doc.split())


def _parameters(route: _Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in _PARAM.findall(route.template):
        param: dict[str, Any] = {
            "name": name,
            "in": "path",
            "required": True,
            "description": PATH_PARAMS.get(name, name),
            "schema": {"type": "string"},
        }
        segment = re.search(rf"\(\?P<{name}>(.*?)\)(?:/|$)", route.pattern)
        if segment and segment.group(1) != _DEFAULT_SEGMENT:
            param["x-bmd-pattern"] = segment.group(1)  # e.g. ".+": this parameter may hold slashes
        params.append(param)
    for q in getattr(route.handler, QUERY_ATTR, ()):
        params.append(
            {"name": q.name, "in": "query", "required": q.required, "description": q.description, "schema": q.schema}
        )
    return params


def _operation(route: _Route, schemas: _Schemas, head: bool) -> dict[str, Any]:
    handler = route.handler
    tag, _ = _tag(handler)
    summary, description = _summary(handler, route.method, route.template)
    op: dict[str, Any] = {
        "operationId": f"{tag}.{handler.__name__.lstrip('_')}" + ("_head" if head else ""),
        "tags": [tag],
        "summary": ("headers only: " if head else "") + summary,
    }
    if description:
        op["description"] = description
    params = _parameters(route)
    if params:
        op["parameters"] = params
    if route.method in BODY_METHODS:
        model = getattr(handler, BODY_MODEL_ATTR)
        if model is not None:
            op["requestBody"] = {
                "required": getattr(handler, BODY_REQUIRED_ATTR, True),
                "content": {"application/json": {"schema": schemas.ref(model, "validation")}},
            }
    responses: dict[str, Any] = {}
    for status, alternatives in sorted(getattr(handler, ANSWERS_ATTR).items()):
        said = [a.description for a in alternatives if a.description]
        entry: dict[str, Any] = {"description": "; ".join(said) or _REASONS.get(status, str(status))}
        content: dict[str, Any] = {}
        for answer in alternatives:
            if answer.model is not None:
                content["application/json"] = {"schema": schemas.ref(answer.model, "serialization")}
            elif answer.media is not None:  # not described further: JSON of no model of ours, text, bytes
                kind = "object" if answer.media == "application/json" else "string"
                content[answer.media] = {"schema": {"type": kind}}
        if content and not head:
            entry["content"] = content
        responses[str(status)] = entry
    for series in ("4XX", "5XX"):
        content = {} if head else {"content": {"application/json": {"schema": schemas.ref(Error, "serialization")}}}
        responses[series] = {"description": "an error: {error, message, field}", **content}
    op["responses"] = responses
    role = _role(route)
    op["x-bmd-role"] = role or "none"
    if role == "reader":  # a read: no token when api.anonymous_read is true
        op["security"] = [{}, {"bearer": []}]
    elif role is not None:
        op["security"] = [{"bearer": []}]
    return op


def _role(route: _Route) -> str | None:
    """The least role the route needs, as bmd/api/auth.py's ``needed_role`` decides it (None: anyone; a
    change there is a change here). ``/metrics`` is open unless ``metrics.token_required``."""
    if route.open or getattr(route.handler, "_bmd_public", False) or route.template in OPEN_ROUTES:
        return None
    if route.template == "/v1/tokens" or route.template.startswith("/v1/tokens/"):
        return "admin"
    return "reader" if route.method in SAFE_METHODS else "operator"


def _missing(route: _Route) -> str | None:
    if not hasattr(route.handler, ANSWERS_ATTR):
        return f"{route.label}: declare its answers with @answers(status, Model) from bmd.api.openapi"
    if route.method in BODY_METHODS and not hasattr(route.handler, BODY_MODEL_ATTR):
        return f"{route.label}: declare its body with @takes(Model) from bmd.api.body"
    return None


def _declared(routes: list[_Route], strict: bool) -> Iterator[_Route]:
    problems = [(route, problem) for route in routes if (problem := _missing(route))]
    if strict and problems:
        raise UndeclaredRoutes("; ".join(problem for _, problem in problems))
    for route, problem in problems:
        log.warning("openapi_route_undeclared", route=f"{route.method} {route.template}", problem=problem)
    skipped = {id(route) for route, _ in problems}
    yield from (route for route in routes if id(route) not in skipped)


def build_spec(app: web.Application, *, strict: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route ``app`` answers (see the module docstring)."""
    routes = routes_of(app)
    gets = {r.template for r in routes if r.method == "GET"}
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, str] = {}
    for route in _declared(routes, strict):
        head = route.method == "HEAD"
        if head and route.template in gets:
            source = next(r for r in routes if r.template == route.template and r.method == "GET")
            route = _Route("HEAD", route.template, route.pattern, source.handler, route.open)
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route, schemas, head)
        name, doc = _tag(route.handler)
        tags.setdefault(name, doc)
    by_key, defs = schemas.resolve()
    for item in paths.values():
        for op in item.values():
            _place_refs(op, by_key)
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "bmd",
            "version": bmd.__version__,
            "description": "The bare-metal management daemon's HTTP API. Errors are always "
            '`{"error": code, "message": text, "field": name or null}`. Lists page by keyset: '
            "`?limit=` and `?marker=` (the `next` of the previous page).",
        },
        "tags": [{"name": name, "description": doc} for name, doc in sorted(tags.items())],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(defs.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the token of api.token_file or a named token (bmd token create NAME --role "
                    "ROLE); each operation's x-bmd-role is the least role it needs",
                }
            },
        },
    }


def _place_refs(node: Any, by_key: dict[Any, dict[str, Any]]) -> None:
    """Swap the (model, mode) placeholders left by ``_operation`` for their schemas (refs into components)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, tuple):
                node[key] = by_key[value]
            else:
                _place_refs(value, by_key)
    elif isinstance(node, list):
        for item in node:
            _place_refs(item, by_key)


_REASONS: dict[int, str] = {
    101: "switching protocols: the websocket is open",
    200: "OK",
    201: "created",
    202: "accepted: the work goes on",
    204: "done; no body",
    206: "partial content (Range)",
    304: "not modified (If-Modified-Since)",
    416: "range not satisfiable",
    503: "failing",
}
