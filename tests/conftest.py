"""Test database: a fresh, migrated PostgreSQL database per test session.

The server is ``AGENT_WAKE_TEST_DATABASE_URL`` when it is set, else the
embedded PostgreSQL. Each session creates a uniquely named database on it,
runs ``alembic upgrade head`` into it and drops it at the end.
"""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from agent_wake import SecretBox, alembic_config, install_partition_guard
from agent_wake.database import resolve_database_url, start_embedded_server

TEST_DATABASE_URL_VARIABLE = "AGENT_WAKE_TEST_DATABASE_URL"


def server_url() -> str:
    """The server the tests run against (its maintenance database)."""
    configured = os.environ.get(TEST_DATABASE_URL_VARIABLE)
    return resolve_database_url(configured) if configured else start_embedded_server()


async def _admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


class ScratchDatabases:
    """Creates empty databases on the test server and drops them at the end."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.names: list[str] = []

    async def create(self) -> str:
        name = f"agent_wake_test_{uuid.uuid4().hex[:12]}"
        await _admin(self.server, f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return make_url(self.server).set(database=name).render_as_string(hide_password=False)

    async def drop_all(self) -> None:
        for name in self.names:
            await _admin(self.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def scratch_databases() -> AsyncIterator[ScratchDatabases]:
    databases = ScratchDatabases(server_url())
    yield databases
    await databases.drop_all()


@pytest.fixture(scope="session")
async def database_url(scratch_databases: ScratchDatabases) -> str:
    """A database migrated to head, shared by the session's tests."""
    url = await scratch_databases.create()
    # Alembic's env runs its own event loop, so it cannot run on this one.
    await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
    return url


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    install_partition_guard(engine, mode="raise")
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside an outer transaction that is rolled back after the test."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


@pytest.fixture(scope="session")
def secret_box() -> Iterator[SecretBox]:
    return SecretBox.from_keys(SecretBox.generate_key())
