"""A host application's Alembic environment, written into a folder for tests:
it owns its own `conversations` and `agent_skills` (with extra columns) and
plugs in only agent-wake's `agent_wake` branch, the way the README says."""

from pathlib import Path

ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
version_locations = %(here)s/migrations/versions agent_wake:migrations/versions
path_separator = space
"""

# Reads the URL from sqlalchemy.url, as the pytest plugin sets it, or from
# `-x url=...` on the command line.
ENV = """
import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine


def run(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def main():
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


asyncio.run(main())
"""

TABLES_REVISION = """
from alembic import op

revision = "host_0001"
down_revision = None
branch_labels = ("host",)
depends_on = None


def upgrade():
    op.execute(
        "CREATE TABLE conversations (agent_id uuid NOT NULL, conversation_id uuid NOT NULL, "
        "user_id uuid NOT NULL, title text NOT NULL DEFAULT 'untitled', "
        "date_created timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (agent_id, conversation_id))"
    )
    op.execute(
        "CREATE TABLE agent_skills (agent_id uuid NOT NULL, skill_id uuid NOT NULL UNIQUE, "
        "user_id uuid NOT NULL, name text NOT NULL, enabled boolean NOT NULL DEFAULT true, "
        "date_created timestamptz NOT NULL DEFAULT now(), date_updated timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (agent_id, skill_id))"
    )


def downgrade():
    op.execute("DROP TABLE agent_skills")
    op.execute("DROP TABLE conversations")
"""

# The host's one-line marker: agent-wake's branch starts after this id.
UPSTREAM_REVISION = """
revision = "agent_wake_upstream"
down_revision = "host_0001"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
"""


def write_host_project(folder: Path) -> None:
    versions = folder / "migrations" / "versions"
    versions.mkdir(parents=True)
    (folder / "alembic.ini").write_text(ALEMBIC_INI)
    (folder / "migrations" / "env.py").write_text(ENV)
    (versions / "host_0001.py").write_text(TABLES_REVISION)
    (versions / "agent_wake_upstream.py").write_text(UPSTREAM_REVISION)
