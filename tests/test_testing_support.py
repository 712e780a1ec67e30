"""The public test support in agent_wake.testing: scratch databases on the
test server (and the cleanup of those a killed process left), the factories'
builders, and the capture of the SQL an engine or session sends."""

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from agent_wake.errors import AgentWakeError, InvalidInputError
from agent_wake.secret_box import SecretBox
from agent_wake.testing import ScratchDatabase, WakeFactory, capture_sql, execute_autocommit
from agent_wake.testing.databases import drop_abandoned_databases
from agent_wake.testing.pytest_plugin import TestServer
from agent_wake.testing.row_security_roles import (
    create_row_security_roles,
    drop_orphaned_test_roles,
    drop_row_security_roles,
)

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
        assert await fetch_column(url, "SELECT version_num FROM alembic_version") == {"agent_wake_0008"}


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


def test_a_layout_that_is_not_known_is_refused(wake_server: TestServer) -> None:
    with pytest.raises(InvalidInputError) as caught:
        ScratchDatabase(wake_server.url, layout="sharded")
    assert (caught.value.field, caught.value.rule) == ("layout", "must be one of reference, distributed")


async def creator_of(server_url: str, name: str) -> dict[str, Any]:
    comments = await fetch_column(
        server_url, f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{name}'"
    )
    (comment,) = comments
    assert isinstance(comment, str)
    creator: dict[str, Any] = json.loads(comment.removeprefix("agent-wake scratch database, created by "))
    return creator


async def set_creator(server_url: str, name: str, creator: dict[str, Any]) -> None:
    comment = "agent-wake scratch database, created by " + json.dumps(creator)
    await execute_autocommit(server_url, f"COMMENT ON DATABASE \"{name}\" IS '{comment}'")


CREATE_AND_EXIT = """
import asyncio
import sys

from agent_wake.testing import ScratchDatabase

database = ScratchDatabase(sys.argv[1], prefix="agent_wake_support", migrate=None)
asyncio.run(database.create())
print(database.name)
"""


def create_in_a_process_that_exits(server_url: str) -> str:
    """A scratch database created by a child process that then exits without dropping it."""
    child = subprocess.run(
        [sys.executable, "-c", CREATE_AND_EXIT, server_url], capture_output=True, text=True, check=True
    )
    return child.stdout.strip()


async def test_a_scratch_database_names_its_creator_in_a_comment(wake_server: TestServer) -> None:
    async with ScratchDatabase(wake_server.url, prefix="agent_wake_support", migrate=None) as url:
        creator = await creator_of(wake_server.url, str(make_url(url).database))
    assert creator["pid"] == os.getpid()
    assert creator["machine"]["host"] == socket.gethostname()


async def test_a_scratch_database_whose_creator_has_exited_is_dropped_as_abandoned(wake_server: TestServer) -> None:
    name = create_in_a_process_that_exits(wake_server.url)
    assert name in await server_databases(wake_server.url)
    assert name in await drop_abandoned_databases(wake_server.url)
    assert name not in await server_databases(wake_server.url)


async def test_a_scratch_database_whose_creator_runs_is_kept(wake_server: TestServer) -> None:
    async with ScratchDatabase(wake_server.url, prefix="agent_wake_support", migrate=None) as url:
        name = make_url(url).database
        assert name not in await drop_abandoned_databases(wake_server.url)
        assert name in await server_databases(wake_server.url)


async def test_a_scratch_database_made_on_another_machine_is_kept(wake_server: TestServer) -> None:
    name = create_in_a_process_that_exits(wake_server.url)
    try:
        creator = await creator_of(wake_server.url, name)
        await set_creator(wake_server.url, name, {**creator, "machine": {**creator["machine"], "host": "elsewhere"}})
        assert name not in await drop_abandoned_databases(wake_server.url)
        assert name in await server_databases(wake_server.url)
    finally:
        await execute_autocommit(wake_server.url, f'DROP DATABASE IF EXISTS "{name}"')


