"""Database faults a request can meet, named: a full disk is 507, a database that cannot answer is 503,
a unique value taken by a concurrent writer is 409, a value its column cannot hold is 400. Anything else
stays unexpected."""

from __future__ import annotations

from sqlalchemy.engine import URL
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bmd.db.nodes import conflict_from
from bmd.errors import BmdError, DatabaseUnavailable, InvalidInput, StorageFull

DISK_FULL_SQLSTATE = "53100"  # PostgreSQL disk_full
SQLITE_FULL_TEXT = "database or disk is full"


def _sqlstate(err: DBAPIError) -> str | None:
    orig = err.orig
    for attr in ("sqlstate", "pgcode"):
        value = getattr(orig, attr, None)
        if isinstance(value, str):
            return value
    return None


def db_fault(err: SQLAlchemyError, url: URL) -> BmdError | None:
    """The named error for ``err``, or None when it is not a fault of the database's resources."""
    where = url.render_as_string(hide_password=True)
    if isinstance(err, IntegrityError):
        return conflict_from(err)
    if isinstance(err, DataError):  # a value the schema let through but the column cannot hold (PostgreSQL)
        return InvalidInput(f"a value does not fit its database column: {err.orig}", field=None)
    if isinstance(err, DBAPIError):
        if SQLITE_FULL_TEXT in str(err.orig).lower() or _sqlstate(err) == DISK_FULL_SQLSTATE:
            return StorageFull(f"{SQLITE_FULL_TEXT}: the database {where} refused the write; nothing was stored")
        if err.connection_invalidated or type(err).__name__ in ("OperationalError", "InterfaceError"):
            return DatabaseUnavailable(f"the database {where} did not complete the request: {type(err.orig).__name__}")
    if isinstance(err, PoolTimeout):
        return DatabaseUnavailable(f"the database {where} has no free connection")
    return None
