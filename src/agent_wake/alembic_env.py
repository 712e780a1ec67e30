"""The Alembic environment of agent-wake, shared by the packaged script
directory (``agent_wake:migrations``) and a checkout's top-level ``alembic/``.

Both ``env.py`` files only call :func:`run_migrations`. Options, from the
command line or from ``Config.attributes``:

- ``-x url=...``: the database (else ``AGENT_WAKE_DATABASE_URL``; see
  :func:`agent_wake.database.resolve_database_url`);
- ``-x schema=NAME``: migrate into that PostgreSQL schema, created if
  missing, with its own ``alembic_version`` table there;
- ``Config.attributes["connection"]``: a ``Connection``, ``Engine``,
  ``AsyncConnection`` or ``AsyncEngine`` to migrate with, for callers that
  already hold one (tests, migration-testing tools).

A host application that plugs our ``agent_wake`` branch into its own
history does not use this environment: its own ``env.py`` runs our
revisions.
"""

import asyncio
import contextlib
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, Engine, pool, text
from sqlalchemy.exc import DBAPIError, MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agent_wake import database
from agent_wake.errors import InvalidInputError
from agent_wake.models import Base
from agent_wake.standins import StandinBase

__all__ = ["run_migrations"]

# The standalone scripts hold the stand-in branches as well as ours.
_TARGET_METADATA = [StandinBase.metadata, Base.metadata]


def _option(name: str) -> str | None:
    value = context.get_x_argument(as_dictionary=True).get(name)
    if value is None:
        value = context.config.attributes.get(name)
    return value


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=_TARGET_METADATA,
        transaction_per_migration=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_in_schema(connection: Connection, schema: str) -> None:
    # The connection may be the caller's: whatever is changed here for the
    # migration is put back, failed or not, and a transaction the caller had
    # open is left to the caller. Inside it the SET is LOCAL, so that however
    # it ends the session's search_path is as it was.
    callers_transaction = connection.in_transaction()
    saved_search_path = connection.execute(text("SELECT current_setting('search_path')")).scalar_one()
    saved_default_schema = connection.dialect.default_schema_name
    restore = text("SELECT set_config('search_path', :search_path, :is_local)")
    connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    connection.exec_driver_sql(f'SET {"LOCAL " if callers_transaction else ""}search_path TO "{schema}"')
    if not callers_transaction:
        connection.commit()
    # Reflection during autogenerate treats the default schema as "no
    # schema"; the unqualified alembic_version then lands in `schema` too,
    # and autogenerate still recognises it as the version table. The dialect
    # is shared by every connection of the engine, hence the restore.
    connection.dialect.default_schema_name = schema
    failed = True
    try:
        _configure_and_run(connection)
        failed = False
    finally:
        connection.dialect.default_schema_name = saved_default_schema
        if not callers_transaction:
            # After a failure Alembic has rolled its own transaction back;
            # this ends anything left, so the restore commits on its own.
            connection.rollback()
            connection.execute(restore, {"search_path": saved_search_path, "is_local": False})
            connection.commit()
        elif failed:
            # The caller's transaction may go on after a Python-level failure:
            # restore there too. An aborted one refuses the statement, and
            # the caller's rollback undoes the SET LOCAL instead.
            with contextlib.suppress(DBAPIError):
                connection.execute(restore, {"search_path": saved_search_path, "is_local": True})
        else:
            connection.execute(restore, {"search_path": saved_search_path, "is_local": True})


def _run(connection: Connection, schema: str | None) -> None:
    callers_transaction = connection.in_transaction()
    try:
        if schema is None:
            _configure_and_run(connection)
        else:
            _run_in_schema(connection, schema)
    except AssertionError as exc:
        # Alembic's autocommit_block asserts that it owns the transaction it
        # must commit; in the caller's, that assertion is all it says.
        if not callers_transaction:
            raise
        raise InvalidInputError(
            "connection",
            "a revision of this run commits part-way (agent_wake_0003 to agent_wake_0005 validate after a commit, "
            "agent_wake_0007 builds its indexes CONCURRENTLY), which it cannot do inside the transaction you have "
            "open: roll it back and run the command on a connection with no transaction open",
        ) from exc


