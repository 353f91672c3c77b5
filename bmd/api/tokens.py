"""``/v1/tokens``: named API tokens for admins who have no shell on the service's host (``bmd token ...``
acts on the database directly; both go through bmd/db/tokens.py). Only an admin token may call these
(bmd/api/auth.py). A new token's clear text is in the creation's answer and nowhere else."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field

from bmd.api.app import ctx_of, json_response, parse_body
from bmd.api.auth import AUTHENTICATOR
from bmd.api.body import takes
from bmd.api.schemas import Body
from bmd.db.tokens import create_token, list_tokens, revoke_token, token_view


class TokenCreate(Body):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["reader", "operator", "service", "admin"]


async def list_(request: web.Request) -> web.Response:
    revoked = request.query.get("revoked", "") in ("1", "true", "yes")
    async with ctx_of(request).sessionmaker() as session:
        rows = await list_tokens(session, include_revoked=revoked)
    return json_response({"tokens": [token_view(row) for row in rows], "next": None})


@takes(TokenCreate)
async def create(request: web.Request) -> web.Response:
    body = await parse_body(request, TokenCreate)
    async with ctx_of(request).sessionmaker.begin() as session:
        row, clear = await create_token(session, body.name, body.role)
    return json_response({**token_view(row), "token": clear}, status=201)


async def revoke(request: web.Request) -> web.Response:
    async with ctx_of(request).sessionmaker.begin() as session:
        row = await revoke_token(session, request.match_info["name"])
    request.app[AUTHENTICATOR].forget(row.name)  # at once here; other services within CACHE_SECONDS
    return json_response(token_view(row))


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/tokens", list_)
    app.router.add_post("/v1/tokens", create)
    app.router.add_delete("/v1/tokens/{name}", revoke)
