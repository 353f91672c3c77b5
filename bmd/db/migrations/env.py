"""Alembic environment: runs on the connection handed over by bmd.db.migrate (never reads alembic.ini)."""

from __future__ import annotations

from alembic import context

from bmd.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `bmd db upgrade`, which hands alembic a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
