"""The Alembic branches, run the way people run them: the `alembic` command
from a checkout, against a fresh database."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import ScratchDatabases
from tests.host_project import write_host_project

REPO = Path(__file__).resolve().parent.parent
WAKE_TABLES = {"agent_wake_schedules", "wake_fires", "webhook_subscriptions"}
UPSTREAM_TABLES = {"conversations", "agent_skills"}


def alembic(*args: str, url: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_WAKE_DATABASE_URL": url}
    result = subprocess.run([sys.executable, "-m", "alembic", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"alembic {' '.join(args)} failed:\n{result.stderr}"
    return result


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
    assert await versions(url) == {"agent_wake_0007"}


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


async def test_every_wake_step_downgrades_and_upgrades_again(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    alembic("upgrade", "agent_wake_upstream", url=url)
    for step in range(1, 8):
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


def test_offline_upgrade_prints_the_ddl() -> None:
    result = alembic("upgrade", "head", "--sql", url="postgresql://nobody@invalid.invalid/none")
    for table in WAKE_TABLES | UPSTREAM_TABLES:
        assert f"CREATE TABLE {table} (" in result.stdout
    assert "CREATE INDEX idx_wake_schedules_next_fire ON agent_wake_schedules (next_fire_at) " in result.stdout
    assert "UPDATE alembic_version SET version_num='agent_wake_0007'" in result.stdout


async def test_schema_option_migrates_into_its_own_schema(scratch_databases: ScratchDatabases) -> None:
    url = await scratch_databases.create()
    alembic("-x", "schema=agent_one", "upgrade", "head", url=url)
    alembic("-x", "schema=agent_two", "upgrade", "head", url=url)
    assert await tables(url, "agent_one") == WAKE_TABLES | UPSTREAM_TABLES
    assert await tables(url, "agent_two") == WAKE_TABLES | UPSTREAM_TABLES
    assert await tables(url, "public") == set()
    assert await versions(url, "agent_one") == {"agent_wake_0007"}
    alembic("-x", "schema=agent_one", "downgrade", "base", url=url)
    assert await tables(url, "agent_one") == set()
    assert await tables(url, "agent_two") == WAKE_TABLES | UPSTREAM_TABLES


def test_schema_option_refuses_a_name_that_is_not_an_identifier() -> None:
    env = {**os.environ, "AGENT_WAKE_DATABASE_URL": "postgresql://nobody@invalid.invalid/none"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", 'schema=x"; DROP TABLE y; --', "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "schema: must be a lower-case identifier" in result.stderr


async def test_host_application_plugs_in_only_the_agent_wake_branch(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    write_host_project(tmp_path)
    alembic("-x", f"url={url}", "upgrade", "heads", url=url, cwd=tmp_path)
    assert await tables(url) == WAKE_TABLES | UPSTREAM_TABLES
    assert await versions(url) == {"agent_wake_0007"}
    alembic("-x", f"url={url}", "downgrade", "agent_wake_upstream", url=url, cwd=tmp_path)
    assert await tables(url) == UPSTREAM_TABLES
