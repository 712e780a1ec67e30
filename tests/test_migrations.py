"""The Alembic branches, run the way people run them: the `alembic` command
from a checkout, against a fresh database; and our environment on a
connection a caller hands it, as tests and migration-testing tools do."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agent_wake import AgentWakeError, InvalidInputError, alembic_config
from tests.conftest import ScratchDatabases

REPO = Path(__file__).resolve().parent.parent
WAKE_TABLES = {"agent_wake_schedules", "wake_fires", "webhook_subscriptions"}
UPSTREAM_TABLES = {"conversations", "agent_skills"}


def alembic(*args: str, url: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_WAKE_DATABASE_URL": url}
    result = subprocess.run([sys.executable, "-m", "alembic", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"alembic {' '.join(args)} failed:\n{result.stderr}"
    return result


def alembic_refused(*args: str, url: str, cwd: Path = REPO) -> str:
    """Run `alembic`, expect it to fail, and return what it printed (Alembic's
    own refusals go to stdout, tracebacks to stderr)."""
    env = {**os.environ, "AGENT_WAKE_DATABASE_URL": url}
    result = subprocess.run([sys.executable, "-m", "alembic", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode != 0, f"alembic {' '.join(args)} was expected to fail:\n{result.stdout}"
    return result.stdout + result.stderr


async def tables(url: str, schema: str = "public") -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"), {"schema": schema}
            )
            return {row[0] for row in rows} - {"alembic_version"}
    finally:
        await engine.dispose()


async def versions(url: str, schema: str = "public") -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text(f'SELECT version_num FROM "{schema}".alembic_version'))
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


async def test_upgrade_head_creates_every_table(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "head", url=url)
    assert await tables(url) == WAKE_TABLES | UPSTREAM_TABLES
    assert await versions(url) == {"agent_wake_0008"}


async def test_downgrade_base_removes_everything_and_upgrade_works_again(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "head", url=url)
    alembic("downgrade", "base", url=url)
    assert await tables(url) == set()
    alembic("upgrade", "head", url=url)
    assert await tables(url) == WAKE_TABLES | UPSTREAM_TABLES


async def test_downgrade_to_upstream_removes_only_the_wake_tables(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "head", url=url)
    alembic("downgrade", "agent_wake_upstream", url=url)
    assert await tables(url) == UPSTREAM_TABLES
    assert await versions(url) == {"agent_wake_upstream"}


@pytest.mark.parametrize("schema_option", [[], ["-x", "schema=agent_one"]], ids=["public", "schema"])
async def test_alembic_check_after_upgrade_head_finds_no_difference(
    scratch_databases: ScratchDatabases, schema_option: list[str]
) -> None:
    url = await scratch_databases.create()
    alembic(*schema_option, "upgrade", "head", url=url)
    assert "No new upgrade operations detected" in alembic(*schema_option, "check", url=url).stdout


async def test_every_wake_step_downgrades_and_upgrades_again(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "agent_wake_upstream", url=url)
    for step in range(1, 9):
        revision = f"agent_wake_{step:04d}"
        alembic("upgrade", revision, url=url)
        alembic("downgrade", "-1", url=url)
        alembic("upgrade", revision, url=url)
        assert await versions(url) == {revision}
    assert await tables(url) == WAKE_TABLES | UPSTREAM_TABLES


async def test_step_four_admits_dispatching_fires(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "agent_wake_0003", url=url)
    insert = text(
        "INSERT INTO wake_fires (conversation_id, fire_id, status) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), 'dispatching')"
    )
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            with pytest.raises(Exception, match="wake_fires_status_check"):
                await connection.execute(insert)
        alembic("upgrade", "agent_wake_0004", url=url)
        async with engine.begin() as connection:
            await connection.execute(insert)
    finally:
        await engine.dispose()


# Step 8 on a schema the older migration runner built: its ledger, and the
# rows its implementation wrote (each named for what it is).

OLDER_LEDGER = (
    "CREATE TABLE {schema}._schema_migrations (version integer, package varchar(255), description text, "
    "date_applied timestamp not null default now(), primary key (version, package))"
)
OLDER_ROWS: dict[str, tuple[str, dict[str, object]]] = {
    "weekday restricted": ("cron", {"expr": "0 9 * * 1"}),
    "day of month restricted": ("cron", {"expr": "0 0 1 * *", "tz": "UTC"}),
    "spaced as the older implementation kept it": ("cron", {"expr": " 0  9 *\t* 1 "}),
    "month named": ("cron", {"expr": "0 0 * jan/3 *"}),
    "neither day restricted": ("cron", {"expr": "*/5 * * * *"}),
    "already carrying the key": ("cron", {"expr": "0 9 * * 1", "day_of_week_numbering": "cron"}),
    "not cron": ("daily_at", {"hour": 9, "expr": "0 9 * * 1"}),
}
UNCHANGED = {name: config for name, (_, config) in OLDER_ROWS.items()}
APSCHEDULER = {"day_of_week_numbering": "apscheduler"}


async def execute(url: str, *statements: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def write_older_rows(url: str, schema: str = "public") -> None:
    insert = text(
        f"INSERT INTO {schema}.agent_wake_schedules "
        "(conversation_id, schedule_id, user_id, agent_id, schedule_type, schedule_config, name) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), "
        ":schedule_type, CAST(:config AS jsonb), :name)"
    )
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for name, (schedule_type, config) in OLDER_ROWS.items():
                await connection.execute(
                    insert, {"schedule_type": schedule_type, "config": json.dumps(config), "name": name}
                )
    finally:
        await engine.dispose()


async def write_ledger(url: str, package: str, schema: str = "public") -> None:
    await execute(
        url,
        OLDER_LEDGER.format(schema=schema),
        f"INSERT INTO {schema}._schema_migrations (version, package, description) VALUES (4, '{package}', 'step 4')",
    )


async def configs_by_name(url: str, schema: str = "public") -> dict[str, object]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text(f"SELECT name, schedule_config FROM {schema}.agent_wake_schedules"))
            return {name: config for name, config in rows}
    finally:
        await engine.dispose()


async def test_step_eight_marks_the_older_implementations_cron_rows_with_a_restricted_day_field(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "agent_wake_0007", url=url)
    await write_ledger(url, "agent_wake")
    await write_older_rows(url)
    alembic("upgrade", "agent_wake_0008", url=url)
    assert await configs_by_name(url) == {
        **UNCHANGED,
        "weekday restricted": {"expr": "0 9 * * 1", **APSCHEDULER},
        "day of month restricted": {"expr": "0 0 1 * *", "tz": "UTC", **APSCHEDULER},
        "spaced as the older implementation kept it": {"expr": " 0  9 *\t* 1 ", **APSCHEDULER},
        "month named": {"expr": "0 0 * jan/3 *", **APSCHEDULER},
    }


async def test_step_eight_downgrade_removes_only_the_apscheduler_marks(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "agent_wake_0007", url=url)
    await write_ledger(url, "agent_wake")
    await write_older_rows(url)
    alembic("upgrade", "agent_wake_0008", url=url)
    alembic("downgrade", "agent_wake_0007", url=url)
    assert await configs_by_name(url) == UNCHANGED


@pytest.mark.parametrize("ledger_package", [None, "another_package"], ids=["no-ledger", "another-packages-ledger"])
async def test_step_eight_changes_nothing_without_the_older_runners_ledger_of_agent_wake(
    scratch_databases: ScratchDatabases, ledger_package: str | None
) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "agent_wake_0007", url=url)
    if ledger_package is not None:
        await write_ledger(url, ledger_package)
    await write_older_rows(url)
    alembic("upgrade", "agent_wake_0008", url=url)
    assert await configs_by_name(url) == UNCHANGED


async def test_step_eight_changes_nothing_when_the_ledger_it_sees_is_in_another_schema(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    alembic("-x", "schema=agent_one", "upgrade", "agent_wake_0007", url=url)
    await write_ledger(url, "agent_wake", schema="public")
    await write_older_rows(url, schema="agent_one")
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            # agent_one is the current schema; public's ledger is found through the search_path.
            await connection.execute(text("SET search_path TO agent_one, public"))
            await connection.commit()
            await connection.run_sync(lambda sync_connection: upgrade_with(sync_connection, "agent_wake_0008"))
    finally:
        await engine.dispose()
    assert await versions(url, "agent_one") == {"agent_wake_0008"}
    assert await configs_by_name(url, schema="agent_one") == UNCHANGED


def test_offline_upgrade_prints_the_ddl() -> None:
    result = alembic("upgrade", "head", "--sql", url="postgresql://nobody@invalid.invalid/none")
    for table in WAKE_TABLES | UPSTREAM_TABLES:
        assert f"CREATE TABLE {table} (" in result.stdout
    assert "CREATE INDEX idx_wake_schedules_next_fire ON agent_wake_schedules (next_fire_at) " in result.stdout
    assert "UPDATE alembic_version SET version_num='agent_wake_0008'" in result.stdout


async def test_schema_option_migrates_into_its_own_schema(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    alembic("-x", "schema=agent_one", "upgrade", "head", url=url)
    alembic("-x", "schema=agent_two", "upgrade", "head", url=url)
    assert await tables(url, "agent_one") == WAKE_TABLES | UPSTREAM_TABLES
    assert await tables(url, "agent_two") == WAKE_TABLES | UPSTREAM_TABLES
    assert await tables(url, "public") == set()
    assert await versions(url, "agent_one") == {"agent_wake_0008"}
    alembic("-x", "schema=agent_one", "downgrade", "base", url=url)
    assert await tables(url, "agent_one") == set()
    assert await tables(url, "agent_two") == WAKE_TABLES | UPSTREAM_TABLES


def test_schema_option_refuses_a_name_that_is_not_an_identifier() -> None:
    result = alembic_refused(
        "-x", 'schema=x"; DROP TABLE y; --', "upgrade", "head", url="postgresql://nobody@invalid.invalid/none"
    )
    assert "schema: must be a lower-case identifier" in result


# Our environment on a connection the caller hands it in
# config.attributes["connection"].


def upgrade_with(given: object, revision: str = "head", schema: str | None = None) -> None:
    config = alembic_config(schema=schema)
    config.attributes["connection"] = given
    command.upgrade(config, revision)


async def has_version_table(url: str) -> bool:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            found = await connection.execute(text("SELECT to_regclass('public.alembic_version') IS NOT NULL"))
            return bool(found.scalar_one())
    finally:
        await engine.dispose()


async def upgrade_with_each_kind(engine: AsyncEngine, kind: str) -> None:
    """The command called where each kind can be used: a sync Connection or
    Engine of the asyncpg dialect, and an AsyncConnection, inside
    AsyncConnection.run_sync; an AsyncEngine from a thread with no event loop."""
    if kind == "AsyncEngine":
        await asyncio.to_thread(upgrade_with, engine)
        return
    async with engine.connect() as connection:
        given = {"Engine": engine.sync_engine, "AsyncConnection": connection}
        await connection.run_sync(lambda sync_connection: upgrade_with(given.get(kind, sync_connection)))


@pytest.mark.parametrize("kind", ["Connection", "Engine", "AsyncConnection", "AsyncEngine"])
async def test_a_given_connection_of_each_kind_is_migrated(scratch_databases: ScratchDatabases, kind: str) -> None:
    url = await scratch_databases.create()
    engine = create_async_engine(url)
    try:
        await upgrade_with_each_kind(engine, kind)
    finally:
        await engine.dispose()
    assert await tables(url) == WAKE_TABLES | UPSTREAM_TABLES
    assert await versions(url) == {"agent_wake_0008"}


@pytest.fixture
async def connection(scratch_databases: ScratchDatabases) -> AsyncIterator[AsyncConnection]:
    """A caller's connection to a fresh database, its search_path set to public and committed."""
    engine = create_async_engine(await scratch_databases.create())
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SET search_path TO public"))
            await connection.commit()
            yield connection
    finally:
        await engine.dispose()


