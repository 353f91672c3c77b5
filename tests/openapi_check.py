"""Every answer a bmd server gives the test suite is checked against bmd's own OpenAPI document.

``tests/conftest.py`` patches ``aiohttp.ClientSession._request`` for every test (the ``openapi_answers``
autouse fixture), so whatever client a test uses (``TestClient``, a bare session, the agent simulator, the
lab's helpers) reports each answer here. An answer is bmd's when it carries ``X-Request-Id`` (the request
middleware sets it on every answer); answers of other servers (sushy-tools, image servers, a vif controller)
are left alone. The first bmd answer fetches the document from that server's ``/v1/openapi.json``.

For each answer: its route (the most literal path template that matches and has the method, as OpenAPI
resolves paths), its status (exact, then ``4XX``/``5XX``), its media type (declared for that status) and, for
JSON, its body (JSON Schema Draft 2020-12, what OpenAPI 3.1 uses, with the document's components). A route
or status the document does not declare is a failure: the spec cannot fall behind the code unnoticed. A path
or method no route has may answer any 4xx (404, 405, or the 401 of a missing token), with the Error schema;
any other answer to it is a failure.

A test that must make answers the document does not describe (none does yet) can opt out with
``@pytest.mark.no_openapi_check``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

# A longer list (a page of 1,000 nodes) is checked by its first and last SAMPLE items: they are made by the
# same code as the rest, and jsonschema takes about a millisecond per node (64 full pages: +14 s to a test).
LONG_LIST = 20
SAMPLE = 10


@dataclass
class Route:
    template: str
    regex: re.Pattern[str]
    literal: int  # how many characters are not parameters: the most literal match wins
    operations: dict[str, dict[str, Any]]


def _regex(template: str, item: dict[str, Any]) -> re.Pattern[str]:
    patterns: dict[str, str] = {}
    for op in item.values():
        for p in op.get("parameters", []):
            if p["in"] == "path":
                patterns[p["name"]] = p.get("x-bmd-pattern", "[^/]+")
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos : m.start()]) + f"(?:{patterns.get(m.group(1), '[^/]+')})"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]))


@dataclass
class SpecChecker:
    spec: dict[str, Any]
    routes: list[Route] = field(default_factory=list)
    _validators: dict[str, Draft202012Validator] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for template, item in self.spec["paths"].items():
            literal = len(re.sub(r"\{\w+\}", "", template))
            self.routes.append(Route(template, _regex(template, item), literal, item))
        self.routes.sort(key=lambda r: -r.literal)

    def route_of(self, method: str, path: str) -> Route | None:
        """The route answering ``method path`` (the most literal template that matches and has the method)."""
        for route in self.routes:
            if method.lower() in route.operations and route.regex.fullmatch(path):
                return route
        return None

    def problem(self, method: str, path: str, status: int, content_type: str, body: bytes) -> str | None:
        """Why this answer does not match the document, or None."""
        route = self.route_of(method, path)
        where = f"{method} {path} -> {status}"
        if route is None:
            # no route: the router's 404 or 405, or whatever 4xx the middlewares answer first (a 401 for no
            # token, a 400 for a NUL in the path), always the Error schema
            if 400 <= status < 500:
                return self._body_problem(where, {"$ref": "#/components/schemas/Error"}, content_type, body)
            return f"{where}: no route of the OpenAPI document answers {method} {path} (declare it: bmd/api/openapi.py)"
        responses = route.operations[method.lower()]["responses"]
        declared = responses.get(str(status)) or responses.get(f"{status // 100}XX") or responses.get("default")
        if declared is None:
            return (
                f"{where}: status {status} is not declared for {method} {route.template} "
                f"(declared: {', '.join(responses)}; add @answers({status}, ...) to its handler)"
            )
        content: dict[str, Any] = declared.get("content", {})
        media = content_type.split(";", 1)[0].strip().lower()
        if method == "HEAD" or status in (101, 204, 304) or (not content and not body):
            return None
        if not content:
            return f"{where}: a {media or 'body'} answer, but {method} {route.template} declares no body for {status}"
        if media == "application/json" and "application/json" in content:
            return self._body_problem(where, content["application/json"]["schema"], content_type, body)
        if media in content or "*/*" in content or f"{media.split('/')[0]}/*" in content:
            return None
        return f"{where}: media type {media!r} is not declared for {status} (declared: {', '.join(content)})"

    def _body_problem(self, where: str, schema: dict[str, Any], content_type: str, body: bytes) -> str | None:
        if not content_type.startswith("application/json"):
            return f"{where}: expected JSON, got {content_type!r}"
        try:
            data = json.loads(body)
        except ValueError as err:
            return f"{where}: the body is not JSON ({err})"
        errors = sorted(self._validator(schema).iter_errors(_shortened(data)), key=lambda e: list(e.path))
        if not errors:
            return None
        first = errors[0]
        at = "/".join(str(p) for p in first.absolute_path) or "(the body)"
        return f"{where}: at {at}: {first.message[:300]} (schema: {json.dumps(schema)}; {len(errors)} error(s))"

    def _validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            # the refs are "#/components/schemas/X": resolve them in a document that carries the components
            self._validators[key] = Draft202012Validator({**schema, "components": self.spec["components"]})
        return self._validators[key]


def _shortened(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _shortened(v) for k, v in data.items()}
    if isinstance(data, list) and len(data) > LONG_LIST:
        return [_shortened(v) for v in data[:SAMPLE] + data[-SAMPLE:]]
    if isinstance(data, list):
        return [_shortened(v) for v in data]
    return data
