"""Scratch databases: a uniquely named database created on a PostgreSQL
server, migrated, used by one test run or benchmark, and dropped.

::

    async with ScratchDatabase(server_url, prefix="agent_wake_bench") as url:
        ...  # a database migrated with agent-wake's own Alembic scripts

The name is built here, never taken from the caller whole: ``prefix``, then
``worker`` (the pytest-xdist worker, say), then 10 random hex digits, so
concurrent runs on one server do not meet. The database is dropped with
``WITH (FORCE)``: connections a test left open do not keep it alive.
"""

import asyncio
import re
import uuid
from collections.abc import Callable
from types import TracebackType

from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from agent_wake.database import resolve_database_url
from agent_wake.errors import InvalidInputError
from agent_wake.migration_config import alembic_config

__all__ = ["ScratchDatabase", "ScratchDatabases", "execute_autocommit", "migrate_to_head"]

_NAME_PART = re.compile(r"[a-z_][a-z0-9_]*")
_RANDOM_HEX_DIGITS = 10
# PostgreSQL truncates longer identifiers silently; the DROP would then miss.
_MAX_NAME_LENGTH = 63

# Called with the new database's URL in a thread of its own, with no event
# loop running there: Alembic's env.py may start one with asyncio.run.
_Migrate = Callable[[str], None]


async def execute_autocommit(url: str, *statements: str) -> None:
    """Run ``statements`` in order on a new connection to ``url``, each committed
    on its own (outside a transaction, as CREATE DATABASE requires).

    ``url`` is any PostgreSQL URL (it goes through
    :func:`~agent_wake.database.resolve_database_url`). Costs one connection
    and one round trip per statement; the connection is closed at the end.
    """
    engine = create_async_engine(resolve_database_url(url), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


def migrate_to_head(url: str) -> None:
    """Upgrade the database at ``url`` to head with agent-wake's packaged Alembic
    scripts (the stand-in ``conversations`` and ``agent_skills`` included).

    Blocks, and runs its own event loop: call it from a thread with none
    running (:class:`ScratchDatabase` does). Alembic is imported on the first
    call, so importing this module does not import it.
    """
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def _database_name(prefix: str, worker: str) -> str:
    for field, value in (("prefix", prefix), ("worker", worker)):
        if not _NAME_PART.fullmatch(value):
            raise InvalidInputError(field, "must be a lower-case identifier: a-z, 0-9 and _, not starting with a digit")
    name = f"{prefix}_{worker}_{uuid.uuid4().hex[:_RANDOM_HEX_DIGITS]}"
    if len(name) > _MAX_NAME_LENGTH:
        raise InvalidInputError("prefix", f"with the worker, makes a database name over {_MAX_NAME_LENGTH} characters")
    return name


class ScratchDatabase:
    """One database on the server at ``server_url``, named
    ``{prefix}_{worker}_{10 hex digits}`` (:attr:`name`, at :attr:`url`).

    :meth:`create` creates it and runs ``migrate`` on it (default
    :func:`migrate_to_head`; ``None`` leaves it empty); :meth:`drop` drops it.
    As an async context manager it does both around the block and gives the URL.

    Refuses (``InvalidInputError``) a ``prefix`` or ``worker`` that is not a
    lower-case identifier, or a name longer than PostgreSQL's 63 characters.
    Nothing connects until :meth:`create`.
    """

    def __init__(
        self,
        server_url: str,
        *,
        prefix: str = "agent_wake_scratch",
        worker: str = "main",
        migrate: _Migrate | None = migrate_to_head,
    ) -> None:
        self.server_url = resolve_database_url(server_url)
        self.name = _database_name(prefix, worker)
        self.url = make_url(self.server_url).set(database=self.name).render_as_string(hide_password=False)
        self.migrate = migrate

    async def create(self) -> str:
        """CREATE DATABASE, then ``migrate`` in a worker thread; returns :attr:`url`.

        If ``migrate`` raises, the database is dropped again before the error
        propagates. Costs one server connection, the copy of ``template1``,
        and whatever ``migrate`` costs.
        """
        await execute_autocommit(self.server_url, f'CREATE DATABASE "{self.name}"')
        if self.migrate is not None:
            try:
                await asyncio.to_thread(self.migrate, self.url)
            except BaseException:
                await self.drop()
                raise
        return self.url

    async def drop(self) -> None:
        """DROP DATABASE IF EXISTS ... WITH (FORCE): ends the database's open
        connections first. Costs one server connection; safe to call twice."""
        await execute_autocommit(self.server_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def __aenter__(self) -> str:
        return await self.create()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.drop()


class ScratchDatabases:
    """Scratch databases made on demand, for a test that needs one or more,
    all dropped by :meth:`drop_all`. The arguments, and what is refused,
    are :class:`ScratchDatabase`'s.
    """

    def __init__(
        self,
        server_url: str,
        *,
        prefix: str = "agent_wake_scratch",
        worker: str = "main",
        migrate: _Migrate | None = migrate_to_head,
    ) -> None:
        _database_name(prefix, worker)  # refuse a bad prefix here, not at the first create
        self.server_url = server_url
        self.prefix = prefix
        self.worker = worker
        self.migrate = migrate
        self.created: list[ScratchDatabase] = []

    async def create(self) -> str:
        """A new scratch database, created and migrated (see :meth:`ScratchDatabase.create`); its URL."""
        database = ScratchDatabase(self.server_url, prefix=self.prefix, worker=self.worker, migrate=self.migrate)
        self.created.append(database)
        return await database.create()

    async def drop_all(self) -> None:
        """Drop every database :meth:`create` made, one server connection each."""
        for database in self.created:
            await database.drop()