async def test_a_given_connection_gets_its_search_path_and_default_schema_back_after_a_schema_run(
    connection: AsyncConnection,
) -> None:
    await connection.run_sync(lambda sync_connection: upgrade_with(sync_connection, schema="agent_one"))
    search_path = (await connection.execute(text("SHOW search_path"))).scalar_one()
    default_schema = connection.dialect.default_schema_name
    assert (search_path, default_schema) == ("public", "public")


async def test_a_given_connection_gets_its_search_path_back_after_a_failed_schema_run(
    connection: AsyncConnection,
) -> None:
    with pytest.raises(Exception, match="no_such_revision"):
        await connection.run_sync(
            lambda sync_connection: upgrade_with(sync_connection, "no_such_revision", schema="agent_one")
        )
    search_path = (await connection.execute(text("SHOW search_path"))).scalar_one()
    default_schema = connection.dialect.default_schema_name
    assert (search_path, default_schema) == ("public", "public")


@pytest.mark.parametrize("schema", [None, "agent_one"])
async def test_a_given_connection_outside_a_transaction_is_left_outside_one(
    scratch_databases: ScratchDatabases, schema: str | None
) -> None:
    engine = create_async_engine(await scratch_databases.create())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync_connection: upgrade_with(sync_connection, schema=schema))
            assert not connection.in_transaction()
    finally:
        await engine.dispose()


