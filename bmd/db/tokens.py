"""Query functions of ``api_tokens``: create (the clear text returned once), list, revoke, find by token.

Only a token's SHA-256 is stored; a lookup hashes what the caller sent and finds the row by that hash (the
unique index), so the clear text of a token is never in the database, the logs or a backup."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bmd.auth import FILE_TOKEN_NAME, Role
from bmd.db.models import ApiToken, utcnow
from bmd.errors import Conflict, InvalidInput, NotFound

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """256 random bits as hex: shell-safe, and never starting with "-" (a CLI would read it as an option)."""
    return secrets.token_hex(32)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidInput(
            f"name: {name[:80]!r} is not a token name (1-64 of letters, digits, '.', '_', '@', '-'; "
            "starting with a letter or digit)",
            field="name",
        )
    if name == FILE_TOKEN_NAME:
        raise InvalidInput(f"name: {FILE_TOKEN_NAME!r} is the token file's own name", field="name")
    return name


def check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise InvalidInput(f"role: {role[:40]!r} is not a role ({known})", field="role") from None


def token_view(row: ApiToken) -> dict[str, Any]:
    """What ``bmd token list`` shows: never the hash (it would let anyone test guesses offline)."""
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "created_at": row.created_at,
        "revoked_at": row.revoked_at,
        "last_used_at": row.last_used_at,
    }


async def create_token(session: AsyncSession, name: str, role: str) -> tuple[ApiToken, str]:
    """A new token: the row and the clear text, which nothing keeps (the caller shows it once)."""
    checked_role = check_role(role)
    clear = new_token()
    row = ApiToken(name=check_name(name), role=checked_role.value, token_hash=token_hash(clear), created_at=utcnow())
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as err:
        raise Conflict(f"a token named {name!r} exists (revoked names stay taken: pick another)") from err
    return row, clear


async def list_tokens(session: AsyncSession, include_revoked: bool = False) -> list[ApiToken]:
    stmt = select(ApiToken).order_by(ApiToken.id)
    if not include_revoked:
        stmt = stmt.where(ApiToken.revoked_at.is_(None))
    return list((await session.scalars(stmt)).all())


async def revoke_token(session: AsyncSession, name: str) -> ApiToken:
    """Revoke by name (idempotent: revoking a revoked token keeps its first revocation time)."""
    row = await session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise NotFound(f"no token named {name[:80]!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.flush()
    return row


async def find_token(session: AsyncSession, clear: str) -> ApiToken | None:
    """The live (not revoked) token whose clear text is ``clear``, or None."""
    return await session.scalar(
        select(ApiToken).where(ApiToken.token_hash == token_hash(clear), ApiToken.revoked_at.is_(None))
    )


async def mark_used(session: AsyncSession, token_id: int, when: dt.datetime) -> None:
    await session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=when))
