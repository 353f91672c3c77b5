"""The aiohttp application: middlewares (audit, request id, errors as JSON, bearer auth) and route wiring."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from bmd.api.body import MAX_BODY_BYTES, read_json
from bmd.auth import Caller, Role
from bmd.context import AppContext
from bmd.db.faults import db_fault
from bmd.errors import BmdError, InvalidInput

log = structlog.get_logger(__name__)

CTX: web.AppKey[AppContext] = web.AppKey("ctx", AppContext)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
CALLER: web.RequestKey[Caller | None] = web.RequestKey("caller")  # set by bmd.api.auth for every request
H = TypeVar("H", bound=Handler)
M = TypeVar("M", bound=BaseModel)


def public(handler: H) -> H:
    """Mark a handler as needing no bearer token, whatever ``api.anonymous_read`` says (it authenticates its
    caller itself: the deploy agent's ``X-Agent-Token``); its calls are not audited (bmd/api/audit.py)."""
    handler._bmd_public = True  # type: ignore[attr-defined]
    return handler


def ctx_of(request: web.Request) -> AppContext:
    return request.app[CTX]


def actor_of(request: web.Request) -> str:
    """Who made the request, for a node's history: the token's name (never the token), else "anonymous"."""
    caller = request.get(CALLER)
    return caller.name if caller is not None else "anonymous"


def is_authenticated(request: web.Request) -> bool:
    """For handlers of reads that do more for a trusted caller (a live BMC read, a console): the caller's
    token has the operator's rights (bmd/auth.py)."""
    caller = request.get(CALLER)
    return caller is not None and caller.may(Role.operator)


def untrusted_response(request: web.Request, what: str) -> web.Response:
    """The refusal of a read that needs an operator's token (:func:`is_authenticated` is false): 401 with
    no token, 403 naming the token's role when it has too few rights."""
    caller = request.get(CALLER)
    if caller is None:
        return error_response(401, "unauthorized", f"an API token with role operator or above is required {what}")
    return error_response(
        403, "forbidden", f"token {caller.name!r} has role {caller.role.value}; {what} needs operator or above"
    )


def _dumps(data: Any) -> str:
    # strict JSON: NaN/Infinity are refused at input, and a response never carries them either
    return json.dumps(data, default=str, allow_nan=False)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    """Every error body has exactly these three keys; ``field`` is null when no one field is to blame."""
    return json_response({"error": code, "message": message, "field": field}, status=status)


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Parse (bounded: size, nesting, numbers) and validate a JSON body; any problem names the field.

    The handler declares the same model with ``@takes(model)`` (see bmd/api/body.py)."""
    return validate_model(model, await read_json(request))


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


def check_request_text(request: web.Request) -> None:
    """Refuse a path or query no database can store (NUL characters) before any handler sees it."""
    if "\x00" in request.path:
        raise InvalidInput("the request path holds a NUL character", field="path")
    for key, value in request.query.items():
        if "\x00" in key or "\x00" in value:
            raise InvalidInput(f"query parameter {key!r} holds a NUL character", field=key)


def _fault(ctx: AppContext, err: Exception) -> BmdError | None:
    if isinstance(err, SQLAlchemyError):
        return db_fault(err, ctx.engine.url)
    if isinstance(err, RecursionError):  # the body bounds should make this unreachable: log it as the bug it is
        log.error("request_recursion", error=str(err))
        return InvalidInput("the request is nested too deeply to process", field="body")
    return None


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    given_id = request.headers.get("X-Request-Id", "")
    request_id = given_id if _REQUEST_ID.fullmatch(given_id) else uuid.uuid4().hex  # never echo hostile bytes
    request[REQUEST_ID] = request_id
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            try:
                check_request_text(request)
                response = await handler(request)
            except (SQLAlchemyError, RecursionError) as err:
                named = _fault(request.config_dict[CTX], err)
                if named is None:
                    raise
                raise named from err
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                response = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
                response.headers.extend((k, v) for k, v in exc.headers.items() if k == "Allow")
            else:
                raise
        except BmdError as err:
            if err.http_status >= 500:
                log.error("request_failed", method=request.method, path=request.path, error=str(err))
            response = error_response(err.http_status, err.code, str(err), field=getattr(err, "field", None))
        except Exception:
            log.exception("request_crashed", method=request.method, path=request.path)
            response = error_response(500, "internal_error", "internal error; see the service log")
        if not response.prepared:  # a streamed list set it before sending its headers
            response.headers["X-Request-Id"] = request_id
        return response


def create_app(ctx: AppContext) -> web.Application:
    from bmd.api import (
        agent,
        audit,
        auth,
        capabilities,
        console,
        dashboard,
        docs,
        flavors,
        forward,
        health,
        inspection,
        instances,
        metrics,
        nodes,
        power,
        pxe_ips,
        tokens,
    )
    from bmd.drivers.deploy.http import create_image_app

    middlewares = [audit.audit, request_context, auth.authenticate, forward.forward_to_owner]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[CTX] = ctx
    auth.setup(app)
    forward.setup(app)
    health.setup(app)
    metrics.setup(app)
    nodes.setup(app)
    inspection.setup(app)
    pxe_ips.setup(app)
    capabilities.setup(app)
    flavors.setup(app)
    power.setup(app)
    instances.setup(app)
    agent.setup(app)
    console.setup(app)
    tokens.setup(app)
    dashboard.setup(app)
    docs.setup(app)
    http_root = Path(ctx.settings.deploy.http_root).resolve()
    http_root.mkdir(parents=True, exist_ok=True)
    images = create_image_app(http_root)
    images[auth.OPEN_APP] = True  # boot files: nothing a booting machine fetches is secret
    app.add_subapp("/images/", images)
    return app