async def test_inside_a_callers_transaction_the_search_path_is_back_after_the_run_and_after_commit(
    connection: AsyncConnection,
) -> None:
    await connection.begin()
    # Steps 3 to 5 commit before they validate, step 7 builds CONCURRENTLY:
    # no transaction of the caller's can hold them.
    await connection.run_sync(
        lambda sync_connection: upgrade_with(sync_connection, "agent_wake_0002", schema="agent_one")
    )
    during = (await connection.execute(text("SHOW search_path"))).scalar_one()
    await connection.commit()
    after = (await connection.execute(text("SHOW search_path"))).scalar_one()
    assert (during, after) == ("public", "public")


async def test_inside_a_callers_transaction_the_search_path_is_back_after_a_failed_run(
    connection: AsyncConnection,
) -> None:
    await connection.begin()
    with pytest.raises(Exception, match="no_such_revision"):
        await connection.run_sync(
            lambda sync_connection: upgrade_with(sync_connection, "no_such_revision", schema="agent_one")
        )
    # A failure in Alembic, not in the database: the caller's transaction goes on.
    during = (await connection.execute(text("SHOW search_path"))).scalar_one()
    await connection.rollback()
    assert during == "public"


async def test_a_callers_open_transaction_is_not_committed_and_its_rollback_undoes_the_run(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.begin()
            await connection.execute(text("CREATE TABLE callers_table (id integer)"))
            # Steps 3 to 5 commit before they validate, step 7 builds
            # CONCURRENTLY: no transaction of the caller's can hold them.
            await connection.run_sync(
                lambda sync_connection: upgrade_with(sync_connection, "agent_wake_0002", schema="agent_one")
            )
            assert connection.in_transaction()
            await connection.rollback()
        async with engine.connect() as connection:
            schema = await connection.execute(text("SELECT to_regnamespace('agent_one')"))
            assert schema.scalar_one() is None
    finally:
        await engine.dispose()
    assert await tables(url) == set()


async def test_a_revision_that_commits_part_way_is_refused_inside_a_callers_transaction(
    connection: AsyncConnection,
) -> None:
    await connection.begin()
    with pytest.raises(InvalidInputError) as refused:
        await connection.run_sync(lambda sync_connection: upgrade_with(sync_connection, "head"))
    await connection.rollback()
    assert refused.value.field == "connection"
    assert "run the command on a connection with no transaction open" in str(refused.value)


def test_a_connection_attribute_of_another_kind_is_refused() -> None:
    with pytest.raises(InvalidInputError) as refused:
        upgrade_with("postgresql://nobody@invalid.invalid/none")
    assert refused.value.field == "connection"
    assert "must be a Connection, Engine, AsyncConnection or AsyncEngine, got str" in str(refused.value)


async def test_an_async_connection_outside_run_sync_is_refused_before_anything_is_written(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            with pytest.raises(InvalidInputError, match="inside its run_sync") as refused:
                await asyncio.to_thread(upgrade_with, connection)
            await connection.rollback()
    finally:
        await engine.dispose()
    assert refused.value.field == "connection"
    assert not await has_version_table(url)


async def test_an_async_engine_is_refused_while_an_event_loop_runs_in_the_thread(
    scratch_databases: ScratchDatabases,
) -> None:
    url = await scratch_databases.create()
    engine = create_async_engine(url)
    try:
        with pytest.raises(InvalidInputError, match="from another thread") as refused:
            upgrade_with(engine)
    finally:
        await engine.dispose()
    assert refused.value.field == "connection"
    assert not await has_version_table(url)


async def test_a_callers_async_engine_keeps_working_in_its_own_loop_after_migrating_with_it(
    scratch_databases: ScratchDatabases,
) -> None:
    engine = create_async_engine(await scratch_databases.create())
    try:
        async with engine.connect() as connection:  # leaves a connection of this loop in the pool
            await connection.execute(text("SELECT 1"))
        await asyncio.to_thread(upgrade_with, engine)
        async with engine.connect() as connection:
            count = await connection.execute(text("SELECT count(*) FROM agent_wake_schedules"))
            assert count.scalar_one() == 0
    finally:
        await engine.dispose()


def test_the_packaged_environment_never_starts_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AGENT_WAKE_DATABASE_URL", raising=False)
    monkeypatch.delenv("AGENT_WAKE_EMBEDDED", raising=False)
    monkeypatch.setenv("AGENT_WAKE_EMBEDDED_DIR", str(tmp_path / "pgdata"))
    with pytest.raises(AgentWakeError):
        command.upgrade(alembic_config(), "head")
    assert not (tmp_path / "pgdata").exists()
