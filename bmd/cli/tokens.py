"""``bmd token create|list|revoke``: named API tokens with a role (bmd/auth.py).

These act on the database directly, as ``bmd db upgrade`` does: whoever can run them holds the config and
the database's credentials, which is more than any token gives. So the first token is made with no token
at all (no chicken-and-egg), it works while the service is stopped, and no network path mints tokens
unless an admin asks for one (``--api``: through ``/v1/tokens`` with an admin token, for an admin with no
shell on the service's host). The clear text is printed once, on stdout, and kept nowhere."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from bmd.cli.base import CliApp, F, Output, list_output, pass_app, show_output
from bmd.cli.client import q
from bmd.errors import BmdError, DatabaseError

ROLES = ("reader", "operator", "service", "admin")
COLUMNS = ("id", "name", "role", "created_at", "revoked_at", "last_used_at")


async def _on_database(app: CliApp, action: str, name: str = "", role: str = "", revoked: bool = False) -> Any:
    from bmd.db import tokens
    from bmd.db.engine import make_engine, make_sessionmaker
    from bmd.db.migrate import check_schema

    engine = make_engine(app.settings.database)
    try:
        try:
            await check_schema(engine)
            sessions = make_sessionmaker(engine)
            async with sessions.begin() as session:
                if action == "create":
                    row, clear = await tokens.create_token(session, name, role)
                    return {**tokens.token_view(row), "token": clear}
                if action == "revoke":
                    return tokens.token_view(await tokens.revoke_token(session, name))
                return [tokens.token_view(row) for row in await tokens.list_tokens(session, include_revoked=revoked)]
        except BmdError:
            raise
        except Exception as err:
            raise DatabaseError(f"database {engine.url.render_as_string()}: {err}") from err
    finally:
        await engine.dispose()


def _api_option(f: F) -> F:
    decorated: F = click.option("--api", is_flag=True, help="through the API (an admin token) instead of the database")(
        f
    )
    return decorated


@click.group("token")
def group() -> None:
    """Named API tokens with a role (reader, operator, service, admin)."""


@group.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES))
@_api_option
@show_output
@pass_app
def create(app: CliApp, out: Output, name: str, role: str, api: bool) -> None:
    """Create a token and print it (once: only its hash is kept). NAME: who or what holds it."""
    if api:
        out.one(app.client.post("/v1/tokens", {"name": name, "role": role}))
    else:
        out.one(asyncio.run(_on_database(app, "create", name=name, role=role)))


@group.command("list")
@click.option("--all", "revoked", is_flag=True, help="include revoked tokens")
@_api_option
@list_output(COLUMNS)
@pass_app
def list_(app: CliApp, out: Output, revoked: bool, api: bool) -> None:
    """Tokens (never their clear text), newest last."""
    if api:
        out.rows(app.client.get("/v1/tokens" + ("?revoked=true" if revoked else ""))["tokens"])
    else:
        out.rows(asyncio.run(_on_database(app, "list", revoked=revoked)))


@group.command("revoke")
@click.argument("name")
@_api_option
@show_output
@pass_app
def revoke(app: CliApp, out: Output, name: str, api: bool) -> None:
    """Revoke a token by name (at once, for every service on this database)."""
    out.one(app.client.delete(f"/v1/tokens/{q(name)}") if api else asyncio.run(_on_database(app, "revoke", name=name)))
