"""The public test support in agent_wake.testing: scratch databases on the
test server, and the capture of the SQL an engine or session sends."""

import re

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from agent_wake.errors import InvalidInputError
from agent_wake.testing import ScratchDatabase, capture_sql
from agent_wake.testing.pytest_plugin import TestServer

WAKE_TABLES = {"agent_wake_schedules", "wake_fires", "webhook_subscriptions"}


async def fetch_column(url: str, query: str) -> set[object]:
    """One query on a connection of its own, so nothing is seen through the code under test."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return set((await connection.execute(text(query))).scalars())
    finally:
        await engine.dispose()


async def server_databases(server_url: str) -> set[object]:
    return await fetch_column(server_url, "SELECT datname FROM pg_database")


async def public_tables(url: str) -> set[object]:
    return await fetch_column(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")


async def open_the_savepoint(session: AsyncSession) -> None:
    """wake_session sends SAVEPOINT before its first statement; keep it out of the capture."""
    await session.execute(text("SELECT 0"))


def test_a_scratch_database_name_is_prefix_worker_and_random_hex(wake_server: TestServer) -> None:
    database = ScratchDatabase(wake_server.url, prefix="agent_wake_support", worker="gw3")
    assert re.fullmatch(r"agent_wake_support_gw3_[0-9a-f]{10}", database.name)
    assert make_url(database.url).database == database.name


async def test_a_scratch_database_is_migrated_to_head_with_the_wake_tables(wake_server: TestServer) -> None:
    async with ScratchDatabase(wake_server.url, prefix="agent_wake_support") as url:
        assert await public_tables(url) >= WAKE_TABLES
        assert await fetch_column(url, "SELECT version_num FROM alembic_version") == {"agent_wake_0007"}


async def test_a_scratch_database_is_gone_from_the_server_after_the_block(wake_server: TestServer) -> None:
    database = ScratchDatabase(wake_server.url, prefix="agent_wake_support", migrate=None)
    async with database:
        assert database.name in await server_databases(wake_server.url)
    assert database.name not in await server_databases(wake_server.url)


async def test_a_scratch_database_without_migrate_is_left_empty(wake_server: TestServer) -> None:
    async with ScratchDatabase(wake_server.url, prefix="agent_wake_support", migrate=None) as url:
        assert await public_tables(url) == set()


async def test_a_scratch_database_whose_migration_fails_is_dropped(wake_server: TestServer) -> None:
    def failing_migration(url: str) -> None:
        raise RuntimeError("migration failed")

    database = ScratchDatabase(wake_server.url, prefix="agent_wake_support", migrate=failing_migration)
    with pytest.raises(RuntimeError, match="migration failed"):
        await database.create()
    assert database.name not in await server_databases(wake_server.url)


@pytest.mark.parametrize("prefix", ["Agent", "1agent", "agent\n", 'x"; DROP DATABASE postgres; --', "agent-wake", ""])
def test_a_prefix_that_is_not_a_plain_identifier_is_refused(wake_server: TestServer, prefix: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        ScratchDatabase(wake_server.url, prefix=prefix)
    assert (caught.value.field, caught.value.rule) == (
        "prefix",
        "must be a lower-case identifier: a-z, 0-9 and _, not starting with a digit",
    )


def test_a_prefix_too_long_for_a_postgresql_name_is_refused(wake_server: TestServer) -> None:
    with pytest.raises(InvalidInputError) as caught:
        ScratchDatabase(wake_server.url, prefix="a" * 50)
    assert caught.value.field == "prefix"
    assert caught.value.rule.endswith("over 63 characters")


async def test_capture_sql_records_what_an_async_engine_sends(wake_engine: AsyncEngine) -> None:
    with capture_sql(wake_engine) as captured:
        async with wake_engine.connect() as connection:
            await connection.execute(text("SELECT CAST(:number AS integer)"), {"number": 7})
    assert [(statement.sql, statement.parameters) for statement in captured] == [("SELECT CAST($1 AS integer)", (7,))]


async def test_capture_sql_records_what_an_async_session_sends(wake_session: AsyncSession) -> None:
    await open_the_savepoint(wake_session)
    with capture_sql(wake_session) as captured:
        await wake_session.execute(text("SELECT 'from the session'"))
    assert [statement.sql for statement in captured] == ["SELECT 'from the session'"]


async def test_capture_sql_stops_recording_after_the_block(wake_session: AsyncSession) -> None:
    await open_the_savepoint(wake_session)
    with capture_sql(wake_session) as captured:
        await wake_session.execute(text("SELECT 1"))
    await wake_session.execute(text("SELECT 2"))
    assert [statement.sql for statement in captured] == ["SELECT 1"]


def test_capture_sql_refuses_what_sends_no_sql() -> None:
    with pytest.raises(InvalidInputError) as caught, capture_sql("postgresql://"):  # type: ignore[arg-type]
        pass
    assert caught.value.field == "target"
