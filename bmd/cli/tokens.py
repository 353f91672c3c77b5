"""``bmd token create|list|revoke``: named API tokens with a role (bmd/auth.py).

These act on the database directly, as ``bmd db upgrade`` does: whoever can run them holds the config and
the database's credentials, which is more than any token gives. So the first token is made with no token
at all (no chicken-and-egg), it works while the service is stopped, and no network path mints tokens
unless an admin asks for one (``--api``: through ``/v1/tokens`` with an admin token, for an admin with no
shell on the service's host). The clear text is printed once, on stdout, and kept nowhere."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bmd.cli.client import q
from bmd.errors import BmdError, DatabaseError


async def _on_database(app: Any, action: str) -> Any:
    from bmd.db import tokens
    from bmd.db.engine import make_engine, make_sessionmaker
    from bmd.db.migrate import check_schema

    a = app.args
    engine = make_engine(app.settings.database)
    try:
        try:
            await check_schema(engine)
            sessions = make_sessionmaker(engine)
            async with sessions.begin() as session:
                if action == "create":
                    row, clear = await tokens.create_token(session, a.name, a.role)
                    return {**tokens.token_view(row), "token": clear}
                if action == "revoke":
                    return tokens.token_view(await tokens.revoke_token(session, a.name))
                return [tokens.token_view(row) for row in await tokens.list_tokens(session, include_revoked=a.all)]
        except BmdError:
            raise
        except Exception as err:
            raise DatabaseError(f"database {engine.url.render_as_string()}: {err}") from err
    finally:
        await engine.dispose()


def _through_api(app: Any, action: str) -> Any:
    a = app.args
    if action == "create":
        return app.client.post("/v1/tokens", {"name": a.name, "role": a.role})
    if action == "revoke":
        return app.client.delete(f"/v1/tokens/{q(a.name)}")
    return app.client.get("/v1/tokens" + ("?revoked=true" if a.all else ""))["tokens"]


def run(app: Any) -> int:
    action = app.args.token_command
    result = _through_api(app, action) if app.args.api else asyncio.run(_on_database(app, action))
    app.print(result)
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    token = sub.add_parser("token", help="named API tokens with a role (reader, operator, service, admin)")
    ts = token.add_subparsers(dest="token_command", required=True)
    p = ts.add_parser("create", help="create a token and print it (once: only its hash is kept)")
    p.add_argument("name", help="who or what holds it, e.g. alice or ci-deployer")
    p.add_argument("--role", required=True, choices=("reader", "operator", "service", "admin"))
    p = ts.add_parser("list", help="tokens (never their clear text), newest last")
    p.add_argument("--all", action="store_true", help="include revoked tokens")
    p = ts.add_parser("revoke", help="revoke a token by name (at once, for every service on this database)")
    p.add_argument("name")
    for parser in ts.choices.values():
        parser.add_argument(
            "--api", action="store_true", help="through the API (an admin token) instead of the database"
        )
        parser.set_defaults(func=run)