@pytest.mark.parametrize("boot", ["another boot id", "no boot id"])
async def test_a_scratch_database_made_on_a_machine_of_the_same_name_and_namespace_is_kept_unless_the_boot_matches(
    wake_server: TestServer, boot: str
) -> None:
    # Cloned CI machines share host names, and outside containers every Linux
    # has the same PID namespace id: only the boot id tells them apart, and a
    # creator that wrote none cannot be told from another machine.
    name = create_in_a_process_that_exits(wake_server.url)
    try:
        creator = await creator_of(wake_server.url, name)
        machine = {key: value for key, value in creator["machine"].items() if key != "boot_id"}
        if boot == "another boot id":
            machine["boot_id"] = "00000000-0000-0000-0000-000000000000"
        await set_creator(wake_server.url, name, {**creator, "machine": machine})
        assert name not in await drop_abandoned_databases(wake_server.url)
        assert name in await server_databases(wake_server.url)
    finally:
        await execute_autocommit(wake_server.url, f'DROP DATABASE IF EXISTS "{name}"')


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times are read from /proc")
async def test_a_scratch_database_whose_creators_process_id_now_names_a_later_process_is_dropped(
    wake_server: TestServer,
) -> None:
    database = ScratchDatabase(wake_server.url, prefix="agent_wake_support", migrate=None)
    await database.create()
    try:
        creator = await creator_of(wake_server.url, database.name)
        assert creator["started"] is not None
        await set_creator(wake_server.url, database.name, {**creator, "started": "0"})
        assert database.name in await drop_abandoned_databases(wake_server.url)
    finally:
        await database.drop()


async def test_an_abandoned_scratch_database_renamed_to_keep_it_is_kept(wake_server: TestServer) -> None:
    name = create_in_a_process_that_exits(wake_server.url)
    kept = f"kept_for_debugging_{uuid.uuid4().hex[:8]}"
    await execute_autocommit(wake_server.url, f'ALTER DATABASE "{name}" RENAME TO "{kept}"')
    try:
        assert kept not in await drop_abandoned_databases(wake_server.url)
        assert kept in await server_databases(wake_server.url)
    finally:
        await execute_autocommit(wake_server.url, f'DROP DATABASE IF EXISTS "{kept}"')


async def test_a_database_without_the_creator_comment_is_kept(wake_server: TestServer) -> None:
    name = f"agent_wake_support_main_{uuid.uuid4().hex[:10]}"
    await execute_autocommit(wake_server.url, f'CREATE DATABASE "{name}"')
    try:
        assert name not in await drop_abandoned_databases(wake_server.url)
        assert name in await server_databases(wake_server.url)
    finally:
        await execute_autocommit(wake_server.url, f'DROP DATABASE IF EXISTS "{name}"')


async def test_a_factory_writes_conversations_and_skills_with_the_builders_it_is_given(
    wake_session: AsyncSession,
) -> None:
    built: list[tuple[str, dict[str, Any]]] = []

    async def build_conversation(session: AsyncSession, /, **overrides: Any) -> str:
        assert session is wake_session
        built.append(("conversation", overrides))
        return "a host conversation"

    async def build_skill(session: AsyncSession, /, **overrides: Any) -> str:
        built.append(("skill", overrides))
        return "a host skill"

    factory = WakeFactory(
        wake_session,
        SecretBox.from_keys(SecretBox.generate_key()),
        conversation_builder=build_conversation,
        skill_builder=build_skill,
    )
    assert await factory.conversation(title="t") == "a host conversation"
    assert await factory.skill(slug="s") == "a host skill"
    assert built == [("conversation", {"title": "t"}), ("skill", {"slug": "s"})]


async def test_a_stand_in_row_the_database_refuses_names_the_builder_fixture_to_override(
    wake_factory: WakeFactory,
) -> None:
    with pytest.raises(
        AgentWakeError, match=r"return a builder of its rows from a wake_skill_builder fixture"
    ) as caught:
        await wake_factory.skill(name=None)
    assert 'null value in column "name"' in str(caught.value)


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


async def test_test_roles_are_dropped_once_their_database_is_gone_and_kept_while_it_exists(
    wake_server: TestServer,
) -> None:
    async with ScratchDatabase(wake_server.url, prefix="agent_wake_support") as url:
        roles = await create_row_security_roles(url)
        try:
            assert roles.application_role not in await drop_orphaned_test_roles(wake_server.url)
            assert roles.application_role in await fetch_column(wake_server.url, "SELECT rolname FROM pg_roles")
        except BaseException:
            await drop_row_security_roles(url, roles)
            raise
    # The database went as a killed run's would (its roles' grants with it); the roles stayed.
    # (Another test session starting on this server may drop them first: it runs the same cleanup.)
    await drop_orphaned_test_roles(wake_server.url)
    remaining = await fetch_column(wake_server.url, "SELECT rolname FROM pg_roles")
    assert roles.application_role not in remaining
    assert roles.maintenance_role not in remaining
