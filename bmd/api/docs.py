"""``GET /v1/openapi.json`` (the OpenAPI 3.1 document, bmd/api/openapi.py) and ``GET /docs``, the same
document as one self-contained HTML page. Both are open to anyone (``@public``), as the source is.

The page is rendered here, on the server, from the document itself: no script, no stylesheet or font from
elsewhere (a data centre's management network is often offline) and no build step. Operations are grouped
by tag; each shows its parameters, its request body and its answers by status, with links to the schemas,
which are listed at the end, one table of fields each.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from aiohttp import web

from bmd.api.app import public
from bmd.api.openapi import answers, build_spec

# filled on first use (the router is frozen by then); a dict set at setup, as a started app's state is frozen
_BUILT: web.AppKey[dict[str, Any]] = web.AppKey("openapi_built", dict)
_METHODS = ("get", "head", "post", "put", "patch", "delete")
_CONSTRAINTS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "pattern",
    "format",
    "default",
)
_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:1rem 2rem;color:#1d2430}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #d6dbe3;padding-top:1rem}
code,.path{font-family:ui-monospace,monospace}
details.op{border:1px solid #d6dbe3;border-radius:6px;margin:.4rem 0;padding:.3rem .6rem}
details.op>summary{cursor:pointer}.m{display:inline-block;min-width:4.2rem;font-weight:700;text-transform:uppercase}
.get,.head{color:#1565c0}.post{color:#2e7d32}.put,.patch{color:#b26a00}.delete{color:#c62828}
table{border-collapse:collapse;margin:.3rem 0 .8rem}
td,th{border:1px solid #e1e5eb;padding:.15rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8}.c{color:#5b6472;font-size:.9em}nav a{margin-right:.8rem}
"""


def _spec(request: web.Request) -> dict[str, Any]:
    built = request.app[_BUILT]
    if "spec" not in built:
        built["spec"] = build_spec(request.app, strict=False)
    spec: dict[str, Any] = built["spec"]
    return spec


@public  # open whatever api.anonymous_read says: the document holds what the source says, no secret
@answers(200, media="application/json", description="the OpenAPI 3.1 document of this API")
async def openapi_json(request: web.Request) -> web.Response:
    """This API's OpenAPI 3.1 document, built from its router and its pydantic models."""
    return web.json_response(_spec(request), dumps=lambda data: json.dumps(data, indent=1))


