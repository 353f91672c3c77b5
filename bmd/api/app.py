"""The aiohttp application: middlewares (request id, errors as JSON, bearer auth) and route wiring."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from bmd.context import AppContext
from bmd.errors import BmdError, InvalidInput, NoValidHost

log = structlog.get_logger(__name__)

CTX: web.AppKey[AppContext] = web.AppKey("ctx", AppContext)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
H = TypeVar("H", bound=Handler)
M = TypeVar("M", bound=BaseModel)


def public(handler: H) -> H:
    """Mark a mutating handler as needing no bearer token (it authenticates its caller itself)."""
    handler._bmd_public = True  # type: ignore[attr-defined]
    return handler


def ctx_of(request: web.Request) -> AppContext:
    return request.app[CTX]


def is_authenticated(request: web.Request) -> bool:
    """True when the request carries the API's bearer token (constant-time compare). For the handlers of
    safe methods, which bearer_auth lets through anonymously, that do more for an authenticated caller."""
    expected = f"Bearer {ctx_of(request).api_token}".encode()
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}
    return json_response(body, status=status)


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body; any problem is InvalidInput naming the field."""
    if not request.can_read_body:
        raise InvalidInput("request body is required (JSON object)", field="body")
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInput(f"request body is not valid JSON: {err}", field="body") from err
    return validate_model(model, data)


def validate_model(model: type[M], data: Any, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        field = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "body")
        msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        msg = msg.removeprefix("Value error, ")
        raise InvalidInput(f"{field}: {msg}", field=field) from err


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                response = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
            else:
                raise
        except BmdError as err:
            if err.http_status >= 500:
                log.error("request_failed", method=request.method, path=request.path, error=str(err))
            response = error_response(
                err.http_status,
                err.code,
                str(err),
                field=getattr(err, "field", None),
                reason=str(err) if isinstance(err, NoValidHost) else None,
            )
        except Exception:
            log.exception("request_crashed", method=request.method, path=request.path)
            response = error_response(500, "internal_error", "internal error; see the service log")
        response.headers["X-Request-Id"] = request_id
        return response


def bearer_auth(token: str) -> Callable[..., Any]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in SAFE_METHODS or getattr(handler, "_bmd_public", False):
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return error_response(401, "unauthorized", "a valid bearer token is required for this call")
        return await handler(request)

    return middleware


def create_app(ctx: AppContext) -> web.Application:
    from bmd.api import agent, capabilities, flavors, health, instances, metrics, nodes, power, pxe_ips
    from bmd.deploy.http import create_image_app

    app = web.Application(middlewares=[request_context, bearer_auth(ctx.api_token)], client_max_size=1024**2)
    app[CTX] = ctx
    health.setup(app)
    metrics.setup(app)
    nodes.setup(app)
    pxe_ips.setup(app)
    capabilities.setup(app)
    flavors.setup(app)
    power.setup(app)
    instances.setup(app)
    agent.setup(app)
    http_root = Path(ctx.settings.deploy.http_root).resolve()
    http_root.mkdir(parents=True, exist_ok=True)
    app.add_subapp("/images/", create_image_app(http_root))
    return app