def _run_in_a_loop_of_our_own(engine: AsyncEngine, schema: str | None) -> None:
    """Migrate on a connection of ``engine``, which is ours: disposed at the end."""

    async def run() -> None:
        try:
            async with engine.connect() as connection:
                await connection.run_sync(_run, schema)
        finally:
            await engine.dispose()

    asyncio.run(run())


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_on_given(given: object, schema: str | None) -> None:
    if isinstance(given, Connection):
        _run(given, schema)
    elif isinstance(given, Engine):
        with given.connect() as connection:
            _run(connection, schema)
    elif isinstance(given, AsyncConnection):
        if given.sync_connection is None:
            raise InvalidInputError("connection", "an AsyncConnection must be started (async with engine.connect())")
        try:
            _run(given.sync_connection, schema)
        except MissingGreenlet as exc:
            # Raised by the first statement, before anything is written.
            raise InvalidInputError(
                "connection",
                "an AsyncConnection works only when the Alembic command is called inside its run_sync() "
                "(env.py is synchronous); otherwise pass its AsyncEngine",
            ) from exc
    elif isinstance(given, AsyncEngine):
        if _event_loop_running():
            raise InvalidInputError(
                "connection",
                "an AsyncEngine needs an event loop of its own, and one is running in this thread: call the "
                "Alembic command from another thread (await asyncio.to_thread(command.upgrade, config, 'head'))",
            )
        # A pool of our own with the caller's connect arguments and pool
        # events: an asyncpg connection belongs to the event loop that opened
        # it, so none may pass between the caller's pool and our loop, which
        # closes on return.
        _run_in_a_loop_of_our_own(create_async_engine(given.url, pool=given.sync_engine.pool.recreate()), schema)
    else:
        raise InvalidInputError(
            "connection",
            f"must be a Connection, Engine, AsyncConnection or AsyncEngine, got {type(given).__name__}",
        )


def _run_offline(schema: str | None) -> None:
    # Offline mode prints DDL and must not start a server just to name a dialect.
    context.configure(
        dialect_name="postgresql",
        target_metadata=_TARGET_METADATA,
        literal_binds=True,
        version_table_schema=schema,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        if schema is not None:
            context.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            context.execute(f'SET search_path TO "{schema}"')
        context.run_migrations()


def run_migrations(*, allow_embedded: bool = False) -> None:
    """Run the Alembic command in progress (called from ``env.py``).

    On ``Config.attributes["connection"]`` when one is given, else on a
    connection of its own to the resolved URL (``allow_embedded`` is passed
    to :func:`~agent_wake.database.resolve_database_url`: only a checkout's
    ``env.py`` lets a missing URL start the embedded server). A given
    connection is left as it was found: its ``search_path`` and its
    dialect's ``default_schema_name`` are restored after ``-x schema=``,
    a transaction it had open is neither committed nor ended, and each
    revision otherwise commits on its own (``transaction_per_migration``).

    Refuses a ``connection`` attribute of any other kind
    (``InvalidInputError``), an ``AsyncEngine`` while an event loop runs in
    this thread (``asyncio.run`` cannot nest: call the command from a
    worker thread), and an ``AsyncConnection`` outside its ``run_sync``.
    """
    if context.config.config_file_name is not None:
        fileConfig(context.config.config_file_name, disable_existing_loggers=False)
    schema_option = _option("schema")
    schema = database.validate_schema_name(schema_option) if schema_option else None
    if context.is_offline_mode():
        _run_offline(schema)
        return
    given: Any = context.config.attributes.get("connection")
    if given is not None:
        _run_on_given(given, schema)
        return
    url = database.resolve_database_url(_option("url"), allow_embedded=allow_embedded)
    _run_in_a_loop_of_our_own(create_async_engine(url, poolclass=pool.NullPool), schema)
