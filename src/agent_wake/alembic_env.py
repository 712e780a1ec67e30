"""The Alembic environment of agent-wake, shared by the packaged script
directory (``agent_wake:migrations``) and a checkout's top-level ``alembic/``.

Both ``env.py`` files only call :func:`run_migrations`. Options, from the
command line or from ``Config.attributes``:

- ``-x url=...``: the database (else ``AGENT_WAKE_DATABASE_URL``, else the
  embedded PostgreSQL; see :mod:`agent_wake.database`);
- ``-x schema=NAME``: migrate into that PostgreSQL schema, created if
  missing, with its own ``alembic_version`` table there;
- ``Config.attributes["connection"]``: a sync ``Connection`` to migrate
  on, for callers that already hold one (tests, ``AsyncConnection.run_sync``).
"""

import asyncio
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from agent_wake import database
from agent_wake.models import Base

__all__ = ["run_migrations"]


def _option(name: str) -> str | None:
    value = context.get_x_argument(as_dictionary=True).get(name)
    if value is None:
        value = context.config.attributes.get(name)
    return value


def _configure_and_run(connection: Connection, schema: str | None) -> None:
    if schema is not None:
        connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        connection.exec_driver_sql(f'SET search_path TO "{schema}"')
        connection.commit()
        # Reflection during autogenerate treats the default schema as "no
        # schema"; the unqualified alembic_version then lands in `schema` too,
        # and autogenerate still recognises it as the version table.
        connection.dialect.default_schema_name = schema
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        transaction_per_migration=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_new_engine(url: str, schema: str | None) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure_and_run, schema)
    finally:
        await engine.dispose()


def _run_offline(schema: str | None) -> None:
    # Offline mode prints DDL and must not start a server just to name a dialect.
    context.configure(
        dialect_name="postgresql",
        target_metadata=Base.metadata,
        literal_binds=True,
        version_table_schema=schema,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        if schema is not None:
            context.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            context.execute(f'SET search_path TO "{schema}"')
        context.run_migrations()


def run_migrations() -> None:
    """Run the Alembic command in progress (called from ``env.py``)."""
    if context.config.config_file_name is not None:
        fileConfig(context.config.config_file_name, disable_existing_loggers=False)
    schema_option = _option("schema")
    schema = database.validate_schema_name(schema_option) if schema_option else None
    if context.is_offline_mode():
        _run_offline(schema)
        return
    connection: Any = context.config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection, schema)
        return
    url = database.resolve_database_url(_option("url"))
    asyncio.run(_run_on_new_engine(url, schema))