@public
@answers(200, media="text/html", description="the API reference, one self-contained page")
async def docs_page(request: web.Request) -> web.Response:
    """The API reference as HTML, rendered from the OpenAPI document."""
    built = request.app[_BUILT]
    if "page" not in built:
        built["page"] = render_page(_spec(request))
    return web.Response(text=built["page"], content_type="text/html", charset="utf-8")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _prose(text: Any) -> str:
    """Docstring text as HTML: escaped, with its ``code`` and `code` spans set as code."""
    return re.sub(r"``?([^`]+)``?", r"<code>\1</code>", _e(text))


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def type_of(schema: dict[str, Any]) -> str:
    """A schema as one line of HTML: ``string``, ``array of <a>Node</a>``, ``integer | null``..."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return " | ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return (" &amp; " if key == "allOf" else " | ").join(type_of(s) for s in schema[key])
    kind = schema.get("type")
    if kind == "array":
        return "array of " + type_of(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict) and "properties" not in schema:
        return "object of " + type_of(schema["additionalProperties"])
    if isinstance(kind, list):
        return " | ".join(_e(k) for k in kind)
    return _e(kind or "any")


def _constraints(schema: dict[str, Any]) -> str:
    said = [f"{k}: <code>{_e(json.dumps(schema[k]))}</code>" for k in _CONSTRAINTS if k in schema]
    return ", ".join(said)


def _fields_table(schema: dict[str, Any]) -> str:
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        return f"<p>{type_of(schema)} {_constraints(schema)}</p>"
    required = set(schema.get("required", ()))
    rows = "".join(
        f"<tr><td><code>{_e(name)}</code>{' <b>*</b>' if name in required else ''}</td><td>{type_of(prop)}</td>"
        f"<td>{_prose(prop.get('description', ''))} <span class=c>{_constraints(prop)}</span></td></tr>"
        for name, prop in props.items()
    )
    extra = schema.get("additionalProperties")
    note = "" if extra is False else "<p class=c>other keys are allowed</p>"
    return f"<table><tr><th>field</th><th>type</th><th></th></tr>{rows}</table>{note}"


def _operation(method: str, path: str, op: dict[str, Any], with_head: bool) -> str:
    parts = [f"<details class=op id={_e(op['operationId'])}><summary><span class='m {method}'>{method}</span> "]
    parts.append(f"<span class=path>{_e(path)}</span> — {_prose(op.get('summary', ''))}")
    if method == "get" and with_head:
        parts.append(" <span class=c>(and HEAD: the same headers, no body)</span>")
    role = op.get("x-bmd-role", "none")
    if role != "none":
        unless = " unless api.anonymous_read" if role == "reader" else ""
        parts.append(f" <span class=c>(token: {_e(role)} or above{unless})</span>")
    parts.append("</summary>")
    if op.get("description"):
        parts.append(f"<p>{_prose(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        params_html = "".join(
            f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td><td>{type_of(p['schema'])}</td>"
            f"<td>{_e(p.get('description', ''))} <span class=c>{_constraints(p['schema'])}</span></td></tr>"
            for p in params
        )
        parts.append(f"<h4>parameters</h4><table>{params_html}</table>")
    body = op.get("requestBody")
    if body:
        schema = body["content"]["application/json"]["schema"]
        optional = "" if body.get("required") else " (optional)"
        parts.append(f"<h4>request body{optional}</h4><p>application/json: {type_of(schema)}</p>")
    rows = []
    for status, answer in op["responses"].items():
        media = answer.get("content", {})
        shown = ", ".join(f"{_e(m)}: {type_of(c.get('schema', {}))}" for m, c in media.items()) or "no body"
        rows.append(f"<tr><td>{_e(status)}</td><td>{_e(answer['description'])}</td><td>{shown}</td></tr>")
    parts.append(f"<h4>answers</h4><table>{''.join(rows)}</table></details>")
    return "".join(parts)


def render_page(spec: dict[str, Any]) -> str:
    """The whole page (see the module docstring)."""
    by_tag: dict[str, list[str]] = {t["name"]: [] for t in spec.get("tags", [])}
    for path, item in spec["paths"].items():
        for method in _METHODS:
            if method in item and not (method == "head" and "get" in item):  # a GET's HEAD: said on the GET
                op = item[method]
                by_tag.setdefault(op["tags"][0], []).append(_operation(method, path, op, "head" in item))
    described = {t["name"]: t.get("description", "") for t in spec.get("tags", [])}
    info = spec["info"]
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(info['title'])} API {_e(info['version'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(info['title'])} API <span class=c>{_e(info['version'])}, OpenAPI {_e(spec['openapi'])}</span></h1>",
        f"<p>{_prose(info.get('description', ''))}</p>",
        '<p>The machine-readable document: <a href="/v1/openapi.json">/v1/openapi.json</a>.</p>',
        "<nav>"
        + "".join(f'<a href="#tag-{_e(t)}">{_e(t)}</a>' for t in by_tag)
        + '<a href="#schemas">schemas</a></nav>',
    ]
    for tag, ops in by_tag.items():
        out.append(f"<h2 id=tag-{_e(tag)}>{_e(tag)}</h2><p class=c>{_prose(described.get(tag, ''))}</p>")
        out.extend(ops)
    out.append("<h2 id=schemas>schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        doc = schema.get("description", "")
        out.append(f"<h3 id=schema-{_e(name)}>{_e(name)}</h3><p>{_prose(doc)}</p>{_fields_table(schema)}")
    out.append("</body></html>")
    return "\n".join(out)


def setup(app: web.Application) -> None:
    app[_BUILT] = {}
    app.router.add_get("/v1/openapi.json", openapi_json)
    app.router.add_get("/docs", docs_page)
