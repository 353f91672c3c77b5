"""The dashboard: ``GET /`` is its page, ``GET /dashboard/{file}`` its script and style (a fixed set of
package files, never a path from the request), and its live feed (:mod:`bmd.api.node_stream`).

The page is read-only and calls the open reads of the API; it sends a bearer token when the user pasted
one (kept in the tab's sessionStorage), which the console log needs. The Content-Security-Policy allows
nothing but this origin: no inline script, no outside font or script (and nothing to fetch offline).
"""

from __future__ import annotations

from aiohttp import web

from bmd.api import node_stream
from bmd.dashboard import STATIC

FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag) after every upgrade of bmd
}


def _file(name: str) -> web.FileResponse:
    response = web.FileResponse(STATIC / name, headers=HEADERS)
    response.content_type = FILES[name]
    response.charset = "utf-8"
    return response


async def index(request: web.Request) -> web.FileResponse:
    return _file("index.html")


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["file"]
    if name not in FILES or name == "index.html":
        raise web.HTTPNotFound()
    return _file(name)


def setup(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/dashboard/{file}", asset)
    node_stream.setup(app)
