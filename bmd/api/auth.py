"""Bearer-token authentication and role checks for every request (roles: bmd/auth.py).

A caller is who its ``Authorization: Bearer <token>`` names: the token in ``api.token_file`` (an admin,
compared in constant time, no database read) or a live row of ``api_tokens`` (found by the token's
SHA-256). What a route needs:

- open: ``/healthz``, ``/livez``, ``/readyz``; the dashboard's static page (``/``, ``/dashboard/*``: its
  data calls carry the token the user pastes); ``/metrics`` unless ``metrics.token_required``; the PXE files
  under ``/images/``; the deploy agent's calls (handlers marked :func:`bmd.api.app.public`: they check their
  own ``X-Agent-Token``);
- reads (GET/HEAD/OPTIONS): nothing when ``api.anonymous_read`` is true, else ``reader``;
- ``/v1/tokens``: ``admin``; every other mutating call: ``operator``.

A token that is sent but not valid is refused (401) even where none is needed, so a misconfigured client
learns at once instead of being served as anonymous. ``last_used_at`` is written at most once a minute per
token.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from aiohttp import web

from bmd.api.app import CALLER, CTX, SAFE_METHODS, Handler, error_response
from bmd.auth import FILE_CALLER, Caller, Role
from bmd.context import AppContext
from bmd.db.models import utcnow
from bmd.db.tokens import find_token, mark_used, token_hash

OPEN_APP: web.AppKey[bool] = web.AppKey("open_app", bool)  # a sub-application served to anyone (/images/)
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator")
TOUCH_EVERY = 60.0  # seconds between writes of one token's last_used_at


class Authenticator:
    """Finds the caller of a request. A named token found in the database is remembered for
    ``CACHE_SECONDS`` (by its hash, never its clear text): a lookup costs a session and a query, ~10 ms a
    request on a busy SQLite (the token file's token costs none), and a revocation still acts within that
    time on every service sharing the database (at once on the service whose API revoked it)."""

    CACHE_SECONDS = 5.0
    CACHE_SIZE = 4096

    def __init__(self, ctx: AppContext, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.clock = clock
        self._file_token = f"Bearer {ctx.api_token}".encode()
        self._touched: dict[int, float] = {}
        self._known: dict[str, tuple[Caller, float]] = {}  # token hash -> (caller, until)

    async def caller(self, header: str) -> Caller | None:
        """The caller an ``Authorization`` header names, or None when it names no valid token."""
        try:
            given = header.encode("ascii")  # non-ASCII bytes (kept by aiohttp as surrogates) never match
        except UnicodeEncodeError:
            return None
        if hmac.compare_digest(given, self._file_token):
            return FILE_CALLER
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 256:
            return None
        digest = token_hash(token)
        now = self.clock()
        known = self._known.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        async with self.ctx.sessionmaker() as session:
            row = await find_token(session, token)
        if row is None:
            self._known.pop(digest, None)
            return None
        caller = Caller(id=row.id, name=row.name, role=Role(row.role))
        if len(self._known) >= self.CACHE_SIZE:
            self._known.clear()
        self._known[digest] = (caller, now + self.CACHE_SECONDS)
        if now - self._touched.get(row.id, -TOUCH_EVERY) >= TOUCH_EVERY:
            self._touched[row.id] = now
            async with self.ctx.sessionmaker.begin() as session:
                await mark_used(session, row.id, utcnow())
        return caller

    def forget(self, name: str) -> None:
        """Drop a revoked token from the cache (the API's revoke)."""
        self._known = {digest: entry for digest, entry in self._known.items() if entry[0].name != name}


def is_open(request: web.Request) -> bool:
    """Served to anyone whatever the settings: its handler authenticates its caller itself, or it is meant for
    machines and monitors that hold no API token."""
    info = request.match_info
    if getattr(info.handler, "_bmd_public", False) or any(app.get(OPEN_APP, False) for app in info.apps):
        return True
    route = route_of(request)
    if route in ("/healthz", "/livez", "/readyz", "/", "/dashboard/{file}"):  # the dashboard asks for a token
        return True
    return route == "/metrics" and not request.app[CTX].settings.metrics.token_required


def route_of(request: web.Request) -> str:
    """The route's template (``/v1/nodes/{node}``), "" when no route matched."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def needed_role(request: web.Request) -> Role | None:
    """The least role the request needs (None: anyone, with or without a token)."""
    if is_open(request):
        return None
    route = route_of(request)
    if route == "/v1/tokens" or route.startswith("/v1/tokens/"):
        return Role.admin
    if request.method in SAFE_METHODS:
        return None if request.app[CTX].settings.api.anonymous_read else Role.reader
    return Role.operator


def _missing(needed: Role, reads: bool) -> web.Response:
    hint = " or set api.anonymous_read = true to let anyone read" if reads else ""
    return error_response(
        401,
        "unauthorized",
        f"this call needs an API token with role {needed.value} or above: send 'Authorization: Bearer <token>' "
        f"(the CLI: api.token_file or BMD_TOKEN; a new token: bmd token create NAME --role {needed.value}){hint}",
    )


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    needed = needed_role(request)
    header = request.headers.get("Authorization")
    caller = None
    if header is not None and not is_open(request):
        caller = await request.app[AUTHENTICATOR].caller(header)
        if caller is None:
            return error_response(
                401,
                "unauthorized",
                "the bearer token is not valid (unknown or revoked): check api.token_file or BMD_TOKEN",
            )
    request[CALLER] = caller
    if needed is None:
        return await handler(request)
    if caller is None:
        return _missing(needed, request.method in SAFE_METHODS)
    if not caller.may(needed):
        return error_response(
            403, "forbidden", f"token {caller.name!r} has role {caller.role.value}; this call needs {needed.value}"
        )
    return await handler(request)


def setup(app: web.Application) -> None:
    app[AUTHENTICATOR] = Authenticator(app[CTX])
