"""Serve ``http_root`` (iPXE scripts, kernels, ramdisks) over HTTP to anyone, with Range support.

Nothing served here is secret (a booting machine cannot authenticate): disk images are not under
``http_root`` but under ``image_root``, served to the deploy agent with its token (:mod:`bmd.api.agent`).

Mount it in the main app: ``app.add_subapp("/images/", create_image_app(settings.http_root))``; then
``deploy.http_url`` is ``http://<bmd address>:<port>/images``.

Files go out through aiohttp's :class:`web.FileResponse`, which handles GET and HEAD, ``Range``
(``bytes=a-b``, ``bytes=a-``, ``bytes=-n``: 206 with ``Content-Range``; unsatisfiable: 416) and
``If-Modified-Since``, streaming from disk with ``sendfile``. What this module adds is the lookup: the path is
split into segments and each one is checked (no ``..``, no hidden names such as the writer's temp and staged
files, no NUL), then the resolved file must still be inside the resolved root. Symlinks are followed only
when they stay inside the root (the per-MAC iPXE links do). Anything else is a plain 404, so probing tells
nothing about what exists outside.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from aiohttp import web

from bmd.api.openapi import answers

log = structlog.get_logger(__name__)

OPENAPI_TAG = "images"
ROOT_KEY = web.AppKey("bmd_deploy_http_root", Path)


def locate(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names under ``root``, or None. Blocking (stat, realpath): call from a thread."""
    segments = relative.split("/")
    if not relative or any(s in ("", ".", "..") or s.startswith(".") or "\0" in s for s in segments):
        return None
    real_root = root.resolve()
    try:
        target = real_root.joinpath(*segments).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, loop, too long
        return None
    if not target.is_relative_to(real_root) or not target.is_file():
        return None
    return target


@answers(200, media="*/*", description="the file (iPXE scripts, kernels, ramdisks); Range supported")
@answers(206, media="*/*")
@answers(304)
@answers(416)
async def _serve(request: web.Request) -> web.StreamResponse:
    root = request.app[ROOT_KEY]
    relative = request.match_info["path"]
    path = await asyncio.to_thread(locate, root, relative)
    if path is None:
        log.info("deploy_file_not_found", path=relative[:200], peer=request.remote)
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "no-store"})


def create_image_app(root: Path) -> web.Application:
    """A sub-application serving ``root`` read-only (GET and HEAD)."""
    app = web.Application()
    app[ROOT_KEY] = Path(root)
    app.router.add_get("/{path:.+}", _serve)  # add_get also answers HEAD
    return app
