"""The Alembic branches, run the way people run them: the `alembic` command
from a checkout, against a fresh database."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import ScratchDatabases

REPO = Path(__file__).resolve().parent.parent
WAKE_TABLES = {"agent_wake_schedules", "wake_fires", "webhook_subscriptions"}
UPSTREAM_TABLES = {"conversations", "agent_skills"}


def alembic(
    *args: str, url: str, cwd: Path = REPO, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_WAKE_DATABASE_URL": url, **(extra_env or {})}
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


HOST_ENV = """
import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine


def run(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    engine = create_async_engine(os.environ["HOST_DATABASE_URL"], poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


asyncio.run(main())
"""

HOST_TABLES_REVISION = '''
"""The host's own conversations and agent_skills, with an extra column each."""
from alembic import op

revision = "host_0001"
down_revision = None
branch_labels = ("host",)
depends_on = None


def upgrade():
    op.execute(
        "CREATE TABLE conversations (agent_id uuid NOT NULL, conversation_id uuid NOT NULL, "
        "user_id uuid NOT NULL, title text, date_created timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (agent_id, conversation_id))"
    )
    op.execute(
        "CREATE TABLE agent_skills (agent_id uuid NOT NULL, skill_id uuid NOT NULL UNIQUE, "
        "user_id uuid NOT NULL, name text NOT NULL, prompt text, "
        "PRIMARY KEY (agent_id, skill_id))"
    )


def downgrade():
    op.execute("DROP TABLE agent_skills")
    op.execute("DROP TABLE conversations")
'''

HOST_UPSTREAM_REVISION = """
revision = "agent_wake_upstream"
down_revision = "host_0001"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
"""


async def test_host_application_plugs_in_only_the_agent_wake_branch(
    scratch_databases: ScratchDatabases, tmp_path: Path
) -> None:
    url = await scratch_databases.create()
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "alembic.ini").write_text(
        textwrap.dedent(
            """\
            [alembic]
            script_location = %(here)s/migrations
            version_locations = %(here)s/migrations/versions agent_wake:migrations/versions
            path_separator = space
            """
        )
    )
    (tmp_path / "migrations" / "env.py").write_text(HOST_ENV)
    (tmp_path / "migrations" / "versions" / "host_0001.py").write_text(HOST_TABLES_REVISION)
    (tmp_path / "migrations" / "versions" / "agent_wake_upstream.py").write_text(HOST_UPSTREAM_REVISION)
    host_env = {"HOST_DATABASE_URL": url}
    alembic("upgrade", "heads", url=url, cwd=tmp_path, extra_env=host_env)
    assert await tables(url) == WAKE_TABLES | UPSTREAM_TABLES
    assert await versions(url) == {"agent_wake_0007"}
    alembic("downgrade", "agent_wake_upstream", url=url, cwd=tmp_path, extra_env=host_env)
    assert await tables(url) == UPSTREAM_TABLES
